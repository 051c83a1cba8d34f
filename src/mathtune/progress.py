"""One progress display per long stage: a tqdm bar with an ETA on a terminal; redirected to a file, one plain line per
update (at most every EVERY seconds, and at the end), never a carriage-return flood or nested bars' escape codes."""

from __future__ import annotations

import sys
import time

EVERY = 30.0  # seconds between lines when the output is not a terminal


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Lines:
    """tqdm's update/set_postfix_str/close, printed as lines: `train: 120/841 steps (14%), 5:12 elapsed, ETA 0:31:02`."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, stream=None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.start = self.last = time.time()
        self.first = initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= EVERY or self.n >= self.total:
            self.last = now
            self._print(now)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _print(self, now: float) -> None:
        done = self.n - self.first
        elapsed = now - self.start
        eta = elapsed / done * (self.total - self.n) if done > 0 else None
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", ETA {_clock(eta)}" if eta is not None and self.n < self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {_clock(elapsed)} elapsed{tail}{extra}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.n < self.total and self.n > self.first:
            self._print(time.time())


def progress(total: int, desc: str, unit: str, initial: int = 0):
    """A tqdm bar on a terminal, else Lines."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return Lines(total, desc, unit, initial)


def quiet_libraries() -> None:
    """What the libraries print that says nothing to a mathtune user: hub retry chatter (an unknown model name is one
    error line, not twenty warnings), datasets' per-map progress bars (each stage shows one progress display of its
    own, mathtune/progress.py), and a deprecation inside PEFT's own calls (is_gradient_checkpointing)."""
    import os
    import warnings

    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)

"""What a model's answers look like, apart from whether they are right: length, format, loops, truncation.

What supervised fine-tuning changes first in a small model is its format, and this table shows it.

Rules (docs/analysis-schema.md):
  format compliance   the completion's last non-empty line is `#### N` (N a number): GSM8K's answer format.
  repetition loop     a runaway repetition: with every run of digits read as one symbol (the numbers in a loop
                      often grow: "$2000/hour * 45 hours = $20000/hour * 45 hours = ..."), the completion ends in a
                      block of 1 to LOOP_MAX_PERIOD characters repeated back to back at least LOOP_REPEATS times,
                      LOOP_MIN_CHARS characters or more in all (the last block may be cut by the token limit).
                      A verbose answer that restates "the total cost is" in several sentences is not one: its end
                      is not periodic. Tested on real SmolLM2 completions (tests/test_behaviour.py).
  no number           no number could be extracted (the grader's `extracted` is null).
"""

from __future__ import annotations

import re

import numpy as np

LOOP_REPEATS = 3
LOOP_MAX_PERIOD = 200
LOOP_MIN_CHARS = 60
LOOP_WINDOW = 4000  # characters at the end of a completion looked at (a loop is at the end)
_DIGITS = re.compile(r"\d+")
_FINAL_LINE = re.compile(r"^\s*####\s*\$?\s*-?[\d,]*\.?\d+\s*$")


def periodic_tail(completion: str) -> tuple[int, int]:
    """(length, period) of the longest end of the completion that repeats a block of `period` characters back to back
    at least LOOP_REPEATS times, digits runs read as one symbol; (0, 0) when there is none."""
    text = _DIGITS.sub("0", completion.rstrip())[-LOOP_WINDOW:]
    a = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    best = (0, 0)
    for p in range(1, min(LOOP_MAX_PERIOD, len(a) // LOOP_REPEATS) + 1):
        mismatch = np.flatnonzero(a[p:] != a[:-p])
        tail = p + (len(a) - p - (mismatch[-1] + 1) if len(mismatch) else len(a) - p)
        if tail >= LOOP_REPEATS * p and tail > best[0]:
            best = (int(tail), p)
    return best


def repetition_loop(completion: str) -> bool:
    return periodic_tail(completion)[0] >= LOOP_MIN_CHARS


def ends_with_final_answer(completion: str) -> bool:
    lines = [line for line in completion.splitlines() if line.strip()]
    return bool(lines) and bool(_FINAL_LINE.match(lines[-1]))


def behaviour(rows: list[dict]) -> dict:
    """One model's row of the behaviour table (shares of its answers; mean generated tokens where recorded)."""
    n = len(rows)
    tokens = [r["generated_tokens"] for r in rows if isinstance(r.get("generated_tokens"), int)]
    share = lambda pred: sum(1 for r in rows if pred(r)) / n if n else None  # noqa: E731
    return {
        "n": n,
        "mean_generated_tokens": sum(tokens) / len(tokens) if tokens else None,
        "format_compliance": share(lambda r: ends_with_final_answer(r["completion"])),
        "truncated": share(lambda r: bool(r.get("truncated"))),
        "repetition_loop": share(lambda r: repetition_loop(r["completion"])),
        "no_number": share(lambda r: r.get("extracted") is None),
    }


def behaviour_table(preds: dict[str, list[dict]]) -> dict:
    """{models: {name: behaviour}, change: last minus first, per field} on the rows given (paired by the caller)."""
    out = {"models": {name: behaviour(rows) for name, rows in preds.items()}}
    names = list(preds)
    if len(names) >= 2:
        a, b = out["models"][names[0]], out["models"][names[-1]]
        out["change"] = {k: (b[k] - a[k] if a[k] is not None and b[k] is not None else None) for k in a if k != "n"}
    return out

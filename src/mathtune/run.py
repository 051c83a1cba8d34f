"""The run directory and the stages that fill it: data -> train -> eval -> report, declared in one table.

Every stage reads only files the previous ones wrote, so each can be rerun alone; `run` skips the stages already
done, and redoing a stage removes what every later stage wrote, so nothing downstream outlives its inputs.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mathtune import allocator, memory
from mathtune.config import Config, config_hash, config_to_yaml, diff_keys, load_config
from mathtune.distributed import barrier, is_main, rank_and_world
from mathtune.errors import MathtuneError
from mathtune.interrupts import raise_if_interrupted
from mathtune.io import atomic_write_json, atomic_write_text, read_json
from mathtune.isolate import in_own_process

PACKAGES = ("mathtune", "torch", "transformers", "peft", "trl", "accelerate", "datasets")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    env = {
        "python": platform.python_version(),
        "packages": versions,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": _cores(),
        "gpu": None,
        "allocator": allocator.current(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return env


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cores() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def open_run(cfg: Config, run_dir: Path, resume: bool, force: bool) -> None:
    """Create or reopen a run directory; refuse to mix two configs or to overwrite a run by accident.

    Under `accelerate launch` every process checks (so all stop on the same bad input) and the main one writes.
    """
    check_run_dir(cfg, run_dir, resume, force)
    barrier()  # nobody may see the config.yaml the main process is about to write while still checking
    if is_main():
        _write_run_files(cfg, run_dir, force)
    barrier()


def check_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise MathtuneError(f"{run_dir}: exists and is not a directory")
    saved = run_dir / "config.yaml"
    if saved.is_file() and not force:
        if not resume:
            raise MathtuneError(f"{run_dir}: already holds a run; pass --resume to continue it or --force to redo it")
        changed = diff_keys(load_config(saved), cfg)
        if changed:
            raise MathtuneError(f"{run_dir}: was started with another config (differs in {', '.join(changed)})")


def _write_run_files(cfg: Config, run_dir: Path, force: bool) -> None:
    saved = run_dir / "config.yaml"
    if force:
        clear(run_dir, STAGES)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config_to_yaml(cfg))
    info = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() and not force else {}
    info.setdefault("started", _now())
    env = environment()
    device = cfg.runtime.device if cfg.runtime.device != "auto" else ("cuda" if env["gpu"] else "cpu")
    # What the run uses, for its cost: its device and processes (one GPU each), not what the host has.
    info.update(
        config_hash=config_hash(cfg),
        git_commit=git_commit(),
        device=device,
        processes=rank_and_world()[1],
        environment=env,
    )
    info.setdefault("stages", {})
    atomic_write_json(run_dir / "run.json", info)


def record_estimate(cfg: Config, run_dir: Path) -> None:
    """The cost predicted from the data before training (`mathtune estimate`), kept in run.json so that the
    report can set it beside the actual figures."""
    from mathtune.estimate import estimate_run
    from mathtune.io import read_jsonl

    info = read_json(run_dir / "run.json")
    rows = {name: read_jsonl(run_dir / "data" / f"{name}.jsonl") for name in ("train", "val", "test")}
    gpu = info.get("environment", {}).get("gpu")
    try:
        e = estimate_run(cfg, rows, gpu if gpu and info.get("device") == "cuda" else "cpu")
    except (ValueError, OSError, MathtuneError) as err:  # a GPU without figures, a model whose size is unknown
        e = {"error": str(err)}
    info["estimate"] = {k: e[k] for k in ("train_seconds", "eval_seconds", "dollars", "basis", "error") if k in e}
    atomic_write_json(run_dir / "run.json", info)


# The stages' functions import their modules when they run: `mathtune report` never imports torch.
def _data(cfg: Config, run_dir: Path) -> None:
    from mathtune.data.stage import run_data

    run_data(cfg, run_dir)


def _train(cfg: Config, run_dir: Path) -> None:
    from mathtune.train.stage import run_train

    run_train(cfg, run_dir)


def _eval(cfg: Config, run_dir: Path) -> None:
    from mathtune.evaluate.stage import run_eval

    run_eval(cfg, run_dir)


def _report(cfg: Config, run_dir: Path) -> None:
    from mathtune.report.build import build_report

    build_report(run_dir)


def _files(*names: str):
    return lambda cfg, run_dir: all((run_dir / n).is_file() for n in names)


def _eval_done(cfg: Config, run_dir: Path) -> bool:
    from mathtune.evaluate.arms import arms

    return _files("eval.json", *(f"predictions/{a}.jsonl" for a in arms(cfg)))(cfg, run_dir)


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # the run-directory files and folders it reads (all written by earlier stages)
    writes: tuple[str, ...]  # what it owns: removed before it is redone, and whenever an earlier stage is redone
    done: object  # (cfg, run_dir) -> bool: its outputs are complete
    run: object  # (cfg, run_dir) -> None
    every_process: bool  # under accelerate launch: every process runs it (its share), or the main one alone


STAGES = (
    Stage(
        "data",
        (),
        ("data",),
        _files("data/train.jsonl", "data/val.jsonl", "data/test.jsonl", "data/info.json"),
        _data,
        False,
    ),
    Stage(
        "train",
        ("data/train.jsonl", "data/val.jsonl"),
        ("adapter", "checkpoints", "metrics.jsonl", "train.json", "tensorboard", "mlruns"),
        _files("adapter/adapter_model.safetensors", "train.json"),
        _train,
        True,
    ),
    Stage(
        "eval",
        ("data/train.jsonl", "data/test.jsonl", "train.json", "adapter"),
        ("predictions", "eval.json"),
        _eval_done,
        _eval,
        True,
    ),
    Stage(
        "report",
        ("predictions", "eval.json", "metrics.jsonl", "train.json", "data/info.json", "run.json", "config.yaml"),
        ("analysis.json", "report.md", "report.html", "plots"),
        _files("analysis.json", "report.md", "report.html"),
        _report,
        False,
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]


def later(name: str) -> tuple[Stage, ...]:
    return STAGES[STAGE_NAMES.index(name) + 1 :]


def clear(run_dir: Path, stages) -> None:
    """Remove what these stages wrote, and their times in run.json (a redone stage's time replaces the old one)."""
    for s in stages:
        for name in s.writes:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    info_path = run_dir / "run.json"
    if info_path.is_file():
        info = read_json(info_path)
        if any(s.name in info.get("stages", {}) for s in stages):
            for s in stages:
                info["stages"].pop(s.name, None)
            info["wall_seconds"] = round(sum(v["seconds"] for v in info["stages"].values()), 2)
            atomic_write_json(info_path, info)


class _StageClock:
    """Keeps run.json's time of the running stage up to date (every 30 s), so a crash loses at most that much:
    a resumed stage's time is its time before the crash plus its time since."""

    def __init__(self, run_dir: Path, name: str, every: float = 30.0):
        self.run_dir, self.name, self.every = run_dir, name, every
        info = read_json(run_dir / "run.json")
        previous = info["stages"].get(name, {})
        self.before = previous.get("seconds", 0.0)
        self.peak_before = previous.get("peak_rss_gb") or 0.0  # a resumed stage's peak is the larger of both parts
        self.measures_peak = False
        self.start = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def _write(self, finished: bool) -> None:
        info = read_json(self.run_dir / "run.json")
        entry = {"seconds": round(self.before + time.time() - self.start, 2), "finished": _now() if finished else None}
        peak = memory.peak_gb() if self.measures_peak else None
        if peak is not None:  # resident memory's high-water mark during this stage (this process; the main one)
            entry["peak_rss_gb"] = max(peak, self.peak_before)
        info["stages"][self.name] = entry
        info["wall_seconds"] = round(sum(v["seconds"] for v in info["stages"].values()), 2)
        if finished:
            info["finished"] = _now()
        atomic_write_json(self.run_dir / "run.json", info)

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write(finished=False)

    def __enter__(self):
        allocator.release_free_memory()  # the stage before may have left freed pages resident: they are not this stage's
        self.measures_peak = memory.reset_peak()
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        self._thread.join()
        self._write(finished=exc_type is None)


def run_stage(cfg: Config, run_dir: Path, s: Stage) -> None:
    """Run one stage (continuing its partial outputs, if any) and keep its wall time in run.json.

    Under `accelerate launch`, train and eval run in every process (the Trainer shards the batches, evaluation the
    questions); data and report in the main process alone; all wait for each other at the end of the stage.
    """
    if is_main():
        with _StageClock(run_dir, s.name):
            s.run(cfg, run_dir)
        if s.name == "data":  # after the clock has stopped writing run.json
            record_estimate(cfg, run_dir)
    elif s.every_process:
        s.run(cfg, run_dir)
    barrier()


def run_named_stage(cfg: Config, run_dir: Path, name: str) -> None:
    from mathtune.progress import quiet_libraries

    quiet_libraries()  # a spawned process starts with the libraries' own warnings and progress bars
    run_stage(cfg, run_dir, stage(name))  # by name: a Stage holds closures, which cannot go to another process


def run_all(cfg: Config, run_dir: Path) -> None:
    """Every stage in order: a finished one is skipped; from the first unfinished one on, each runs, and what later
    stages wrote before is removed first (it was made from inputs that are being remade)."""
    from mathtune.models import check_model_name

    if not all(s.done(cfg, run_dir) for s in STAGES if s.name in ("train", "eval")):
        check_model_name(cfg.model.name)  # before the data stage: a model that cannot load fails in a second
    redo = False
    for s in STAGES:
        raise_if_interrupted()  # a Ctrl-C swallowed during the stage before (interrupts.py) stops the run here
        if not redo and s.done(cfg, run_dir):
            if is_main():
                print(f"mathtune: {s.name}: already done, skipped")
            continue
        if not redo and is_main():
            clear(run_dir, later(s.name))
        barrier()
        redo = True
        if is_main():
            print(f"mathtune: {s.name} ...")
        if s.name == "train" and rank_and_world()[1] == 1 and cfg.runtime.train_in_own_process:
            in_own_process(run_named_stage, cfg, run_dir, s.name)  # isolate.py: what training leaves is not eval's
        else:
            run_stage(cfg, run_dir, s)
    if is_main():
        print(f"mathtune: report written to {run_dir / 'report.html'} and report.md")


def saved_config(run_dir: Path) -> Config:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise MathtuneError(f"{run_dir}: not a run directory (no config.yaml); start one with `mathtune run`")
    return load_config(saved)


# Which stage first reads each config key (the longest matching prefix wins): changing a key redoes that stage
# and every later one. runtime.* says how to run, not what: it changes no result and redoes nothing.
KEY_STAGE = {
    "data": "data",
    "eval.limit": "data",
    "model": "train",
    "lora": "train",
    "train": "train",
    "eval": "eval",
    "cost": "report",
    "runtime": None,
}


def key_stage(key: str) -> str | None:
    matches = [p for p in KEY_STAGE if key == p or key.startswith(p + ".")]
    return KEY_STAGE[max(matches, key=len)] if matches else "data"  # an unknown section: assume the earliest


def apply_to_run(run_dir: Path, name: str, overrides: list[str]) -> Config:
    """The run's config with `overrides` applied, for redoing stage `name`: a key that an earlier stage reads is
    refused (redoing `name` would leave that stage's outputs made with the old value); the others are written
    into the run's config.yaml, and redoing `name` redoes everything after it."""
    old = saved_config(run_dir)
    if not overrides:
        return old
    new = load_config(run_dir / "config.yaml", overrides)
    changed = diff_keys(old, new)
    for key in changed:
        first = key_stage(key)
        if first is not None and STAGE_NAMES.index(first) < STAGE_NAMES.index(name):
            raise MathtuneError(
                f"{key}: read by the {first} stage, which `mathtune {name}` does not redo; change it "
                f"with `mathtune run --config ... --force`, or start a new run"
            )
    if changed and is_main():
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(new))
        info = read_json(run_dir / "run.json")
        info["config_hash"] = config_hash(new)
        atomic_write_json(run_dir / "run.json", info)
    return new


def redo(run_dir: Path, name: str, overrides: list[str] = (), resume: bool = False) -> None:
    """`mathtune train|eval|report RUN_DIR`: redo one stage from the files of the earlier ones (continue its partial
    outputs with resume), after removing what the later stages wrote."""
    cfg = apply_to_run(run_dir, name, list(overrides))
    for before in STAGES[: STAGE_NAMES.index(name)]:
        if before.name == "data" and not before.done(cfg, run_dir):
            run_stage(cfg, run_dir, before)  # the data are prepared from the config alone
        elif not before.done(cfg, run_dir):
            raise MathtuneError(
                f"{run_dir}: the {before.name} stage has not finished; run `mathtune {before.name} {run_dir}`"
            )
    if is_main():
        clear(run_dir, later(name) if resume else (stage(name), *later(name)))
    barrier()
    run_stage(cfg, run_dir, stage(name))

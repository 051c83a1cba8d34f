"""The run directory and the stages that fill it: data -> train -> eval -> report.

Every stage reads files the previous one wrote, so each can be rerun alone; `run` skips stages already done.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mathtune import allocator
from mathtune.config import Config, config_hash, config_to_yaml, diff_keys, load_config
from mathtune.distributed import barrier, is_main
from mathtune.errors import MathtuneError
from mathtune.io import atomic_write_json, atomic_write_text, read_json

STAGES = ("data", "train", "eval", "report")
# What each stage owns in the run directory: removed before the stage is redone.
OUTPUTS = {
    "data": ["data"],
    "train": ["adapter", "checkpoints", "metrics.jsonl", "train.json"],
    "eval": ["predictions", "eval.json"],
    "report": ["analysis.json", "report.md", "report.html", "plots"],
}
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
    env = {"python": platform.python_version(), "packages": versions, "machine": platform.machine(),
           "cpu": cpu_model(), "cores": _cores(), "gpu": None, "allocator": allocator.current()}
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
        for stage in STAGES:
            clear_stage(run_dir, stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config_to_yaml(cfg))
    info = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() and not force else {}
    info.setdefault("started", _now())
    env = environment()
    device = cfg.runtime.device if cfg.runtime.device != "auto" else ("cuda" if env["gpu"] else "cpu")
    info.update(config_hash=config_hash(cfg), git_commit=git_commit(), device=device, environment=env)
    info.setdefault("stages", {})
    atomic_write_json(run_dir / "run.json", info)


def clear_stage(run_dir: Path, stage: str) -> None:
    for name in OUTPUTS[stage]:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def stage_done(cfg: Config, run_dir: Path, stage: str) -> bool:
    """Whether a stage's files are all there (the stages import torch lazily, so this stays fast)."""
    if stage == "data":
        from mathtune.data.stage import is_done as data_done

        return data_done(run_dir)
    if stage == "train":
        from mathtune.train.stage import is_done as train_done

        return train_done(run_dir)
    if stage == "eval":
        from mathtune.evaluate.stage import is_done as eval_done

        return eval_done(run_dir, cfg)
    return (run_dir / "report.html").is_file()


def run_stage(cfg: Config, run_dir: Path, stage: str) -> None:
    """Run one stage and record its wall time in run.json.

    Under `accelerate launch`, every process trains and evaluates (its share); the main process alone prepares
    the data, writes the report and run.json; all wait for each other at the end of the stage.
    """
    start = time.time()
    if stage == "data" and is_main():
        from mathtune.data.stage import run_data

        run_data(cfg, run_dir)
    elif stage == "train":
        from mathtune.train.stage import run_train

        run_train(cfg, run_dir)
    elif stage == "eval":
        from mathtune.evaluate.stage import run_eval

        run_eval(cfg, run_dir)
    elif stage == "report" and is_main():
        from mathtune.report.build import build_report

        build_report(run_dir)
    barrier()
    if is_main():
        _record_stage(run_dir, stage, time.time() - start)


def _record_stage(run_dir: Path, stage: str, seconds: float) -> None:
    info = read_json(run_dir / "run.json")
    previous = info["stages"].get(stage, {}).get("seconds", 0.0) if stage in ("train", "eval") else 0.0
    # A resumed stage adds its time to the time spent before the crash.
    info["stages"][stage] = {"seconds": round(previous + seconds, 2), "finished": _now()}
    info["finished"] = _now()
    info["wall_seconds"] = round(sum(s["seconds"] for s in info["stages"].values()), 2)
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


def require(run_dir: Path, stage: str) -> Config:
    """For a stage run alone: the run's saved config, and the stages before it done."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise MathtuneError(f"{run_dir}: not a run directory (no config.yaml); start one with `mathtune run`")
    cfg = load_config(saved)
    for before in STAGES[: STAGES.index(stage)]:
        if before != "data" and not stage_done(cfg, run_dir, before):
            raise MathtuneError(f"{run_dir}: the {before} stage has not finished; run `mathtune {before} {run_dir}`")
    return cfg


def run_all(cfg: Config, run_dir: Path) -> None:
    redo = False  # once a stage runs, the stages after it are stale and run too
    for stage in STAGES:
        if not redo and stage_done(cfg, run_dir, stage):
            if is_main():
                print(f"mathtune: {stage}: already done, skipped")
            continue
        redo = True
        if is_main():
            print(f"mathtune: {stage} ...")
        run_stage(cfg, run_dir, stage)
        if stage == "data" and is_main():
            record_estimate(cfg, run_dir)
    if is_main():
        print(f"mathtune: report written to {run_dir / 'report.html'} and report.md")

"""SIGKILL a real run (the tiny config, a subprocess) during training and again during evaluation, resume it,
and compare the finished run directory with an uninterrupted run of the same config."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mathtune.io import read_jsonl

from conftest import ROOT, mathtune_cli

# 32 rows in batches of 4: 8 steps, a checkpoint every 2; 8 test questions answered 2 at a time.
OVERRIDES = [
    "data.max_train_rows=32",
    "train.eval_steps=2",
    "eval.limit=8",
    "eval.batch_size=2",
    "eval.max_new_tokens=16",
    "runtime.threads=1",
    "runtime.train_in_own_process=true",  # as `mathtune run` trains by default: the kill reaches the trainer too
]


def start(out: Path, gsm8k: Path, resume: bool = False, log: Path | None = None) -> subprocess.Popen:
    """The run in a subprocess; with `log`, its output goes to that file (a run nobody reads while it goes on would
    otherwise fill its pipe and stall)."""
    args = ["run", "--out", str(out)] + (["--resume"] if resume else ["--config", str(ROOT / "configs" / "tiny.yaml")])
    cmd = [sys.executable, "-m", "mathtune.cli", *args, f"data.path={gsm8k}", *OVERRIDES]
    if log is None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(log, "w") as output:  # the child keeps its own copy of the file
        return subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, text=True)


def finish_logged(proc: subprocess.Popen, log: Path) -> None:
    proc.wait(timeout=900)
    assert proc.returncode == 0, log.read_text()[-3000:]


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 600
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gsm8k):
    root = tmp_path_factory.mktemp("kill")
    clean, killed = root / "clean", root / "killed"
    # The uninterrupted run goes on beside the killed one (one thread each): the same results, half the wait.
    clean_proc = start(clean, gsm8k, log=root / "clean.log")

    proc = start(killed, gsm8k)
    kill_when(proc, lambda: (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file(), "checkpoint-4")
    assert not (killed / "adapter").exists()  # killed mid-training, not after
    proc = start(killed, gsm8k, resume=True)
    partial = killed / "predictions" / "base.partial.jsonl"
    kill_when(proc, lambda: partial.is_file() and len(partial.read_text().splitlines()) >= 2, "2 answers")
    assert not (killed / "predictions" / "base.jsonl").exists()  # killed mid-evaluation
    finish(start(killed, gsm8k, resume=True))
    finish_logged(clean_proc, root / "clean.log")
    return clean, killed


@pytest.mark.slow
def test_adapter_matches_the_uninterrupted_run(runs):
    clean, killed = runs
    a = load_file(clean / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # Same data order, same RNG states restored from checkpoint-4, one thread: bit-identical on this CPU.
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k


@pytest.mark.slow
def test_predictions_match(runs):
    clean, killed = runs
    for name in ("base", "finetuned"):
        pa, pb = (
            read_jsonl(clean / "predictions" / f"{name}.jsonl"),
            read_jsonl(killed / "predictions" / f"{name}.jsonl"),
        )
        assert [(r["id"], r["completion"]) for r in pa] == [(r["id"], r["completion"]) for r in pb]
    assert not list((killed / "predictions").glob("*.partial.jsonl"))


@pytest.mark.slow
def test_metrics_have_no_duplicate_steps(runs):
    clean, killed = runs
    for kind in ("train_loss", "val_loss"):
        steps = [m["step"] for m in read_jsonl(killed / "metrics.jsonl") if kind in m]
        assert steps == sorted(set(steps)), (kind, steps)
        assert steps == [m["step"] for m in read_jsonl(clean / "metrics.jsonl") if kind in m]
    losses = lambda run: [m["train_loss"] for m in read_jsonl(run / "metrics.jsonl") if "train_loss" in m]  # noqa
    assert losses(killed) == pytest.approx(losses(clean), abs=1e-6)
    info = json.loads((killed / "train.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-4") and info["steps"] == 8
    # The trained tokens are counted over both sessions, in train.json and in every logged row.
    clean_info = json.loads((clean / "train.json").read_text())
    assert info["tokens"] == clean_info["tokens"] > 0
    tokens = lambda run: [m["tokens"] for m in read_jsonl(run / "metrics.jsonl") if "train_loss" in m]  # noqa
    assert tokens(killed) == tokens(clean) and tokens(clean)[-1] == clean_info["tokens"]
    assert info["train_seconds"] > info["session_seconds"] > 0


def test_a_checkpoint_cut_by_a_crash_is_skipped(tmp_path):
    from mathtune.train.stage import last_checkpoint

    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st')):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoints" / "checkpoint-8").mkdir()  # killed before its state was written
    assert last_checkpoint(tmp_path).name == "checkpoint-4"
    assert last_checkpoint(tmp_path / "nowhere") is None


def test_eval_resume_answers_only_what_is_missing(tmp_path, gsm8k):
    run = tmp_path / "run"
    res = mathtune_cli(
        "run", "--config", ROOT / "configs" / "tiny.yaml", "--out", run, f"data.path={gsm8k}", "train.max_steps=1"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    final = run / "predictions" / "finetuned.jsonl"
    rows = read_jsonl(final)
    final.unlink()
    partial = run / "predictions" / "finetuned.partial.jsonl"
    partial.write_text("".join(json.dumps(dict(r, completion="kept")) + "\n" for r in rows[:2]))
    res = mathtune_cli("eval", run, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    after = read_jsonl(final)
    assert [r["completion"] for r in after[:2]] == ["kept", "kept"] and after[2:] == rows[2:]

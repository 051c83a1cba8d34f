"""`accelerate launch` with two CPU processes (gloo): a complete run directory, written by the main process, and
the training loss of a single-process run with the same global batch."""

import json
import subprocess
import sys

import pytest

from mathtune.io import read_jsonl

from conftest import ROOT, mathtune_cli

TINY = ROOT / "configs" / "tiny.yaml"
# Global batch 4 either way: one process x 4 rows, or two processes x 2 rows. Dropout off, so the two runs differ
# only in the order float sums are taken (gradients all-reduced across processes).
COMMON = ["lora.dropout=0", "eval.limit=5", "train.bf16=false"]
TOLERANCE = 1e-4  # relative, on every logged training loss


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, gsm8k):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    res = mathtune_cli(
        "run", "--config", str(TINY), "--out", str(single), f"data.path={gsm8k}", "train.batch_size=4", *COMMON
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # `accelerate launch`, from this interpreter's environment
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"),
    ]
    res = subprocess.run(
        [
            *launch,
            "-m",
            "mathtune.cli",
            "run",
            "--config",
            str(TINY),
            "--out",
            str(multi),
            f"data.path={gsm8k}",
            "train.batch_size=2",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-5000:]

    for name in [
        "config.yaml",
        "run.json",
        "train.json",
        "eval.json",
        "adapter/adapter_model.safetensors",
        "predictions/base.jsonl",
        "predictions/finetuned.jsonl",
        "analysis.json",
        "report.html",
    ]:
        assert (multi / name).is_file(), name
    assert not list((multi / "predictions").glob("*.partial*"))  # every process's share merged
    preds = read_jsonl(multi / "predictions" / "finetuned.jsonl")
    test = read_jsonl(multi / "data" / "test.jsonl")
    assert [r["id"] for r in preds] == [r["id"] for r in test]  # 5 questions over 2 processes, back in test order

    one = [r for r in read_jsonl(single / "metrics.jsonl") if "train_loss" in r]
    two = [r for r in read_jsonl(multi / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in two] == [r["step"] for r in one]  # one row per step: only the main process logs
    assert [r["train_loss"] for r in two] == pytest.approx([r["train_loss"] for r in one], rel=TOLERANCE)
    assert json.loads((multi / "train.json").read_text())["steps"] == 4

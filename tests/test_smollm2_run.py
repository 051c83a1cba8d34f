"""The embedded default model through the whole run, on a few rows: what `make demo` does, smaller."""

import json

import pytest

from mathtune.io import read_jsonl

from conftest import ROOT, mathtune_cli


@pytest.mark.slow
def test_smollm2_run(tmp_path, gsm8k):
    out = tmp_path / "run"
    overrides = [
        f"data.path={gsm8k}",
        "data.max_train_rows=8",
        "data.max_val_rows=4",
        "eval.limit=4",
        "train.batch_size=4",
        "train.eval_steps=1",
        "train.logging_steps=1",
        "eval.max_new_tokens=48",
    ]
    res = mathtune_cli(
        "run", "--config", str(ROOT / "configs" / "demo-cpu.yaml"), "--out", str(out), *overrides, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = read_jsonl(out / "metrics.jsonl")
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    # A pretrained instruct model starts far below the random-init loss ln(49152) = 10.8 on GSM8K answers.
    assert val[0] < 3.0
    train = json.loads((out / "train.json").read_text())
    assert train["format"] == "chat" and train["steps"] == 2
    base = read_jsonl(out / "predictions" / "base.jsonl")
    assert len(base) == 4 and all(r["protocol"] == "chat" for r in base)
    assert any(r["extracted"] is not None for r in base)  # real text with numbers in it
    assert "| finetuned | chat | 4 |" in (out / "report.md").read_text()

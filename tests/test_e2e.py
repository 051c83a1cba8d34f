"""A whole run on the tiny config through the real CLI, then every file of the run-directory contract."""

import json
import re
import subprocess
import sys

import pytest

from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.io import read_jsonl

from conftest import ROOT, mathtune_cli

PRED_FIELDS = {"id", "question", "reference", "completion", "extracted", "correct", "generated_tokens", "truncated"}


def mathtune(*args, cwd=ROOT):
    return mathtune_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, gsm8k):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = mathtune("run", "--config", ROOT / "configs" / "tiny.yaml", "--out", out, f"data.path={gsm8k}")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_contract_files(run_dir):
    for name in [
        "config.yaml",
        "metrics.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "predictions/base.jsonl",
        "predictions/finetuned.jsonl",
        "report.md",
        "run.json",
        "analysis.json",
        "data/train.jsonl",
        "data/val.jsonl",
        "data/test.jsonl",
    ]:
        assert (run_dir / name).is_file(), name
    assert not list((run_dir / "predictions").glob("*.partial.jsonl"))


def test_run_json(run_dir):
    info = json.loads((run_dir / "run.json").read_text())
    assert set(info["stages"]) == {"data", "train", "eval", "report"}
    assert all(s["seconds"] >= 0 for s in info["stages"].values())
    if sys.platform == "linux":  # each stage's own peak memory, shown in the report's cost table
        assert all(s["peak_rss_gb"] > 0.1 for s in info["stages"].values())
        assert "peak memory (GB)" in (run_dir / "report.md").read_text()
    for pkg in ("torch", "transformers", "peft", "trl"):
        assert info["environment"]["packages"][pkg]
    assert info["environment"]["python"] and "started" in info and "finished" in info and "git_commit" in info


def test_metrics(run_dir):
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if "train_loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # 16 rows / batch 4, logged every step, no duplicates
    assert val[0]["step"] == 0  # the base model's validation loss before training
    for r in train:
        assert {"epoch", "mean_token_accuracy", "learning_rate", "elapsed_s", "cost_usd"} <= set(r)
    assert all(r.get("tokens_per_s", 1) > 0 for r in train)


def test_predictions_are_graded_correctly(run_dir):
    for name in ("base", "finetuned"):
        rows = read_jsonl(run_dir / "predictions" / f"{name}.jsonl")
        assert [r["id"] for r in rows] == [f"test-{i}" for i in range(6)]
        for r in rows:
            assert PRED_FIELDS <= set(r)
            assert r["extracted"] == extract_answer(r["completion"])
            assert r["correct"] == is_correct(r["extracted"], r["reference"])
            assert 0 < r["generated_tokens"] <= 8


def test_report_numbers_come_from_the_predictions(run_dir):
    text = (run_dir / "report.md").read_text()
    for name in ("base", "finetuned"):
        rows = read_jsonl(run_dir / "predictions" / f"{name}.jsonl")
        correct = sum(r["correct"] for r in rows)
        line = re.search(rf"^\| {name} \| [^|]+ \| (\d+) \| (\d+) \| ([\d.]+)% \|", text, re.M)
        assert line, text
        assert (int(line[1]), int(line[2])) == (len(rows), correct)
        assert float(line[3]) == pytest.approx(round(100 * correct / len(rows), 1))
    metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train_loss" in r]
    first, last = metrics[0]["train_loss"], metrics[-1]["train_loss"]
    assert f"| {first:.4f} | {last:.4f} | {100 * (first - last) / first:.1f}% |" in text
    assert "not answer accuracy" in text


def test_adapter_loads_with_peft(run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mathtune.models import TINY, ensure_local

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ensure_local(TINY)), run_dir / "adapter")
    assert model.peft_config["default"].r == 4


def test_finished_run_is_not_overwritten(run_dir):
    before = (run_dir / "report.md").read_text()
    res = mathtune("run", "--config", ROOT / "configs" / "tiny.yaml", "--out", run_dir)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--resume" in res.stderr
    assert (run_dir / "report.md").read_text() == before


def test_resume_skips_finished_stages(run_dir):
    res = mathtune("run", "--resume", "--out", run_dir)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("already done, skipped") == 4


def test_resume_with_another_config_names_the_keys(run_dir):
    res = mathtune("run", "--resume", "--out", run_dir, "lora.r=16")
    assert res.returncode == 2 and "lora.r" in res.stderr and "Traceback" not in res.stderr


def test_stages_rerun_alone(run_dir):
    (run_dir / "report.md").unlink()
    assert mathtune("report", run_dir).returncode == 0
    assert (run_dir / "report.md").is_file()
    res = mathtune("eval", run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(read_jsonl(run_dir / "predictions" / "finetuned.jsonl")) == 6


def test_eval_resumes_from_answered_questions(run_dir):
    final = run_dir / "predictions" / "finetuned.jsonl"
    rows = read_jsonl(final)
    partial = run_dir / "predictions" / "finetuned.partial.jsonl"
    kept = [dict(r, completion="kept from before the crash") for r in rows[:3]]
    partial.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "test-3", "quest')  # torn line
    final.unlink()
    res = mathtune("run", "--resume", "--out", run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    after = read_jsonl(final)
    assert [r["id"] for r in after] == [r["id"] for r in rows]
    assert [r["completion"] for r in after[:3]] == ["kept from before the crash"] * 3  # not generated again
    assert after[3:] == rows[3:]  # greedy: the rest is generated again, identically
    assert not partial.exists()
    assert "report ..." in res.stdout  # the report after a redone stage is stale: rendered again


def test_analysis_and_report_never_import_torch(run_dir):
    code = (
        "import sys; from pathlib import Path; from mathtune.report.build import build_report; "
        f"build_report(Path({str(run_dir)!r})); assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]

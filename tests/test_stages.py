"""The stage table: a redone stage invalidates every later one, its time replaces the old one, overrides apply to the
run or are refused, and the stages read the run directory only."""

import json
import subprocess
import sys

import pytest

from mathtune.config import load_config
from mathtune.errors import MathtuneError
from mathtune.io import read_json, read_jsonl
from mathtune.run import STAGE_NAMES, STAGES, key_stage, later

from conftest import ROOT
from conftest import mathtune_cli as mathtune

TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, gsm8k):
    run = tmp_path_factory.mktemp("stages") / "run"
    res = mathtune("run", "--config", TINY, "--out", run, f"data.path={gsm8k}", "eval.limit=3")
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def _skipped(stdout: str) -> set[str]:
    return {s for s in STAGE_NAMES if f"mathtune: {s}: already done, skipped" in stdout}


def test_the_table_declares_every_stage_once():
    assert STAGE_NAMES == ("data", "train", "eval", "report")
    owned = [w for s in STAGES for w in s.writes]
    assert len(owned) == len(set(owned))  # one owner per file
    for i, s in enumerate(STAGES):  # a stage reads only what earlier stages (or the run itself) wrote
        earlier = {w for e in STAGES[:i] for w in e.writes} | {"run.json", "config.yaml"}
        assert all(r in earlier or any(r.startswith(w + "/") for w in earlier) for r in s.reads), s.name
    assert [s.name for s in later("train")] == ["eval", "report"]


def test_key_stages():
    assert key_stage("data.path") == "data" and key_stage("eval.limit") == "data"
    assert key_stage("train.learning_rate") == "train" and key_stage("model.name") == "train"
    assert key_stage("eval.protocol") == "eval" and key_stage("cost.price_per_hour") == "report"
    assert key_stage("runtime.threads") is None


def test_retrain_then_resume_reevaluates_and_rereports(finished_run, gsm8k):
    run = finished_run
    old_adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    old_eval_time = read_json(run / "run.json")["stages"]["eval"]["seconds"]
    res = mathtune("train", run, "train.learning_rate=5e-3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_config(run / "config.yaml").train.learning_rate == 5e-3  # applied to the run
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() != old_adapter
    # what the later stages wrote is gone: made from the old adapter
    assert not (run / "predictions").exists() and not (run / "eval.json").exists()
    assert not (run / "report.html").exists()
    info = read_json(run / "run.json")
    assert set(info["stages"]) == {"data", "train"}  # the later stages' times went with their files
    res = mathtune("run", "--resume", "--out", run, "--config", run / "config.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _skipped(res.stdout) == {"data", "train"}
    assert (run / "report.html").is_file() and len(read_jsonl(run / "predictions" / "finetuned.jsonl")) == 3
    assert read_json(run / "run.json")["stages"]["eval"]["seconds"] > 0
    assert old_eval_time > 0


def test_reevaluate_then_resume_rereports_and_the_time_is_replaced(finished_run):
    run = finished_run
    info = read_json(run / "run.json")
    info["stages"]["eval"]["seconds"] = 10_000.0  # a sentinel: redoing the stage must replace it, not add to it
    (run / "run.json").write_text(json.dumps(info))
    res = mathtune("eval", run, "--protocol", "plain")
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_config(run / "config.yaml").eval.protocol == "plain"
    assert {r["protocol"] for r in read_jsonl(run / "predictions" / "base.jsonl")} == {"plain"}
    assert not (run / "report.html").exists()
    after = read_json(run / "run.json")["stages"]["eval"]["seconds"]
    assert 0 < after < 1000
    res = mathtune("run", "--resume", "--out", run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _skipped(res.stdout) == {"data", "train", "eval"} and (run / "report.html").is_file()


@pytest.mark.parametrize(
    "args, says",
    [
        (["eval", "{run}", "--limit", "2"], "eval.limit: read by the data stage"),
        (["eval", "{run}", "lora.r=16"], "lora.r: read by the train stage"),
        (["report", "{run}", "eval.max_new_tokens=4"], "eval.max_new_tokens: read by the eval stage"),
        (["train", "{run}", "data.max_train_rows=4"], "data.max_train_rows: read by the data stage"),
        (["eval", "{run}", "--adapter", "x"], "--adapter: only with --model"),
        (["eval", "{run}", "--out", "x.jsonl"], "--out: only with --model"),
        (["eval", "{run}", "eval.kv_cache=static"], "eval.kv_cache was renamed: use eval.decoder"),
    ],
)
def test_overrides_that_cannot_apply_are_refused(finished_run, args, says):
    run = finished_run
    config_before = (run / "config.yaml").read_text()
    res = mathtune(*[a.format(run=run) for a in args])
    assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (run / "config.yaml").read_text() == config_before


def test_report_runs_without_torch(finished_run, tmp_path):
    """analysis/ and report/ work on files alone: with torch unimportable, `mathtune report` still writes."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {
        "PYTHONPATH": f"{block}:{ROOT / 'src'}",
        "PATH": "/usr/bin:/bin",
        "MATHTUNE_ALLOCATOR": "system",
        "HOME": str(tmp_path),
    }
    res = subprocess.run([sys.executable, "-c", "import sys, torch"], capture_output=True, text=True, env=env)
    assert res.returncode != 0  # the block works
    (finished_run / "report.html").unlink(missing_ok=True)
    res = mathtune("report", finished_run, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (finished_run / "report.html").is_file()


def test_predictions_log_their_prompt(finished_run):
    rows = read_jsonl(finished_run / "predictions" / "finetuned.jsonl")
    assert all(len(r["prompt_sha256"]) == 64 for r in rows)
    assert len({r["prompt_sha256"] for r in rows}) == len(rows)


def test_eval_takes_its_format_and_examples_from_the_run(tmp_path, gsm8k):
    """The prompt format comes from train.json and the few-shot examples from data/train.jsonl, never from the source:
    after training, the source can be gone."""
    run = tmp_path / "run"
    src = tmp_path / "gsm8k"
    src.mkdir()
    for split in ("train", "test"):
        (src / f"{split}.jsonl").write_text("".join((gsm8k / f"{split}.jsonl").read_text().splitlines(True)[:40]))
    res = mathtune("run", "--config", TINY, "--out", run, f"data.path={src}", "eval.limit=2", "eval.protocol=few-shot")
    assert res.returncode == 0, res.stderr[-3000:]
    train_ids = {r["id"] for r in read_jsonl(run / "data" / "train.jsonl")}
    rows = read_jsonl(run / "predictions" / "finetuned.jsonl")
    assert all(set(r["fewshot_ids"]) <= train_ids and len(r["fewshot_ids"]) == 5 for r in rows)
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    res = mathtune("eval", run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["fewshot_ids"] for r in read_jsonl(run / "predictions" / "finetuned.jsonl")] == [
        r["fewshot_ids"] for r in rows
    ]


def test_metrics_elapsed_continues_after_a_resume(tmp_path):
    from mathtune.train.metrics import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path, 3.6, resumed=True, elapsed_before=100.0)
    state = type("S", (), {"global_step": 5, "epoch": 0.5})()
    logger.on_train_begin(None, state, None)
    logger.on_log(None, state, None, logs={"loss": 1.0, "num_tokens": 10})
    row = read_jsonl(path)[0]
    assert row["elapsed_s"] >= 100.0 and row["cost_usd"] >= 0.1  # 100 s at $3.6/h


def test_cost_is_priced_on_what_the_run_used():
    from mathtune.analysis.summary import cost_summary

    cfg = {"cost": {"prices": {"H100": 3.0}}}
    env = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 8}
    one_process = cost_summary(
        {"device": "cuda", "processes": 1, "environment": env, "stages": {"train": {"seconds": 3600}}}, cfg
    )
    assert one_process["gpus"] == 1 and one_process["dollars"] == pytest.approx(3.0)
    on_cpu = cost_summary(
        {"device": "cpu", "processes": 1, "environment": env, "stages": {"train": {"seconds": 3600}}}, cfg
    )
    assert on_cpu["gpus"] == 0 and on_cpu["dollars"] == 0
    four = cost_summary(
        {"device": "cuda", "processes": 4, "environment": env, "stages": {"train": {"seconds": 3600}}}, cfg
    )
    assert four["gpus"] == 4 and four["dollars"] == pytest.approx(12.0)


def test_grade_into_a_path_under_a_file_is_one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "#### 4", "reference": "#### 4"}) + "\n")
    blocker = tmp_path / "FILE"
    blocker.write_text("keep me")
    res = mathtune("grade", src, "--out", blocker / "x.jsonl")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "is a file, not a folder" in res.stderr and blocker.read_text() == "keep me"


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "--config", "c.yaml", "--out", "runs/x"], "mathtune run --resume --out runs/x"),
        (["train", "runs/x"], "mathtune train runs/x --resume"),
        (["eval", "runs/x", "--protocol", "plain"], "mathtune eval runs/x --resume"),
        (["eval", "--model", "m", "--out", "f.jsonl"], "run the same command again"),
    ],
)
def test_interrupted_says_how_to_resume_that_command(args, says):
    from mathtune.cli import _how_to_resume

    assert says in _how_to_resume(args)


def test_sampling_seeds_come_from_question_ids():
    """A question draws the same samples whatever its position (a resumed evaluation answers a suffix only)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathtune.evaluate.decoder import Decoding, decode
    from mathtune.models import TINY as TINY_MODEL
    from mathtune.models import ensure_local

    model = AutoModelForCausalLM.from_pretrained(ensure_local(TINY_MODEL)).eval()
    tok = AutoTokenizer.from_pretrained(ensure_local(TINY_MODEL))
    d = Decoding(6, k=3, sampling={"temperature": 1.0, "top_p": 1.0, "seed": 5})
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13]]
    torch.manual_seed(0)
    all_three = {i: got for i, got in decode("static", model, tok, prompts, ["a", "b", "c"], d, 4)}
    torch.manual_seed(99)
    suffix = {i: got for i, got in decode("static", model, tok, prompts[1:], ["b", "c"], d, 4)}
    assert suffix[0] == all_three[1] and suffix[1] == all_three[2]


def test_unknown_stage_override_key_is_refused_by_config(finished_run):
    with pytest.raises(MathtuneError):
        load_config(finished_run / "config.yaml", ["eval.backend=vllm"])

"""mathtune estimate: tokens of the configured data over the benchmarks' throughput -> hours and dollars."""

import json
import os

import pytest

from mathtune.config import load_config
from mathtune.data.format import sft_example
from mathtune.data.sources import from_jsonl
from mathtune.estimate import (
    ANSWER_LENGTH,
    GPUS,
    MEASURED_MFU,
    THROUGHPUT,
    count_tokens,
    estimate,
    throughput,
    train_steps,
)
from mathtune.models import load_tokenizer

from conftest import ROOT, mathtune_cli


def test_cpu_figures_are_the_committed_benchmarks():
    cpu = THROUGHPUT["cpu"]
    train = json.loads((ROOT / "bench" / "results" / "train_throughput_cpu.json").read_text())
    bf16 = json.loads((ROOT / "bench" / "results" / "eval_full_test_split_bf16.json").read_text())
    fp32 = json.loads((ROOT / "bench" / "results" / "eval_full_test_split.json").read_text())
    assert cpu["train_tokens_per_s"] == train["mathtune_tokens_per_s"]
    assert bf16["settings"]["dtype"] == "bfloat16" and cpu["eval_tokens_per_s"]["bfloat16"] == bf16["tokens_per_s"]
    assert fp32["settings"]["dtype"] == "float32" and cpu["eval_tokens_per_s"]["float32"] == fp32["tokens_per_s"]
    assert fp32["n"] == bf16["n"] == 1319


def test_generation_is_costed_at_the_rate_of_its_dtype():
    tokens = {"train_rows": 8, "train": 2000, "val": 0, "test_questions": 1000, "test_reference": 100_000}
    cfg = load_config(ROOT / "configs" / "full-cpu.yaml")  # model.dtype float32, eval.dtype "model"
    fp32 = estimate(cfg, tokens, THROUGHPUT["cpu"]["params"], "cpu")
    bf16 = estimate(
        cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"dtype": "bfloat16"})}),
        tokens,
        THROUGHPUT["cpu"]["params"],
        "cpu",
    )
    rates = THROUGHPUT["cpu"]["eval_tokens_per_s"]
    both = (ANSWER_LENGTH["base"] + ANSWER_LENGTH["finetuned"]) * 100_000
    assert fp32["eval_seconds"] == pytest.approx(both / rates["float32"], abs=0.1)
    assert bf16["eval_seconds"] == pytest.approx(both / rates["bfloat16"], abs=0.1)
    assert "generation in bfloat16" in bf16["basis"] and "generation in float32" in fp32["basis"]


def test_answer_lengths_are_the_full_studys():
    """ANSWER_LENGTH is what the committed full study's models wrote: generated / reference tokens, both capped."""
    cfg = load_config(ROOT / "configs" / "full-cpu.yaml")
    tok = load_tokenizer(cfg.model)
    cap = cfg.eval.max_new_tokens
    for model, factor in ANSWER_LENGTH.items():
        rows = [json.loads(line) for line in (ROOT / "examples/full-study/predictions" / f"{model}.jsonl").open()]
        reference = sum(min(len(tok(r["reference"], add_special_tokens=False)["input_ids"]) + 1, cap) for r in rows)
        assert len(rows) == 1319 and factor == round(sum(r["generated_tokens"] for r in rows) / reference, 3)


def test_generation_is_capped_at_the_token_limit():
    cfg = load_config(ROOT / "configs" / "full-cpu.yaml")  # 256 new tokens
    tokens = {"train_rows": 8, "train": 2000, "val": 0, "test_questions": 10, "test_reference": 2000}
    e = estimate(cfg, tokens, THROUGHPUT["cpu"]["params"], "cpu")
    assert e["generated_tokens"] == {"base": 2560, "finetuned": 2502}  # 1.656 x 2000 > 10 x 256
    assert "base 1.656x, fine-tuned 1.251x the reference answers" in e["basis"]


def test_chat_rows_are_counted_in_tokens(gsm8k):
    """The chat format's tokens, checked against the rendered template text tokenized on its own."""
    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml", [f"data.path={gsm8k}"])
    tok = load_tokenizer(cfg.model)
    train = from_jsonl(gsm8k, "train")[:3]
    test = from_jsonl(gsm8k, "test")[:2]
    got = count_tokens(cfg, {"train": train, "val": [], "test": test}, tok)
    expected = 0
    for r in train:
        ex = sft_example(r, "chat", cfg.model)
        text = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        expected += len(tok(text, add_special_tokens=False)["input_ids"])
    assert got["train"] == expected and got["train"] > 3 * 100  # GSM8K rows in the template: 150-500 tokens
    assert got["train_rows"] == 3 and got["val"] == 0 and got["test_questions"] == 2
    assert got["test_reference"] == sum(len(tok(r["answer"])["input_ids"]) + 1 for r in test)


def test_steps_and_validation_passes():
    cfg = load_config(ROOT / "configs" / "gemma2-9b-gsm8k.yaml")
    steps, evals = train_steps(cfg, 6725)  # GSM8K train minus 10% validation
    assert steps == 3 * 1682 and evals == steps // 100 + 1  # ceil(6725 / 4) steps per epoch


def test_gpu_estimate_follows_the_flop_model():
    cfg = load_config(ROOT / "configs" / "gemma2-9b-gsm8k.yaml")
    tokens = {"train_rows": 4, "train": 1_000_000, "val": 0, "test_reference": 0, "test_questions": 64}
    e = estimate(cfg, tokens, 9_000_000_000, "H100")
    per_s = GPUS["H100"]["peak_flops"] * MEASURED_MFU["H100"] / (4 * 9e9)
    assert e["train_seconds"] == pytest.approx(3 * 1_000_000 / per_s, rel=1e-3)  # 3 epochs of one step each
    assert e["dollars"] == pytest.approx((e["train_seconds"] + e["eval_seconds"]) / 3600 * 3.00, abs=0.01)
    with pytest.raises(ValueError):
        throughput("TPU v5", 1)


def _estimate(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network here: fail over to the proxy tokenizer at once
    return mathtune_cli("estimate", *args, env=env, cwd=ROOT)


@pytest.mark.slow
def test_estimate_the_reference_study(tmp_path, gsm8k):
    """Gemma-2-9B on all of GSM8K, 3 epochs, on an H100: the hub's tokenizer is out of reach here, so the tokens
    are counted with the proxy, and the output says so."""
    res = _estimate(
        "--config",
        ROOT / "configs" / "gemma2-9b-gsm8k.yaml",
        "--gpu",
        "h100",
        "--json",
        tmp_path / "e.json",
        "data.source=jsonl",
        f"data.path={gsm8k}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["tokens"]["train_rows"] == 6725 and e["tokens"]["test_questions"] == 1319
    assert e["steps"] == 5046 and 0 < e["dollars"] < 50 and "proxy" in e["tokenizer"]
    assert "GPU-hours" in res.stdout and "9.24B" in res.stdout


def test_estimate_bad_gpu_is_one_line(gsm8k):
    res = _estimate("--config", ROOT / "configs" / "tiny.yaml", "--gpu", "tpu", f"data.path={gsm8k}")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "--gpu" in res.stderr

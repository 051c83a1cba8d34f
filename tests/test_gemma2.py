"""The reference study's architecture through every stage on the CPU: a 2-layer Gemma-2 with random weights, its
attention-logit and final-logit soft-capping, a sliding-window layer shorter than the prompts, eager attention."""

import pytest
import torch

from mathtune.io import read_json, read_jsonl
from mathtune.models import TINY_GEMMA2, ensure_local

from conftest import ROOT, mathtune_cli


def test_tiny_gemma2_has_the_reference_architecture():
    from transformers import AutoModelForCausalLM

    from mathtune.evaluate import compact

    model = AutoModelForCausalLM.from_pretrained(ensure_local(TINY_GEMMA2), attn_implementation="eager").eval()
    c = model.config
    assert c.model_type == "gemma2" and c.attn_logit_softcapping == 50.0 and c.final_logit_softcapping == 30.0
    assert c.layer_types == ["sliding_attention", "full_attention"] and c.sliding_window == 32
    with torch.no_grad():
        logits = model(input_ids=torch.randint(10, 1000, (1, 80))).logits
    assert logits.abs().max() <= 30.0  # the final soft-cap is applied
    assert not compact.supports(model)  # sliding window: the static decoder answers


@pytest.mark.slow
def test_tiny_gemma2_runs_every_stage(tmp_path, gsm8k):
    run = tmp_path / "run"
    res = mathtune_cli(
        "run", "--config", str(ROOT / "configs" / "tiny-gemma2.yaml"), "--out", str(run), f"data.path={gsm8k}"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    train = read_json(run / "train.json")
    assert train["batching"] == "per_sequence" and train["steps"] == 4  # eager attention: not packed
    rows = read_jsonl(run / "predictions" / "finetuned.jsonl")
    assert len(rows) == 4 and all(r["protocol"] == "plain" for r in rows)
    assert (run / "report.html").is_file()
    # GSM8K prompts are longer than the sliding window: the window is exercised
    assert min(len(r["question"].split()) for r in read_jsonl(run / "data" / "test.jsonl")) > 20

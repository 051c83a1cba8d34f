"""train.batching: every layout trains on the same rows per step with the same loss; only the speed differs."""

import pytest
import torch

from mathtune.config import load_config
from mathtune.io import read_jsonl
from mathtune.models import TINY, ensure_local
from mathtune.train.stage import batching, sft_kwargs

from conftest import ROOT

TINY_CFG = ROOT / "configs" / "tiny.yaml"


def test_auto_layout_by_device():
    cfg = load_config(TINY_CFG)
    assert batching(cfg, "cpu") == "packed"
    assert batching(load_config(TINY_CFG, ["model.attn_implementation=eager"]), "cpu") == "per_sequence"
    assert batching(cfg, "cuda") == "padded"
    assert batching(load_config(TINY_CFG, ["model.attn_implementation=flash_attention_2"]), "cuda") == "padding_free"
    assert batching(load_config(TINY_CFG, ["train.batching=padded"]), "cpu") == "padded"


def test_per_sequence_keeps_the_rows_per_step(tmp_path):
    cfg = load_config(TINY_CFG, ["train.batch_size=8", "train.grad_accum=2", "train.batching=per_sequence"])
    kw = sft_kwargs(cfg, tmp_path, "cpu")
    assert kw["per_device_train_batch_size"] == 1 and kw["gradient_accumulation_steps"] == 16
    kw = sft_kwargs(load_config(TINY_CFG, ["train.batch_size=8", "train.batching=padding_free"]), tmp_path, "cpu")
    assert kw["padding_free"] and kw["max_length"] is None and kw["per_device_train_batch_size"] == 8


def test_packed_rows_attend_only_to_themselves():
    """Padding-free rows share one sequence; transformers builds a block-diagonal causal mask from the restarting
    position_ids (SDPA here), so each row's logits are what it gets alone. Only without a KV cache, as in training
    (TRL passes use_cache=False): with one, the rows would see each other, which the last lines show."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ensure_local(TINY), attn_implementation="sdpa").eval()
    a, b = list(range(5, 17)), list(range(40, 49))
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([s])).logits[0] for s in (a, b)]
        pos = torch.tensor([list(range(len(a))) + list(range(len(b)))])
        packed = model(input_ids=torch.tensor([a + b]), position_ids=pos, use_cache=False).logits[0]
        leaked = model(input_ids=torch.tensor([a + b]), position_ids=pos, use_cache=True).logits[0]
    torch.testing.assert_close(packed[: len(a)], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[len(a) :], alone[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaked[len(a) :], alone[1], atol=1e-3)  # the test can tell a leak


def _train_losses(tmp_path, gsm8k, layout: str) -> list[float]:
    """The data and train stages of a tiny run, in this process (four runs: each saves a fresh interpreter)."""
    from mathtune.run import open_run, run_stage, stage

    out = tmp_path / layout
    overrides = [f"data.path={gsm8k}", f"train.batching={layout}", "lora.dropout=0"]
    cfg = load_config(TINY_CFG, overrides)
    open_run(cfg, out, resume=False, force=False)
    for name in ("data", "train"):
        run_stage(cfg, out, stage(name))
    return [r["train_loss"] for r in read_jsonl(out / "metrics.jsonl") if "train_loss" in r]


@pytest.mark.slow
def test_every_layout_gives_the_padded_loss(tmp_path, gsm8k):
    """Same rows per step and loss = token sum / token count in all four: the losses agree to float32 rounding
    (the step-1 loss is before any update; later ones after updates made from the same gradients)."""
    padded = _train_losses(tmp_path, gsm8k, "padded")
    assert len(padded) == 4
    for layout in ("per_sequence", "packed", "padding_free"):
        got = _train_losses(tmp_path, gsm8k, layout)
        assert got == pytest.approx(padded, rel=1e-4), layout

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


def _train_run(tmp_path, gsm8k, layout: str, *extra: str):
    """The data and train stages of a tiny run, in this process (each saves a fresh interpreter); its folder."""
    from mathtune.run import open_run, run_stage, stage

    out = tmp_path / "-".join([layout, *extra])
    overrides = [f"data.path={gsm8k}", f"train.batching={layout}", "lora.dropout=0", *extra]
    cfg = load_config(TINY_CFG, overrides)
    open_run(cfg, out, resume=False, force=False)
    for name in ("data", "train"):
        run_stage(cfg, out, stage(name))
    return out


def _losses(out, key: str = "train_loss") -> list[float]:
    return [r[key] for r in read_jsonl(out / "metrics.jsonl") if key in r]


def _train_losses(tmp_path, gsm8k, layout: str) -> list[float]:
    return _losses(_train_run(tmp_path, gsm8k, layout))


@pytest.mark.slow
def test_every_layout_gives_the_padded_loss(tmp_path, gsm8k):
    """Same rows per step and loss = token sum / token count in all four: the losses agree to float32 rounding
    (the step-1 loss is before any update; later ones after updates made from the same gradients)."""
    padded = _train_losses(tmp_path, gsm8k, "padded")
    assert len(padded) == 4
    for layout in ("per_sequence", "packed", "padding_free"):
        got = _train_losses(tmp_path, gsm8k, layout)
        assert got == pytest.approx(padded, rel=1e-4), layout


def test_padding_packed_rows_to_a_multiple_changes_neither_loss_nor_token_count(tmp_path, gsm8k):
    """train.pad_to_multiple_of: the packed sequence ends in a padding row and each row's attention is padded with
    zeros, neither of which a real token can see: the same losses (validation too) and the same trained tokens.
    Padded shapes repeat, so training keeps oneDNN's default kernel cache; unpadded ones get the cap."""
    from mathtune.io import read_json

    plain = _train_run(tmp_path, gsm8k, "packed", "train.rows_per_forward=2")
    padded = _train_run(tmp_path, gsm8k, "packed", "train.rows_per_forward=2", "train.pad_to_multiple_of=64")
    for key in ("train_loss", "val_loss"):
        assert len(_losses(plain, key)) >= 2
        assert _losses(padded, key) == pytest.approx(_losses(plain, key), rel=1e-5), key
    tokens = [read_json(out / "train.json")["tokens"] for out in (plain, padded)]
    assert tokens[0] == tokens[1] > 0
    assert [read_json(out / "train.json")["onednn_cache"] for out in (plain, padded)] == [64, 1024]


def test_a_padded_batch_ends_in_a_row_of_its_own():
    from mathtune.train.packing import pad_packed, row_bounds

    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    batch = {
        "input_ids": torch.arange(1, 8).view(1, 7),
        "labels": torch.tensor([[-100, 5, 6, -100, -100, 9, 10]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]]),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": 4,
        "max_length_k": 4,
        "seq_idx": torch.tensor([[0, 0, 0, 1, 1, 1, 1]], dtype=torch.int32),
    }
    out = pad_packed(batch, 8, pad_id=0)
    assert out["pad_tokens"] == 1 and out["input_ids"].shape == (1, 8)
    assert out["labels"][0, -1] == -100 and out["input_ids"][0, -1] == 0
    assert row_bounds(out["cu_seq_lens_q"], None, 8) == row_bounds(None, out["position_ids"], 8) == [0, 3, 7, 8]
    assert out["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]
    assert pad_packed(batch, 7, pad_id=0)["pad_tokens"] == 0


@pytest.mark.parametrize(
    "overrides, device, match",
    [
        (["train.batching=padded"], "cpu", "train.pad_to_multiple_of: pads packed rows"),
        (["model.attn_implementation=eager"], "cpu", "this run is per_sequence on cpu"),
        ([], "cuda", "this run is padded on cuda"),
    ],
)
def test_padding_is_refused_where_rows_are_not_packed_on_a_cpu(overrides, device, match):
    from mathtune.errors import MathtuneError
    from mathtune.train.stage import check_padding

    with pytest.raises(MathtuneError, match=match):
        check_padding(load_config(TINY_CFG, ["train.pad_to_multiple_of=64", *overrides]), device)

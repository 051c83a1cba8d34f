"""The training path's parts: FastDropout is dropout, bf16 frozen weights change nothing under autocast, packed rows
see only themselves, and the answer-token loss is the loss TRL computes."""

import pytest
import torch
from torch import nn

from mathtune.config import load_config
from mathtune.models import TINY, ensure_local, load_model
from mathtune.train import packing
from mathtune.train.lora import FastDropout, fast_dropout, frozen_linear_to_bf16, lora_model
from mathtune.train.loss import completion_loss, scored_positions
from mathtune.train.packing import row_bounds, use_packed_attention

from conftest import ROOT

TINY_CFG = ROOT / "configs" / "tiny.yaml"


def test_fast_dropout_is_dropout():
    torch.manual_seed(0)
    drop = FastDropout(0.1).train()
    x = torch.randn(1000, 1000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 10^6 Bernoulli(0.9): sd 3e-4
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)
    # independent draws: a second call masks other elements; rows and columns are alike
    assert (drop(x) != 0).ne(kept).float().mean() > 0.15
    assert (kept.float().mean(0).std() < 0.02) and (kept.float().mean(1).std() < 0.02)
    assert torch.equal(drop.eval()(x), x) and torch.equal(FastDropout(0.0).train()(x), x)


def test_fast_dropout_follows_the_seed_and_autocast():
    x = torch.randn(64, 32)
    drop = FastDropout(0.5).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop(x).dtype == torch.bfloat16  # the dtype LoRA's A product casts to anyway


def _tiny_lora(bf16: bool):
    cfg = load_config(TINY_CFG)
    torch.manual_seed(0)
    return lora_model(load_model(cfg.model, "cpu"), cfg.lora, bf16_autocast=bf16)


def test_lora_model_swaps_every_dropout_and_casts_only_frozen_linear_weights():
    model = _tiny_lora(bf16=True)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 2 * 7  # 2 layers x 7 linear modules
    for name, p in model.named_parameters():
        expect = torch.bfloat16 if ("base_layer" in name and not p.requires_grad) else torch.float32
        assert p.dtype == expect, name
    assert fast_dropout(model) == 0 and frozen_linear_to_bf16(model) == 0  # nothing left to change


def test_bf16_frozen_weights_give_the_same_autocast_forward():
    ids = torch.tensor([[5, 17, 300, 42, 9, 1000, 77]])
    fp32, bf16 = _tiny_lora(bf16=False).eval(), _tiny_lora(bf16=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fp32(input_ids=ids).logits, bf16(input_ids=ids).logits)


def test_row_bounds():
    assert row_bounds(torch.tensor([0, 3, 7], dtype=torch.int32), None, 7) == [0, 3, 7]
    assert row_bounds(None, torch.tensor([[0, 1, 2, 0, 1, 0]]), 6) == [0, 3, 5, 6]
    assert row_bounds(None, None, 4) == [0, 4]


def test_packed_rows_see_only_themselves():
    """Three rows in one sequence under sdpa_packed: each row's logits are what it gets alone, and changing one row's
    tokens leaves the others' logits as they were."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ensure_local(TINY), attn_implementation="sdpa").eval()
    rows = [list(range(5, 17)), list(range(40, 49)), list(range(100, 120))]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).logits[0] for r in rows]
    use_packed_attention(model)
    cu = torch.tensor([0, 12, 21, 41], dtype=torch.int32)
    pos = torch.tensor([[*range(12), *range(9), *range(20)]])

    def packed(rs):
        with torch.no_grad():
            return model(
                input_ids=torch.tensor([sum(rs, [])]),
                position_ids=pos,
                cu_seq_lens_q=cu,
                cu_seq_lens_k=cu,
                use_cache=False,
            ).logits[0]

    out = packed(rows)
    for r, (a, b) in zip(alone, [(0, 12), (12, 21), (21, 41)]):
        torch.testing.assert_close(out[a:b], r, atol=1e-5, rtol=1e-5)
    changed = packed([rows[0], [7] * 9, rows[2]])
    assert torch.equal(changed[:12], out[:12]) and torch.equal(changed[21:], out[21:])
    assert not torch.allclose(changed[12:21], out[12:21])  # the test can tell a change
    use_packed_attention(model, multiple=16)  # each row's attention padded with zeros to 16 or 32 tokens
    lengths, sdpa = [], packing.sdpa_attention_forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            packing, "sdpa_attention_forward", lambda m, q, *a, **k: lengths.append(q.shape[2]) or sdpa(m, q, *a, **k)
        )
        out = packed(rows)
    for r, (a, b) in zip(alone, [(0, 12), (12, 21), (21, 41)]):
        torch.testing.assert_close(out[a:b], r, atol=1e-5, rtol=1e-5)
    assert set(lengths) == {16, 32}  # the padding happened


def test_completion_loss_is_the_padded_cross_entropy():
    """Sum over answer tokens and their count, against the model's own loss on the full logits."""
    model = _tiny_lora(bf16=False).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 8, 9, 10, 11, 12], [-100, -100, 22, 23, 24, 25, -100, -100]])
    mask = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])
    with torch.no_grad():
        total, count, correct = completion_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    expect = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
    assert count == 9
    torch.testing.assert_close(total, expect)
    assert correct == ((logits.argmax(-1) == target) & (target != -100)).sum()
    assert scored_positions(labels).tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("layout,rows,accum", [("packed", 8, 1), ("packed", 2, 4), ("per_sequence", 1, 8)])
def test_layouts_keep_the_rows_per_step(tmp_path, layout, rows, accum):
    from mathtune.train.stage import sft_kwargs

    extra = [f"train.rows_per_forward={rows}"] if layout == "packed" else []
    cfg = load_config(TINY_CFG, ["train.batch_size=8", f"train.batching={layout}", *extra])
    kw = sft_kwargs(cfg, tmp_path, "cpu")
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (rows, accum)
    assert kw["padding_free"] == (layout == "packed")


def test_gradient_checkpointing_goes_by_the_name_the_installed_transformers_takes(tmp_path, monkeypatch):
    """transformers 5.24 renamed TrainingArguments' gradient_checkpointing to activation_checkpointing (the old name a
    deprecated alias); the GPU image's 5.17 knows only the old one and refused the new (bench/gpu_check.sh found it)."""
    import transformers
    from trl import SFTConfig

    from mathtune.train.stage import checkpointing_argument, sft_kwargs

    cfg = load_config(TINY_CFG, ["train.gradient_checkpointing=true"])
    kw = sft_kwargs(cfg, tmp_path, "cpu")
    assert kw[checkpointing_argument()] is True and SFTConfig(**kw).gradient_checkpointing is True
    fields = {k: v for k, v in transformers.TrainingArguments.__dataclass_fields__.items() if "activation" not in k}
    monkeypatch.setattr(transformers.TrainingArguments, "__dataclass_fields__", fields)
    assert checkpointing_argument() == "gradient_checkpointing"
    assert sft_kwargs(cfg, tmp_path, "cpu")["gradient_checkpointing"] is True


def test_liger_kernel_is_applied_on_a_gpu_or_refused(tmp_path):
    """train.liger_kernel reaches SFTConfig as use_liger_kernel, and a run that cannot apply it stops with the key."""
    from mathtune.errors import MathtuneError
    from mathtune.train.stage import check_liger, sft_kwargs

    cfg = load_config(TINY_CFG, ["train.liger_kernel=true"])
    assert sft_kwargs(cfg, tmp_path, "cuda")["use_liger_kernel"] is True
    assert sft_kwargs(load_config(TINY_CFG), tmp_path, "cpu")["use_liger_kernel"] is False
    with pytest.raises(MathtuneError, match=r"^train.liger_kernel: needs a CUDA GPU"):
        check_liger(cfg, "cpu")
    check_liger(load_config(TINY_CFG), "cpu")  # off: nothing to check

"""The training path's parts: FastDropout is dropout, bf16 frozen weights change nothing under autocast, packed rows
see only themselves, and the answer-token loss is the loss TRL computes."""

import pytest
import torch
from torch import nn

from mathtune.config import load_config
from mathtune.models import TINY, ensure_local, load_model
from mathtune.train import packing
from mathtune.train.lora import (
    DroppedLinear,
    FastDropout,
    drop_inside_lora_a,
    fast_dropout,
    frozen_linear_to_bf16,
    lora_model,
)
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
    assert repr(drop) == "FastDropout(p=0.1)"


def test_fast_dropout_follows_the_seed_and_autocast():
    x = torch.randn(64, 32)
    drop = FastDropout(0.5).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop(x).dtype == torch.bfloat16  # the dtype LoRA's A product casts to anyway


@pytest.mark.parametrize("p", [0.1, 0.25, 1 / 3, 0.5, 0.9])
def test_keep_factor_is_the_keep_mask_in_each_dtype(p):
    """The integer-made ones and zeros are keep_mask's booleans, in bf16 and fp16 (bit patterns) and float32; the
    mask keeps 1 - p of the elements, and a seed gives one mask."""
    from mathtune.train.lora import keep_factor, keep_mask

    x = torch.empty(300, 301)  # not a multiple of 4: the last 64-bit draw is cut
    keep = keep_mask(x, p, 5)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        factor = keep_factor(x, p, 5, dtype)
        assert factor.dtype == dtype and torch.equal(factor, keep.to(dtype)), dtype
    assert abs(keep.float().mean().item() - (1 - p)) < 0.005  # 90,300 draws: sd <= 0.0017
    assert torch.equal(keep, keep_mask(x, p, 5)) and not torch.equal(keep, keep_mask(x, p, 6))


def test_argmax_hits_is_argmax_with_its_ties():
    """Counted as argmax counts, the first of tied maxima winning, -100 never; the logits are left as they were."""
    from mathtune.train.loss import argmax_hits

    torch.manual_seed(0)
    for _ in range(50):
        logits = torch.randint(-3, 3, (17, 40)).float()  # small integers: many tied maxima
        targets = torch.randint(0, 40, (17,))
        targets[::3] = logits[::3].argmax(-1)
        targets[1] = -100
        before = logits.clone()
        expect = ((logits.argmax(-1) == targets) & (targets != -100)).sum()
        assert argmax_hits(logits, targets) == expect and torch.equal(logits, before)


def _tiny_lora(bf16: bool, mathtune_changes: bool = True):
    cfg = load_config(TINY_CFG)
    torch.manual_seed(0)
    if not mathtune_changes:
        from peft import get_peft_model

        from mathtune.train.lora import lora_config

        return get_peft_model(load_model(cfg.model, "cpu"), lora_config(cfg.lora))
    return lora_model(load_model(cfg.model, "cpu"), cfg.lora, bf16_autocast=bf16)


def test_lora_model_swaps_every_dropout_and_casts_only_frozen_linear_weights():
    model = _tiny_lora(bf16=True)
    assert not any(isinstance(m, (nn.Dropout, FastDropout)) for m in model.modules())
    dropped = [m for m in model.modules() if isinstance(m, DroppedLinear)]
    assert len(dropped) == 2 * 7 and all(m.p == 0.1 for m in dropped)  # 2 layers x 7 linear modules
    for name, p in model.named_parameters():
        expect = torch.bfloat16 if ("base_layer" in name and not p.requires_grad) else torch.float32
        assert p.dtype == expect, name
    assert drop_inside_lora_a(model) == fast_dropout(model) == frozen_linear_to_bf16(model) == 0  # nothing left
    fresh = _tiny_lora(bf16=False, mathtune_changes=False)
    assert model.state_dict().keys() == fresh.state_dict().keys()  # adapters save and load under PEFT's names


@pytest.mark.parametrize("bf16", [False, True])
def test_dropout_inside_the_a_product_is_fast_dropout_then_a(bf16):
    """DroppedLinear's output and gradients are those of FastDropout followed by the A product, for the same mask
    (drawn again from the same seed in the backward), in float32 and under bf16 autocast."""
    from mathtune.train.lora import DropoutLinear, keep_mask

    torch.manual_seed(0)
    x = torch.randn(2, 40, 24, requires_grad=True)
    w = torch.randn(4, 24, requires_grad=True)
    grad = torch.randn(2, 40, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = DropoutLinear.apply(x, w, 0.25, 1234)
        dtype = torch.bfloat16 if bf16 else torch.float32
        keep = keep_mask(x, 0.25, 1234)
        x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        expect = nn.functional.linear(torch.where(keep, x2.to(dtype), 0) * (1 / 0.75), w2)
    assert 0.6 < keep.float().mean() < 0.9 and out.dtype == expect.dtype == dtype
    assert torch.equal(out, expect)
    out.backward(grad.to(out.dtype))
    expect.backward(grad.to(out.dtype))
    tol = dict(rtol=1e-2, atol=1e-2) if bf16 else {}  # the weight's product summed in another order in bf16
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad, **tol)
    assert (x.grad == 0).eq(~keep.expand_as(x)).all()  # dropped elements get no gradient


def test_dropped_linear_follows_the_seed_and_shares_its_input():
    """Mask seeds come from the global generator (torch.manual_seed repeats a run); q, k and v keep one x between
    them for the backward, in bf16 under autocast, not three dropped-out copies."""
    model = _tiny_lora(bf16=True).train()
    ids = torch.arange(5, 37).view(1, 32)

    def run():
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids).logits

    assert torch.equal(run(), run())
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run()
    first = model.base_model.model.model.layers[0].self_attn
    shape = (1, 32, first.q_proj.in_features)
    bf16 = [t.untyped_storage().data_ptr() for t in saved if t.shape == shape and t.dtype == torch.bfloat16]
    assert max(map(bf16.count, bf16)) >= 3  # one cast of x, kept by q, k and v's adapters


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


def _loss_and_grads(model, batch, fused: bool, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        total, count, correct = completion_loss(model, batch, fused=fused)
    (total / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.detach(), count, correct, grads


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_head_loss_is_the_unfused_loss(monkeypatch, bf16):
    """linear_cross_entropy: the same loss, count and argmax hits, and the same LoRA gradients (up to bf16 rounding
    under autocast: it scales the gradient after the head's bf16 product, the unfused path before), over several
    chunks and with unscored positions among the targets."""
    import mathtune.train.loss as loss_module

    monkeypatch.setattr(loss_module, "FUSED_CHUNK", 3)
    model = _tiny_lora(bf16=bf16).eval()  # no dropout: both passes see the same network
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 8, 9, 10, 11, 12], [-100, -100, 22, 23, 24, 25, -100, -100]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 8, [1] * 6 + [0, 0]]), "labels": labels}
    assert loss_module.fusable_head(model) is model.get_output_embeddings()
    fused, unfused = (_loss_and_grads(model, batch, f, bf16) for f in (True, False))
    tol = dict(rtol=2e-2, atol=1e-3) if bf16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[0], unfused[0], rtol=1e-5, atol=1e-5)  # float32 sums, other chunking
    assert fused[1] == unfused[1] == 9 and fused[2] == unfused[2]
    assert fused[3].keys() == unfused[3].keys() and len(fused[3]) > 0
    for name in fused[3]:
        torch.testing.assert_close(fused[3][name], unfused[3][name], **tol, msg=name)
    assert "forward" not in vars(model.get_output_embeddings())  # the head's own forward is back


def test_fused_head_loss_keeps_no_vocabulary_sized_tensor_for_the_backward():
    model = _tiny_lora(bf16=True).train()
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.arange(5, 37).view(1, 32)
    batch = {"input_ids": ids, "labels": torch.cat([torch.full((1, 8), -100), ids[:, 8:]], dim=1)}
    for fused in (True, False):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, seen=shapes: seen.append(t.shape) or t, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                completion_loss(model, batch, fused=fused)
        assert any(s and s[-1] == vocab for s in shapes) == (not fused)


def test_a_trained_biased_or_capped_head_is_not_fused():
    from mathtune.train.loss import fusable_head

    model = _tiny_lora(bf16=False)
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)
    assert fusable_head(model) is None
    head.weight.requires_grad_(False)
    head.bias = nn.Parameter(torch.zeros(head.out_features), requires_grad=False)
    assert fusable_head(model) is None
    capped = _tiny_lora(bf16=False)
    assert fusable_head(capped) is not None
    capped.config.final_logit_softcapping = 30.0  # Gemma 2's: logits change after the head
    assert fusable_head(capped) is None


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


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_gated_mlp_keeps_two_tensors_and_gives_the_same_numbers(family):
    """ActTimesUp (train/mlp.py) in SmolLM2's (SiLU) and Gemma 3's (GELU) MLPs: the same loss and gradients, bit for
    bit, under bf16 autocast, and two (batch, tokens, intermediate) tensors kept per layer for the backward, not three."""
    import copy

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    from mathtune.train.mlp import fuse_gated_mlps

    model_cls, config_cls = {"llama": (LlamaForCausalLM, LlamaConfig), "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig)}[
        family
    ]
    torch.manual_seed(0)
    kw = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    plain = model_cls(config_cls(vocab_size=96, hidden_size=32, intermediate_size=72, num_hidden_layers=2, **kw))
    fused = copy.deepcopy(plain)
    assert fuse_gated_mlps(fused) == 2 and fuse_gated_mlps(plain.model.embed_tokens) == 0
    ids = torch.randint(0, 96, (2, 11))
    results = []
    for model in (plain, fused):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        wide = {t.untyped_storage().data_ptr() for t in saved if t.shape == (2, 11, 72)}
        results.append((loss.item(), [p.grad for p in model.parameters()], len(wide)))
    (loss_a, grads_a, wide_a), (loss_b, grads_b, wide_b) = results
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert (wide_a, wide_b) == (2 * 3, 2 * 2)  # gate, act(gate) and up -> gate and up (the product: down's)


def test_the_fused_head_runs_under_the_trainers_autocast(tmp_path, monkeypatch):
    """compute_loss runs linear_cross_entropy under the Trainer's bf16 autocast (accelerate casts only inside the
    model's forward): its head product in bf16, not float32."""
    from mathtune.models import load_tokenizer
    from mathtune.train import loss as loss_module
    from mathtune.train.stage import make_trainer, sft_args, sft_dataset

    cfg = load_config(TINY_CFG, ["train.bf16=true", "train.max_steps=1"])
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(8)]
    dataset = sft_dataset(rows, "plain", cfg.model)
    args = sft_args(cfg, tmp_path, "cpu")
    trainer = make_trainer(cfg, "cpu", load_tokenizer(cfg.model), args, dataset, eval_dataset=dataset)
    dtypes = []
    forward = loss_module.LinearCrossEntropy.forward

    def spy(ctx, hidden, weight, targets):
        dtypes.append(loss_module.compute_dtype(hidden, weight))
        return forward(ctx, hidden, weight, targets)

    monkeypatch.setattr(loss_module.LinearCrossEntropy, "forward", staticmethod(spy))
    model = trainer.accelerator.prepare_model(trainer.model)  # as train() does: its forward under autocast
    trainer.compute_loss(model, next(iter(trainer.get_train_dataloader())))
    assert dtypes == [torch.bfloat16]


def test_the_fused_heads_products_have_repeating_shapes(monkeypatch):
    """linear_cross_entropy's chunks are 128 rows, its last padded to a multiple of 64 with unlabelled rows: the
    same loss, hits and gradient as without padding (one chunk of all 300 rows)."""
    import mathtune.train.loss as loss_module

    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (300,))
    targets[::7] = -100
    rows = []
    linear = loss_module.F.linear
    monkeypatch.setattr(loss_module.F, "linear", lambda x, w, *a: rows.append(len(x)) or linear(x, w, *a))
    total, hits = loss_module.LinearCrossEntropy.apply(hidden, weight, targets)
    total.backward()
    assert rows == [128, 128, 64]
    monkeypatch.setattr(loss_module, "FUSED_CHUNK", 300)
    monkeypatch.setattr(loss_module, "CHUNK_ROWS_MULTIPLE", 1)
    plain = hidden.detach().clone().requires_grad_()
    total2, hits2 = loss_module.LinearCrossEntropy.apply(plain, weight, targets)
    total2.backward()
    torch.testing.assert_close(total, total2)
    assert hits == hits2 and rows[-1] == 300
    torch.testing.assert_close(hidden.grad, plain.grad)

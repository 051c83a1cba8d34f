"""The LoRA model mathtune trains: PEFT's, plus three changes that keep its maths and drop work or memory the CPU
spent for nothing.

Found with torch.profiler on SmolLM2 (bench/results/train_throughput_cpu.json):
  - LoRA dropout drew its mask with `bernoulli_`, a quarter of a step's time on 2 cores. FastDropout draws 64 random
    bits per 4 elements and keeps an element when its 15-bit share is at least p * 2^15: the same Bernoulli(1 - p)
    mask up to a 2^-15 rounding of p, the same 1 / (1 - p) scaling. On a CPU the bits come from numpy's SFC64
    (about 2x torch's mt19937 `random_` here, which was 5x `bernoulli_`), and the mask is a tensor of ones and zeros
    made from them with integer operations, which a product applies (`torch.where` with a boolean mask, which it
    replaces, ran 5x slower than the product on bf16). Under autocast it works in the autocast dtype, which LoRA's
    A product would cast to anyway.
  - Under bf16 autocast, every frozen float32 Linear weight was cast to bfloat16 again on every forward (autocast
    caches casts only of weights that train). Stored in bfloat16 once, they give bit-identical matrix products.
  - For its backward, PEFT's `lora_A(dropout(x))` kept each adapter's dropped-out input (bf16) and its mask (a byte
    per element): a quarter of a step's saved tensors (bench/results/train_saved_tensors_cpu.json), though q, k and
    v (and gate and up) read the same x. DroppedLinear does the dropout and the A product in one autograd step that
    keeps x itself, shared by the sibling adapters, and the seed of its mask, which it draws again in the backward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BITS = 15  # random bits per element: an int64 draw split into four int16s, the sign bit masked off
MASK = 0x7FFF_7FFF_7FFF_7FFF
ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}  # 1.0 as an int16 bit pattern


def random_shares(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """n int16 values, uniform in [0, 2^15), determined by `seed`: four per 64-bit draw, from numpy's SFC64 on a CPU
    (module docstring), from the device's generator elsewhere."""
    draws = (n + 3) // 4
    if device.type == "cpu":
        raw = torch.from_numpy(np.random.SFC64(seed).random_raw(draws).view(np.int64))
    else:
        generator = torch.Generator(device).manual_seed(seed)
        raw = torch.empty(draws, dtype=torch.int64, device=device).random_(generator=generator)
    raw &= MASK  # each int16 share to its low 15 bits, on a quarter of the elements
    return raw.view(torch.int16)[:n]


# Masks are made as written under torch.compile (`train.compile`): traced, the int16 shares viewed out of int64 draws
# and the bf16 view of their bits became aliased graph outputs that AOTAutograd failed to rebuild (a storage-size error).
@torch.compiler.disable
def keep_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Bernoulli(1 - p) booleans of x's shape, drawn from `seed` (module docstring)."""
    return random_shares(x.numel(), seed, x.device).view(x.shape) >= round(p * 2**BITS)


@torch.compiler.disable
def keep_factor(x: torch.Tensor, p: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """keep_mask(x, p, seed) as ones and zeros of `dtype`. In bf16 and fp16, made in place on the int16 shares:
    threshold - 1 - share is negative exactly where the element is kept, so its sign, spread over 16 bits by an
    arithmetic shift and ANDed with 1.0's bit pattern, is 1.0 there and 0 elsewhere."""
    if dtype not in ONE_BITS:
        return keep_mask(x, p, seed).to(dtype)
    shares = random_shares(x.numel(), seed, x.device).view(x.shape)
    shares.neg_().add_(round(p * 2**BITS) - 1)  # in [-2^15, 2^15): no overflow
    return shares.bitwise_right_shift_(BITS).bitwise_and_(ONE_BITS[dtype]).view(dtype)


def dropout_seed() -> int:
    """A mask's seed, from torch's global generator: torch.manual_seed repeats a run's masks."""
    return int(torch.randint(2**62, (), device="cpu"))


class FastDropout(nn.Module):
    """nn.Dropout(p) with a cheaper random mask (see the module docstring)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if torch.is_autocast_enabled(x.device.type):
            # The LoRA A product casts its input to this dtype anyway: cast first, and the mask and the output
            # saved for backward take half the memory.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return (x * keep_factor(x, self.p, dropout_seed(), x.dtype)).mul_(1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype LoRA's A product runs in: autocast's, else the adapter weight's (PEFT casts the input to it)."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class DropoutLinear(torch.autograd.Function):
    """linear(dropout(x), weight) with the mask drawn from `seed`; saves x in the product's dtype (`cast`, which
    sibling adapters share: input_cast) and the seed, not the dropped-out input and the mask. The same operations as
    FastDropout then nn.Linear under autocast, so the same values for the same mask."""

    @staticmethod
    def forward(ctx, x, weight, p: float, seed: int, cast=None):
        dtype = compute_dtype(x, weight)
        cast = x.detach().to(dtype) if cast is None else cast
        dropped = (cast * keep_factor(cast, p, seed, dtype)).mul_(1 / (1 - p))
        ctx.save_for_backward(cast, weight)
        ctx.p, ctx.seed, ctx.x_dtype = p, seed, x.dtype
        return torch.nn.functional.linear(dropped, weight.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        cast, weight = ctx.saved_tensors
        p, dtype = ctx.p, cast.dtype
        keep = keep_factor(cast, p, ctx.seed, dtype)  # the forward's mask, drawn again
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            dropped = (cast * keep).mul_(1 / (1 - p))
            grad_w = (grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, cast.shape[-1])).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = ((grad.to(dtype) @ weight.to(dtype)) * keep).mul_(1 / (1 - p)).to(ctx.x_dtype)
        return grad_x, grad_w, None, None, None


def input_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype`, detached, made once per tensor: q, k and v (gate and up) read the same x, and each adapter
    would keep its own copy for the backward. Kept on x itself, so it goes when x does. The gradient with respect to
    x stays each adapter's own, in x's dtype (DropoutLinear), summed as before."""
    if x.dtype == dtype:
        return x.detach()
    version, cast = getattr(x, "_lora_input_cast", (None, None))
    if cast is None or cast.dtype != dtype or version != x._version:  # made before x changed in place: again
        cast = x.detach().to(dtype)
        x._lora_input_cast = (x._version, cast)
    return cast


class DroppedLinear(nn.Linear):
    """LoRA's A: nn.Linear whose input is dropped out with probability `p` in training, through DropoutLinear. The
    same parameter under the same name as PEFT's lora_A, so adapters save and load unchanged."""

    p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        cast = input_cast(x, compute_dtype(x, self.weight))
        return DropoutLinear.apply(x, self.weight, self.p, dropout_seed(), cast)


def drop_inside_lora_a(model) -> int:
    """Move each LoRA dropout into its A product (DroppedLinear), the dropout left as nn.Identity, and stop PEFT
    casting a layer's input to the adapter's float32 (DroppedLinear casts to the product's dtype itself, and keeps
    the input it is given: shared by the layers that read it). Returns how many were moved."""
    n = 0
    for module in model.modules():
        drops, a_layers = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(drops, nn.ModuleDict) or not isinstance(a_layers, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            a = a_layers[name]
            if isinstance(drop, (nn.Dropout, FastDropout)) and type(a) is nn.Linear and a.bias is None:
                a.__class__, a.p = DroppedLinear, drop.p
                drops[name] = nn.Identity()
                module.cast_input_dtype_enabled = False
                n += 1
    return n


def lora_config(lora):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def fast_dropout(model) -> int:
    """Replace every LoRA dropout with FastDropout of the same p; returns how many were replaced."""
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, drop in drops.items():
                if isinstance(drop, nn.Dropout):
                    drops[name] = FastDropout(drop.p)
                    n += 1
    return n


def frozen_linear_to_bf16(model) -> int:
    """Store the frozen float32 weights of LoRA-wrapped Linear layers in bfloat16 (for bf16 autocast training:
    autocast would cast them to exactly these values on every forward). Returns how many were cast."""
    n = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Linear) and not base.weight.requires_grad and base.weight.dtype == torch.float32:
            base.weight.data = base.weight.data.to(torch.bfloat16)
            if base.bias is not None:
                base.bias.data = base.bias.data.to(torch.bfloat16)
            n += 1
    return n


def lora_model(model, lora, bf16_autocast: bool):
    """PEFT's LoRA model over `model`, with the changes above and train/mlp.py's (all exact, so always on)."""
    from peft import get_peft_model

    from mathtune.train.mlp import fuse_gated_mlps

    peft_model = get_peft_model(model, lora_config(lora))
    drop_inside_lora_a(peft_model)
    fast_dropout(peft_model)  # any dropout left (none on PEFT's Linear layers)
    fuse_gated_mlps(peft_model)
    if bf16_autocast:
        frozen_linear_to_bf16(peft_model)
    return peft_model

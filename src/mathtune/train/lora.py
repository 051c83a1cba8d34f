"""The LoRA model mathtune trains: PEFT's, plus two changes that keep its maths and drop work the CPU did for nothing.

Found with torch.profiler on SmolLM2 (bench/results/train_throughput_cpu.json):
  - LoRA dropout drew its mask with `bernoulli_`, a quarter of a step's time on 2 cores. FastDropout draws 64 random
    bits per 4 elements (`random_`, about 5x faster here) and keeps an element when its 15-bit share is at least
    p * 2^15: the same Bernoulli(1 - p) mask up to a 2^-15 rounding of p, the same 1 / (1 - p) scaling. Under
    autocast it works in the autocast dtype, which LoRA's A product would cast to anyway.
  - Under bf16 autocast, every frozen float32 Linear weight was cast to bfloat16 again on every forward (autocast
    caches casts only of weights that train). Stored in bfloat16 once, they give bit-identical matrix products.
"""

from __future__ import annotations

import torch
from torch import nn

BITS = 15  # random bits per element: an int64 draw split into four int16s, the sign bit masked off
MASK = 0x7FFF_7FFF_7FFF_7FFF


class FastDropout(nn.Module):
    """nn.Dropout(p) with a cheaper random mask (see the module docstring)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 2**BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if torch.is_autocast_enabled(x.device.type):
            # The LoRA A product casts its input to this dtype anyway: cast first, and the mask and the output
            # saved for backward take half the memory.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        draws &= MASK  # each int16 share to its low 15 bits, on a quarter of the elements
        keep = draws.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return torch.where(keep, x, 0) * (1 / (1 - self.p))  # where: backward keeps the boolean mask only

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
    """PEFT's LoRA model over `model`, with the changes above (both exact, so always on)."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(lora))
    fast_dropout(peft_model)
    if bf16_autocast:
        frozen_linear_to_bf16(peft_model)
    return peft_model

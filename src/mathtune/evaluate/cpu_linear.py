"""Float32 linear layers of CPU generation through oneDNN (eval.cpu_linear: onednn).

torch hands a float32 nn.Linear on CPU to its BLAS (MKL in the PyPI wheels) and a bfloat16 one to oneDNN. MKL picks
its kernels by CPU vendor: on an AMD EPYC with AVX-512 its float32 products of SmolLM2's decode shapes ran 1.2-2.7x
slower than oneDNN's (64x576 by 576x1536: 630 us against 422; the 49,152-row head at batch 64: 31 ms against 11),
and a 64-token greedy decode of 64 GSM8K questions took 18.9 s against 11.4 (bench/eval_full_test_split.py compares
the two on the same questions in one run). `torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU backend
emits for a linear layer, computes the same float32 product, summed in another order: every weight, activation and
output stays float32 (unlike torch.backends.mkldnn.matmul.fp32_precision = "bf16", which on CPUs with AMX rounds the
inputs to bfloat16, and which also slowed SDPA's attention here 2.4x).

Only for generation: the layer is swapped by class, in place, on a model that is never trained afterwards.
"""

from __future__ import annotations

import torch
from torch import nn


class OneDNNLinear(nn.Linear):
    """nn.Linear whose float32 product runs in oneDNN; same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise is not None
    except (AttributeError, RuntimeError):  # a torch build without oneDNN, or without this op
        return False


def use_onednn(model: nn.Module) -> int:
    """Make every float32 nn.Linear of `model` that sits on the CPU a OneDNNLinear; how many were changed (0 where
    oneDNN is missing). Subclasses of nn.Linear (adapters, quantized layers) are left as they are."""
    if not available():
        return 0
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu":
            module.__class__ = OneDNNLinear
            n += 1
    return n

"""The gated MLP's `act(gate) * up` as one autograd step that keeps less for the backward, the same values.

Llama-style MLPs (SmolLM2, Gemma 3, Qwen, Mistral) compute `down(act(gate(x)) * up(x))`. Autograd keeps `gate` for
the activation's backward and both `act(gate)` and `up` for the product's: three (tokens x intermediate) tensors a
layer, a third of a training step's saved tensors on SmolLM2 (bench/results/train_saved_tensors_cpu.json: 495 of
1,427 MB at 8 rows per forward). ActTimesUp keeps `gate` and `up` and makes `act(gate)` again in the backward, as
Liger's fused SwiGLU does on a GPU; the backward runs the activation's own autograd, so the gradients are the same
numbers.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

# The forward ActTimesUp stands in for, as transformers writes it (LlamaMLP, Gemma3MLP, Qwen2MLP, MistralMLP...).
# A class whose forward reads otherwise keeps its own.
GATED_FORWARD = "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"


class ActTimesUp(torch.autograd.Function):
    """act(gate) * up; saves gate and up only."""

    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            g = gate.detach().requires_grad_()
            a = ctx.act(g)
        (grad_gate,) = torch.autograd.grad(a, g, grad * up)
        return grad_gate, grad * a.detach(), None


def gated_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(ActTimesUp.apply(mlp.gate_proj(x), mlp.up_proj(x), mlp.act_fn))


def is_gated_mlp(module: nn.Module) -> bool:
    """Whether `module`'s forward is GATED_FORWARD (read from its class's source)."""
    if not all(hasattr(module, k) for k in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return GATED_FORWARD.replace(" ", "") in "".join(source.split())


def fuse_gated_mlps(model: nn.Module) -> int:
    """Run every gated MLP of `model` through ActTimesUp (an instance forward; the weights are untouched, so
    adapters save and load as before). Returns how many."""
    n = 0
    for module in model.modules():
        if is_gated_mlp(module):
            module.forward = gated_forward.__get__(module)
            n += 1
    return n

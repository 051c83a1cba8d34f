"""Stop training on a numerical fault before it reaches the weights or a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from mathtune.errors import MathtuneError


class NonFiniteGuard(TrainerCallback):
    """Before every optimizer step, check the trainable (LoRA) gradients; a NaN or an infinity stops training
    with the weights not updated, so every checkpoint already written is still a good one."""

    def __init__(self, checkpoints: Path):
        self.checkpoints = Path(checkpoints)
        self.last_loss = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, p in model.named_parameters():
            if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all():
                step = state.global_step + 1
                saved = sorted(self.checkpoints.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]))
                where = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint had been written yet"
                loss = "" if self.last_loss is None or math.isfinite(self.last_loss) else f", loss {self.last_loss}"
                raise MathtuneError(
                    f"training stopped at step {step}: non-finite gradient in {name}{loss}; the weights were not "
                    f"updated and {where} (lower train.learning_rate, or check the data, then rerun)"
                )

"""The training loss on answer tokens only: the vocabulary projection runs only where a label is scored.

TRL 1.16's fused LM head projects only the scored positions on Triton devices; elsewhere (a CPU) it projects every
position, prompt included, computes the entropy of each, and does its backward products in float32. Here the model
is asked for logits at the scored positions alone (`logits_to_keep` with their indices), and the cross-entropy runs
over those in float32, in chunks, so that no (tokens x vocabulary) float32 tensor outlives its chunk. Token accuracy
(whether the label is the argmax) comes from the same logits; the entropy, a metric mathtune does not log, is not
computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

CHUNK = 1024  # scored tokens per cross-entropy chunk: a 1024 x 49152 float32 block is 200 MB


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token has a label, in any row of the batch (the logits the loss needs)."""
    return (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)


def completion_loss(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the answer tokens, their count, how many of them are the argmax)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    inputs.pop("completion_mask", None)
    keep = scored_positions(labels)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (batch, len(keep), vocab)
    targets = labels[:, keep + 1].reshape(-1)
    logits = logits.reshape(-1, logits.shape[-1])
    total = logits.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(targets), CHUNK):
        chunk, target = logits[start : start + CHUNK], targets[start : start + CHUNK]
        total = total + F.cross_entropy(chunk.float(), target, ignore_index=-100, reduction="sum")
        with torch.no_grad():
            correct += ((chunk.argmax(-1) == target) & (target != -100)).sum()
    return total, (targets != -100).sum(), correct


class TokensInState:
    """Trainer mixin: TRL counts the trained tokens in the trainer (num_tokens in the logs) and starts again from 0
    on a resume. Here the count is also kept in TrainerState, which every checkpoint saves, so a resumed run goes on
    counting from its checkpoint's figure (train.json's tokens, metrics.jsonl's)."""

    def training_step(self, *args, **kwargs):
        if self.state.num_input_tokens_seen > self._total_train_tokens:  # resumed: the checkpoint's count
            self._total_train_tokens = self.state.num_input_tokens_seen
        loss = super().training_step(*args, **kwargs)
        self.state.num_input_tokens_seen = self._total_train_tokens
        return loss


class CountingSFTTrainer(TokensInState, SFTTrainer):
    """TRL's SFTTrainer with its token count kept across resumes (the GPU path)."""


class CompletionLossTrainer(TokensInState, SFTTrainer):
    """SFTTrainer whose loss is completion_loss: the same loss (token sum over the step's token count), the same
    logged metrics (loss, mean_token_accuracy, num_tokens), less work per step on a CPU."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        inputs = dict(inputs)
        pad_tokens = inputs.pop("pad_tokens", 0)  # train.pad_to_multiple_of's padding row (packing.pad_packed)
        total, count, correct = completion_loss(model, inputs)
        loss = total / (num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the token count is global
        count, correct = self.accelerator.gather_for_metrics(torch.stack([count, correct]).view(1, 2)).sum(0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += self._tokens_in(inputs, pad_tokens)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"loss": loss}) if return_outputs else loss

    def _tokens_in(self, inputs, pad_tokens: int = 0) -> int:
        """Non-padding tokens of the micro-batch, all processes (what TRL counts: the mask sum, or the packed length,
        less the padding row pad_packed appended)."""
        local = (
            inputs["attention_mask"].sum()
            if "attention_mask" in inputs
            else inputs["position_ids"].new_tensor(inputs["position_ids"].size(1) - pad_tokens)
        )
        return int(self.accelerator.gather_for_metrics(local.view(1)).sum().item())

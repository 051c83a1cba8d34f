"""The training loss on answer tokens only: the vocabulary projection runs only where a label is scored.

TRL 1.16's fused LM head projects only the scored positions on Triton devices; elsewhere (a CPU) it projects every
position, prompt included, computes the entropy of each, and does its backward products in float32. Here the model
is asked for logits at the scored positions alone (`logits_to_keep` with their indices), and the cross-entropy runs
over those in float32, in chunks, so that no (tokens x vocabulary) float32 tensor outlives its chunk. Token accuracy
(whether the label is the argmax) comes from the same logits; the entropy, a metric mathtune does not log, is not
computed.

With a frozen head (LoRA leaves it alone), the projection and the cross-entropy are one autograd step,
linear_cross_entropy, as Liger's fused linear cross-entropy does them on a GPU: each chunk's logits are made, scored
and differentiated in the forward, and only the gradient with respect to the hidden states (a hidden-size row per
token) waits for the backward. Unfused, autograd keeps every chunk's float32 log-probabilities until the backward,
which then makes two more such tensors: 196 kB per answer token on SmolLM2 (49,152 words), the largest single item
of a training step's peak memory (bench/results/train_saved_tensors_cpu.json).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from mathtune.train.lora import compute_dtype

CHUNK = 1024  # scored tokens per cross-entropy chunk: a 1024 x 49152 float32 block is 200 MB
# The same in linear_cross_entropy, which has three such blocks of a chunk alive at once (256: 3.01 GB peak over the
# training bench's 32 steps, 128: 2.92, bench/results/train_head_chunk_*_cpu.json).
FUSED_CHUNK = 128
# linear_cross_entropy's last chunk is padded to a multiple of this many rows (no label, so no loss and no gradient):
# in bf16 the CPU keeps a compiled kernel per product shape (oneDNN), and a last chunk of every length made new ones
# on every step (8 rows per forward: 2.77 GB peak over 8 steps, 3.07 over 32).
CHUNK_ROWS_MULTIPLE = 64


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token has a label, in any row of the batch (the logits the loss needs)."""
    return (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)


def argmax_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many rows of `logits` have their target (not -100) as argmax, first index winning a tie as argmax's does.
    Two maxima (amax) instead of argmax, which runs 8x slower on a CPU: the target's logit is the maximum, and no
    other is, unless the maximum without it is as high; those rare ties go to argmax. `logits` is restored."""
    scored = targets != -100
    index = targets.clamp(min=0).unsqueeze(1)
    own = logits.gather(1, index)
    best = logits.amax(-1, keepdim=True)
    hit = (own == best) & scored.unsqueeze(1)
    others = logits.scatter_(1, index, float("-inf")).amax(-1, keepdim=True)
    logits.scatter_(1, index, own)
    tied = (hit & (others == best)).squeeze(1).nonzero().squeeze(1)
    if len(tied):
        hit[tied] = (logits[tied].argmax(-1) == targets[tied]).unsqueeze(1)
    return hit.sum()


class LinearCrossEntropy(torch.autograd.Function):
    """(summed cross-entropy of `hidden @ weight.T` against `targets`, how many targets are the argmax), chunk by
    chunk, the gradient with respect to `hidden` made in the forward; `weight` (the head) gets none. The logits are
    those of the unfused path: bf16 products under autocast, cross-entropy in float32. The gradient is the
    cross-entropy's for a unit upstream gradient, scaled by the real one in the backward (the Trainer's division by
    the step's token count comes after): the unfused path scales first, so the two differ by bf16 rounding only."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        dtype = compute_dtype(hidden, weight)
        w = weight.to(dtype)
        total = hidden.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, len(targets), FUSED_CHUNK):
            h, target = hidden[start : start + FUSED_CHUNK], targets[start : start + FUSED_CHUNK]
            n, extra = len(target), -len(target) % CHUNK_ROWS_MULTIPLE
            if extra:
                h, target = F.pad(h, (0, 0, 0, extra)), F.pad(target, (0, extra), value=-100)
            logits = F.linear(h.to(dtype), w).float()
            correct += argmax_hits(logits, target)
            logp = torch.log_softmax(logits, -1)
            del logits
            total += F.nll_loss(logp, target, ignore_index=-100, reduction="sum")
            if grad is not None:
                g = logp.exp_()  # softmax - one-hot: the gradient of each token's cross-entropy by its logits
                scored = target != -100
                g[scored, target[scored]] -= 1
                unscored = (~scored[:n]).nonzero().squeeze(1)  # none in a packed batch: indexing rows beats a mask
                if len(unscored):
                    g[unscored] = 0
                grad[start : start + n] = (g.to(dtype) @ w)[:n].to(hidden.dtype)  # padding rows dropped
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, grad_correct):
        (grad,) = ctx.saved_tensors
        return (grad * grad_total.to(grad.dtype) if grad is not None else None), None, None


# Config fields by which a model changes its logits after the head (Gemma 2's soft-capping, Cohere's and Granite's
# scaling): linear_cross_entropy would leave that out, so such a model keeps the unfused path.
AFTER_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def fusable_head(model):
    """The model's output projection if linear_cross_entropy can stand in for it (a plain frozen Linear without
    bias, logits used as it makes them), else None. `model` may be wrapped by DDP (`.module`) or PEFT."""
    model = getattr(model, "module", model)
    head = model.get_output_embeddings()
    plain = type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
    untouched = all(getattr(model.config, k, None) in (None, 1, 1.0) for k in AFTER_HEAD)
    return head if plain and untouched else None


@contextmanager
def head_outputs_hidden(head):
    """Context: `head` returns its input unchanged, so that the model's `logits` are the final hidden states at the
    positions asked for (the model's own forward and hooks still run: DDP, PEFT)."""
    head.forward = lambda x: x
    try:
        yield
    finally:
        del head.forward


def completion_loss(model, inputs: dict, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the answer tokens, their count, how many of them are the argmax). `fused`: through
    linear_cross_entropy where the head allows it (fusable_head)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    inputs.pop("completion_mask", None)
    keep = scored_positions(labels)
    targets = labels[:, keep + 1].reshape(-1)
    head = fusable_head(model) if fused else None
    if head is not None:
        with head_outputs_hidden(head):
            hidden = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (batch, len(keep), hidden)
        total, correct = LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets)
        return total, (targets != -100).sum(), correct
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (batch, len(keep), vocab)
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
        # Under the Trainer's autocast: accelerate casts inside the model's forward only, and linear_cross_entropy's
        # head product, outside it, ran in float32 (3x the bf16 product's time on this CPU). torch.compile traces
        # the head's own forward: the unfused path there.
        with self.accelerator.autocast():
            total, count, correct = completion_loss(model, inputs, fused=not self.args.torch_compile)
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

"""Packed rows (train.batching: packed): a batch's rows concatenated into one sequence, each attending only to itself.

TRL's padding-free collator concatenates the rows and passes `cu_seq_lens_q`, the row boundaries. transformers'
own SDPA path turns them into a dense block-diagonal mask (sequence x sequence), which sends SDPA off its causal
fast path and computes every row against every other row only to mask the result. Here attention runs once per
row, causal, unmasked: the linear layers see one big matrix (the packed sequence), attention sees each row alone.
Registered with transformers' AttentionInterface, so the model code is unchanged; a custom name gets no mask built.

With train.pad_to_multiple_of, the packed sequence ends in a padding row that brings it to a multiple of that many
tokens, and each row's attention runs on its tokens followed by zeros up to such a multiple. Causal attention keeps
every real token blind to what comes after it, so neither padding changes a real token's output. It is there for
the shapes: the CPU keeps a kernel-cache entry per matrix-product shape and per attention length for the life of
the process (oneDNN's primitives, ideep's descriptors, ATen's brgemm kernels), and packed rows of every length
otherwise make new ones on every step.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "sdpa_packed"


def row_bounds(cu_seq_lens: torch.Tensor | None, position_ids: torch.Tensor | None, length: int) -> list[int]:
    """Row start offsets and the end, from TRL's cu_seq_lens or, failing that, from where position_ids restart."""
    if cu_seq_lens is not None:
        return cu_seq_lens.tolist()
    if position_ids is None:
        return [0, length]
    starts = (position_ids[0] == 0).nonzero().squeeze(1).tolist()
    return sorted(set(starts) | {0}) + [length]


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, multiple=None, **kwargs):
    """SDPA per row of a packed batch (batch dimension 1), each row padded to `multiple` tokens if set; with a mask
    or a cache (generation), plain SDPA."""
    bounds = row_bounds(kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"), query.shape[2])
    if attention_mask is not None or query.shape[0] != 1 or key.shape[2] != query.shape[2] or len(bounds) == 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    rows = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        extra = -(b - a) % multiple if multiple else 0  # zeros after the row: causal, it cannot see them
        q, k, v = (F.pad(t[:, :, a:b], (0, 0, 0, extra)) if extra else t[:, :, a:b] for t in (query, key, value))
        out = sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
        rows.append(out[:, : b - a])
    return torch.cat(rows, dim=1), None  # (batch, sequence, heads, head_dim), as sdpa_attention_forward returns


def pad_packed(batch: dict, multiple: int, pad_id: int) -> dict:
    """TRL's padding-free batch (one row of concatenated rows) with a padding row appended that brings its length to
    a multiple of `multiple`: pad tokens, positions from 0, no labels. `pad_tokens` says how many, for the token
    count; the model never sees that key (train/loss.py takes it out)."""
    n = batch["input_ids"].shape[1]
    k = -n % multiple
    batch = dict(batch, pad_tokens=k)
    if k == 0:
        return batch
    tail = {"input_ids": pad_id, "labels": -100}
    for key, value in tail.items():
        batch[key] = torch.cat([batch[key], batch[key].new_full((1, k), value)], dim=1)
    batch["position_ids"] = torch.cat([batch["position_ids"], torch.arange(k).view(1, k)], dim=1)
    if "seq_idx" in batch:  # the row index of every token
        rows = int(batch["seq_idx"].max()) + 1
        batch["seq_idx"] = torch.cat([batch["seq_idx"], batch["seq_idx"].new_full((1, k), rows)], dim=1)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        if key in batch:
            batch[key] = torch.cat([batch[key], batch[key].new_tensor([n + k])])
    for key in ("max_length_q", "max_length_k"):
        if key in batch:
            batch[key] = max(batch[key], k)
    return batch


def use_packed_attention(model, multiple: int | None = None) -> None:
    """Switch `model` (a transformers model, or PEFT's wrapper of one) to per-row attention over packed rows, each
    row padded to `multiple` tokens if set."""
    name = f"{NAME}_{multiple}" if multiple else NAME
    AttentionInterface.register(name, functools.partial(packed_attention, multiple=multiple))
    model.set_attn_implementation(name)

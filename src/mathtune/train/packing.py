"""Packed rows (train.batching: packed): a batch's rows concatenated into one sequence, each attending only to itself.

TRL's padding-free collator concatenates the rows and passes `cu_seq_lens_q`, the row boundaries. transformers'
own SDPA path turns them into a dense block-diagonal mask (sequence x sequence), which sends SDPA off its causal
fast path and computes every row against every other row only to mask the result. Here attention runs once per
row, causal, unmasked: the linear layers see one big matrix (the packed sequence), attention sees each row alone.
Registered with transformers' AttentionInterface, so the model code is unchanged; a custom name gets no mask built.
"""

from __future__ import annotations

import torch
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


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA per row of a packed batch (batch dimension 1); with a mask or a cache (generation), plain SDPA."""
    bounds = row_bounds(kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"), query.shape[2])
    if attention_mask is not None or query.shape[0] != 1 or key.shape[2] != query.shape[2] or len(bounds) == 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    rows = [
        sdpa_attention_forward(
            module,
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            None,
            dropout=dropout,
            scaling=scaling,
            is_causal=True,
        )[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(rows, dim=1), None  # (batch, sequence, heads, head_dim), as sdpa_attention_forward returns


def use_packed_attention(model) -> None:
    """Switch `model` (a transformers model, or PEFT's wrapper of one) to per-row attention over packed rows."""
    AttentionInterface.register(NAME, packed_attention)
    model.set_attn_implementation(NAME)

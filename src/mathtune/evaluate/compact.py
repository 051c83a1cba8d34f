"""Greedy decoding with no work spent on padding or on finished answers (eval.kv_cache: compact).

`model.generate` on a batch pays three times for rows it does not need: the prefill runs every prompt at the
longest prompt's length, a static KV cache makes every step's attention read the whole preallocated buffer, and
rows that have already ended keep being computed until the last one ends. Measured on SmolLM2 with 64 GSM8K
questions on 2 CPU cores (bench/results/eval_throughput.json), the padded prefill alone was a quarter of the time.
This loop:
  - prefills the prompts in chunks of similar length (sorted), then places each chunk's keys and values in one
    left-padded buffer, exactly where a batched prefill would have put them (same positions, same mask);
  - keeps the buffer preallocated (no copy per step), but lets attention read only its filled prefix;
  - drops finished rows from the batch (and the buffer) once enough of them have ended.
Greedy only (argmax, as generate's greedy search); sampling goes through `model.generate`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer

PREFILL_CHUNK = 8  # prompts per prefill pass: little padding, still a matrix-sized batch
DROP_WHEN_ALIVE = 0.97  # compact the batch once fewer than this share of its rows are still generating


class PrefixLayer(StaticLayer):
    """StaticLayer's preallocated buffer, filled in place; attention reads the filled prefix only, and rows can go."""

    is_compileable = False

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        n = int(self.cumulative_length)
        return keys[:, :, :n], values[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return int(self.get_seq_length()) + query_length, 0

    def keep_rows(self, rows: torch.Tensor) -> None:
        n = int(self.cumulative_length)  # only the filled prefix is worth copying
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty((len(rows), *old.shape[1:]))
            new[:, :, :n] = old[rows, :, :n]
            setattr(self, name, new)


def supports(model) -> bool:
    """Layers that all attend to the full past: a sliding-window layer needs the cache that knows its window."""
    config = model.config.get_text_config()
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return types == {"full_attention"} and not getattr(config, "sliding_window", None)


def _cache(model, max_len: int) -> Cache:
    n_layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[PrefixLayer(max_cache_len=max_len) for _ in range(n_layers)])


def _prefill(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int):
    """Every prompt's keys and values in one left-padded cache, computed a chunk of similar lengths at a time.
    Returns (cache, attention mask, next positions, logits of each prompt's last token)."""
    from mathtune.evaluate.generate import left_pad

    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    _, mask = left_pad(prompts, pad_id)
    mask = mask.to(device)
    big = _cache(model, width + max_new_tokens)
    last = []
    for start in range(0, len(prompts), PREFILL_CHUNK):  # prompts arrive longest first
        ids, m = left_pad(prompts[start : start + PREFILL_CHUNK], pad_id)
        ids, m = ids.to(device), m.to(device)
        small = _cache(model, ids.shape[1])
        pos = (m.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=m, position_ids=pos, cache=small, logits_to_keep=1)
        last.append(out.logits[:, -1])
        rows = slice(start, start + ids.shape[0])
        for layer, chunk in zip(big.layers, small.layers):
            if not layer.is_initialized:
                b = len(prompts)
                layer.lazy_initialization(chunk.keys[:1].expand(b, -1, -1, -1), chunk.values[:1].expand(b, -1, -1, -1))
            # Left padding: a chunk padded to its own width sits at the right end of the full width.
            layer.keys[rows, :, width - ids.shape[1] : width] = chunk.keys
            layer.values[rows, :, width - ids.shape[1] : width] = chunk.values
    for layer in big.layers:
        layer.cumulative_length.fill_(width)
    return big, mask, mask.sum(-1), torch.cat(last)


@torch.inference_mode()
def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stops: list[int], pad_id: int,
           stop_strings=()) -> list[list[int]]:
    """Each prompt's generated tokens, up to and including its end token (or the stop string's token, or the limit).
    `prompts` longest first (their order is kept in the result)."""
    cache, mask, next_pos, logits = _prefill(model, prompts, pad_id, max_new_tokens)
    stop_ids = torch.tensor(stops, device=logits.device)
    rows = torch.arange(len(prompts), device=logits.device)  # which prompt each batch row answers
    alive = torch.ones(len(prompts), dtype=torch.bool, device=logits.device)
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        for r, t in zip(rows[alive].tolist(), token[alive].tolist()):
            out[r].append(t)
        ended = torch.isin(token, stop_ids)
        if stop_strings:
            ended |= torch.tensor([bool(a) and _has_stop(tokenizer, out[r], stop_strings)
                                   for r, a in zip(rows.tolist(), alive.tolist())], device=alive.device)
        alive &= ~ended
        if not alive.any() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        if alive.sum() < DROP_WHEN_ALIVE * len(rows):
            keep = alive.nonzero().squeeze(1)
            for layer in cache.layers:
                layer.keep_rows(keep)
            rows, token, mask, next_pos, alive = rows[keep], token[keep], mask[keep], next_pos[keep], alive[keep]
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       cache=cache).logits[:, -1]
        next_pos = next_pos + 1
    return out


def _has_stop(tokenizer, tokens: list[int], stop_strings) -> bool:
    text = tokenizer.decode(tokens[-16:], skip_special_tokens=False)  # a stop string is a few tokens long
    return any(s in text for s in stop_strings)

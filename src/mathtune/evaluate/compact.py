"""Greedy decoding with no work spent on padding or on finished answers (eval.decoder: compact), behind the
decoding seam (evaluate/decoder.py).

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

It leans on transformers internals: a StaticLayer's preallocated `keys`/`values`, its `cumulative_length` and
`lazy_initialization`, `get_mask_sizes`, and `Cache(layers=...)`. They are used here only, and
tests/test_generate.py::test_transformers_internals_the_compact_loop_uses fails loudly if an upgrade changes them.
"""

from __future__ import annotations

import inspect
from typing import Iterator

import torch
from transformers.cache_utils import Cache, StaticLayer

from mathtune.evaluate.calculator import Calculator
from mathtune.evaluate.decoder import Completion, Decoding, eos_ids, finish, left_pad, longest_first, pad_id
from mathtune.progress import progress

PREFILL_CHUNK = 8  # prompts per prefill pass: little padding, still a matrix-sized batch
DROP_WHEN_ALIVE = 0.97  # compact the batch once fewer than this share of its rows are still generating
# A prefix every prompt shares is computed once when it is at least this long: a few-shot protocol's examples (~800
# tokens), not the chat template's ~30 tokens, whose batched prefill costs little and stays exactly generate's.
SHARED_PREFIX_MIN = 64


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


def decode(
    model,
    tokenizer,
    prompts: list[list[int]],
    d: Decoding,
    batch_size: int,
    desc: str,
) -> Iterator[tuple[int, list[Completion]]]:
    """The seam's greedy decoding: batches of similar lengths (longest first), each through `greedy`. When every
    prompt starts with the same SHARED_PREFIX_MIN or more tokens (a few-shot protocol's examples), their keys and
    values are computed once and copied into every batch instead of being recomputed for each question."""
    stops = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, stops)
    shared = shared_prefix(prompts)
    prefix = _prefix_cache(model, prompts[0][:shared]) if shared else None
    order = longest_first(prompts)
    bar = progress(len(prompts), desc, "questions")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        calc = Calculator(tokenizer) if d.calculator else None
        new = greedy(
            model, tokenizer, [prompts[i][shared:] for i in idx], d.max_new_tokens, stops, pad, d.stop, prefix, calc
        )
        for j, i in enumerate(idx):
            calls = calc.calls.get(j, ()) if calc else ()
            yield i, [finish(new[j], tokenizer, stops, pad, d.stop, d.max_new_tokens, calls)]
        bar.update(len(idx))
    bar.close()


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares (leaving each at least one of its own), or 0 below
    SHARED_PREFIX_MIN: a chat template's few shared tokens are not worth a path of their own."""
    if len(prompts) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return n if n >= SHARED_PREFIX_MIN else 0


@torch.inference_mode()
def _prefix_cache(model, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The shared prefix's keys and values, per layer, for one row."""
    device = next(model.parameters()).device
    cache = _cache(model, len(prefix))
    model(input_ids=torch.tensor([prefix], device=device), **_with_cache(model, cache), logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def supports(model) -> bool:
    """Layers that all attend to the full past: a sliding-window layer needs the cache that knows its window."""
    config = model.config.get_text_config()
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return types == {"full_attention"} and not getattr(config, "sliding_window", None)


def _with_cache(model, cache: Cache) -> dict:
    """The forward's keyword for the cache: `cache` since transformers renamed `past_key_values` (a deprecated alias
    until 5.40); `past_key_values` before (5.17, the GPU image's, ignores `cache` and would fill nothing)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return {name: cache}


def _cache(model, max_len: int) -> Cache:
    n_layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[PrefixLayer(max_cache_len=max_len) for _ in range(n_layers)])


def _prefill(model, prompts: list[list[int]], pad: int, max_new_tokens: int, prefix=None):
    """Every prompt's keys and values in one left-padded cache, computed a chunk of similar lengths at a time.
    With a shared prefix (its per-layer keys and values), `prompts` are what follows it, and each row of the cache
    is [prefix][left padding][its own tokens]: the positions and the mask are those of the whole prompt.
    Returns (cache, attention mask, next positions, logits of each prompt's last token)."""
    shared = prefix[0][0].shape[2] if prefix else 0
    width = shared + max(len(p) for p in prompts)
    device = next(model.parameters()).device
    _, own = left_pad(prompts, pad)
    mask = torch.cat([own.new_ones(len(prompts), shared), own], dim=1).to(device)
    big = _cache(model, width + max_new_tokens)
    last = []
    for start in range(0, len(prompts), PREFILL_CHUNK):  # prompts arrive longest first
        ids, m = left_pad(prompts[start : start + PREFILL_CHUNK], pad)
        ids, m = ids.to(device), m.to(device)
        small = _cache(model, shared + ids.shape[1])
        if prefix:
            for layer, (k, v) in zip(small.layers, prefix):
                layer.lazy_initialization(k.expand(len(ids), -1, -1, -1), v.expand(len(ids), -1, -1, -1))
                layer.keys[:, :, :shared] = k
                layer.values[:, :, :shared] = v
                layer.cumulative_length.fill_(shared)
            m = torch.cat([m.new_ones(len(ids), shared), m], dim=1)
        pos = (m.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        out = model(input_ids=ids, attention_mask=m, position_ids=pos, **_with_cache(model, small), logits_to_keep=1)
        last.append(out.logits[:, -1])
        rows = slice(start, start + ids.shape[0])
        w = ids.shape[1]
        for layer, chunk in zip(big.layers, small.layers):
            if not layer.is_initialized:
                b = len(prompts)
                layer.lazy_initialization(chunk.keys[:1].expand(b, -1, -1, -1), chunk.values[:1].expand(b, -1, -1, -1))
                layer.keys[:, :, :shared] = chunk.keys[:1, :, :shared]
                layer.values[:, :, :shared] = chunk.values[:1, :, :shared]
            # Left padding: a chunk padded to its own width sits at the right end of the full width.
            layer.keys[rows, :, width - w : width] = chunk.keys[:, :, shared : shared + w]
            layer.values[rows, :, width - w : width] = chunk.values[:, :, shared : shared + w]
    for layer in big.layers:
        layer.cumulative_length.fill_(width)
    return big, mask, mask.sum(-1), torch.cat(last)


@torch.inference_mode()
def greedy(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    stops: list[int],
    pad: int,
    stop_strings=(),
    prefix=None,
    calc: Calculator | None = None,
) -> list[list[int]]:
    """Each prompt's generated tokens, up to and including its end token (or the stop string's token, or the limit).
    `prompts` longest first (their order is kept in the result); with `prefix` (_prefix_cache), what follows it.
    With a calculator, each row's token is the calculator's choice (the model's unless a result is forced)."""
    cache, mask, next_pos, logits = _prefill(model, prompts, pad, max_new_tokens, prefix)
    step_cache = _with_cache(model, cache)
    stop_ids = torch.tensor(stops, device=logits.device)
    rows = torch.arange(len(prompts), device=logits.device)  # which prompt each batch row answers
    alive = torch.ones(len(prompts), dtype=torch.bool, device=logits.device)
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        if calc is not None:
            token = torch.tensor(
                [calc.choose(r, t) if a else t for r, t, a in zip(rows.tolist(), token.tolist(), alive.tolist())],
                device=token.device,
            )
        for r, t in zip(rows[alive].tolist(), token[alive].tolist()):
            out[r].append(t)
        ended = torch.isin(token, stop_ids)
        if stop_strings:
            ended |= torch.tensor(
                [bool(a) and _has_stop(tokenizer, out[r], stop_strings) for r, a in zip(rows.tolist(), alive.tolist())],
                device=alive.device,
            )
        alive &= ~ended
        if not alive.any() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        if alive.sum() < DROP_WHEN_ALIVE * len(rows):
            keep = alive.nonzero().squeeze(1)
            for layer in cache.layers:
                layer.keep_rows(keep)
            rows, token, mask, next_pos, alive = rows[keep], token[keep], mask[keep], next_pos[keep], alive[keep]
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None], **step_cache)
        logits = logits.logits[:, -1]
        next_pos = next_pos + 1
    return out


def _has_stop(tokenizer, tokens: list[int], stop_strings) -> bool:
    text = tokenizer.decode(tokens[-16:], skip_special_tokens=False)  # a stop string is a few tokens long
    return any(s in text for s in stop_strings)

"""Batched greedy generation: prompts sorted by length, left padding, KV cache, per-sequence stop."""

from __future__ import annotations

from typing import Iterator

import torch
from tqdm import tqdm


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and whatever the model's generation config adds."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    stop_strings: list[str] = (),
    desc: str = "generating",
    k: int = 1,
    sampling: dict | None = None,
    kv_cache: str = "static",
) -> Iterator[tuple[int, list[tuple[str, int, bool]]]]:
    """Yield (prompt index, [(completion text, generated tokens, truncated)] * k) for every prompt, a batch at a time.

    Greedy when `sampling` is None; else k samples per prompt with sampling = {temperature, top_p, seed}
    (the seed is reset per batch, so a resumed evaluation draws the same samples).
    Longest prompts go first, so a batch that does not fit in memory fails at once, not at the end.
    truncated: the answer hit max_new_tokens without an end token or stop string.
    kv_cache: "compact" (greedy: evaluate/compact.py's loop, no work on padding or finished rows), "static" (one
    buffer of prompt + max_new_tokens per batch, no copying while decoding) or "dynamic" (transformers' default).
    compact falls back to static for sampling and for models with sliding-window layers.
    """
    from mathtune.evaluate import compact

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    stops = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    per_batch = max(1, batch_size // k)  # about batch_size sequences in flight either way
    decoding = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if sampling:
        decoding = dict(do_sample=True, temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=None)
    use_compact = kv_cache == "compact" and not sampling and compact.supports(model)
    bar = tqdm(total=len(prompts), desc=desc, unit="q")
    for start in range(0, len(order), per_batch):
        idx = order[start : start + per_batch]
        if use_compact:
            new = compact.greedy(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, stops, pad_id, stop_strings)
            for j, i in enumerate(idx):
                yield i, [_finish(new[j], tokenizer, stops, pad_id, stop_strings, max_new_tokens)]
            bar.update(len(idx))
            continue
        ids, mask = left_pad([prompts[i] for i in idx], pad_id)
        if sampling:
            torch.manual_seed(sampling["seed"] + start)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            eos_token_id=stops,
            pad_token_id=pad_id,
            stop_strings=list(stop_strings) or None,
            tokenizer=tokenizer if stop_strings else None,
            cache_implementation=None if kv_cache == "dynamic" else "static",
            # transformers compiles the forward on a GPU when the cache is static; every batch has its own
            # prompt length, hence cache shape, so that would recompile per batch: off.
            disable_compile=True,
            **decoding,
        )
        new = out[:, ids.shape[1] :].tolist()
        for j, i in enumerate(idx):
            yield i, [_finish(t, tokenizer, stops, pad_id, stop_strings, max_new_tokens) for t in new[j * k : (j + 1) * k]]
        bar.update(len(idx))
    bar.close()


def _finish(tokens: list[int], tokenizer, stops: list[int], pad_id: int, stop_strings, max_new_tokens: int):
    """Cut one sequence at its end token; pad tokens after it belong to the batch, not the answer."""
    n = len(tokens)
    while n and tokens[n - 1] == pad_id and pad_id not in stops:  # finished early on a stop string
        n -= 1
    ended = False
    for j, t in enumerate(tokens):
        if t in stops:
            n, ended = j + 1, True
            break
    text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
    for s in stop_strings:
        if s in text:
            text, ended = text.split(s, 1)[0], True
    return text, n, (not ended and n >= max_new_tokens)

"""The decoding seam: token-id prompts in; for each prompt, k completions with their generated-token counts and
truncation flags out. Every engine sits behind it, and so does anything that changes what is decoded.

Engines (eval.decoder):
  compact  mathtune's greedy loop (evaluate/compact.py): no work on padding or on finished answers;
  static   transformers' model.generate with a preallocated KV cache (evaluate/generate.py); also the compact
           loop's stand-in for sampling and for sliding-window models;
  dynamic  model.generate with transformers' default, growing cache;
  vllm     vLLM's engine (evaluate/vllm_backend.py), optional, on a GPU.
The evaluation stage only builds prompts and grades completions; it never sees which engine ran.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple


class Completion(NamedTuple):
    text: str  # decoded, cut at the end token or the first stop string
    tokens: int  # generated tokens, up to and including the end token
    truncated: bool  # hit max_new_tokens without an end token or a stop string
    calculator_calls: tuple = ()  # with Decoding.calculator: ({expr, value}, ...) in the order they were made


@dataclass(frozen=True)
class Decoding:
    """What to decode, the same whatever the engine."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()
    k: int = 1  # completions per prompt
    sampling: dict | None = None  # {temperature, top_p, seed}; None: greedy
    calculator: bool = False  # evaluate/calculator.py: results of <<EXPR= forced (greedy, compact or static)


def sample_seed(seed: int, question_id: str) -> int:
    """A question's sampling seed: from its id, not its position, so a resumed evaluation draws the same samples."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{question_id}".encode()).digest()[:4], "little")


def decode(
    engine: str,
    model,
    tokenizer,
    prompts: list[list[int]],
    ids: list[str],
    decoding: Decoding,
    batch_size: int,
    desc: str = "generating",
) -> Iterator[tuple[int, list[Completion]]]:
    """Yield (prompt index, [Completion] * k) for every prompt, in any order. `model` is a transformers model,
    or for vllm the vllm.LLM; ids are the questions' ids (sampling seeds)."""
    if decoding.calculator and (engine == "vllm" or decoding.sampling):
        raise ValueError("the calculator decodes greedily with the compact or static decoder")
    if engine == "vllm":
        from mathtune.evaluate import vllm_backend

        yield from vllm_backend.decode(model, prompts, ids, decoding)
        return
    from mathtune.evaluate import compact, generate

    if engine == "compact" and decoding.sampling is None and compact.supports(model):
        yield from compact.decode(model, tokenizer, prompts, decoding, batch_size, desc)
    else:
        yield from generate.decode(
            model,
            tokenizer,
            prompts,
            ids,
            decoding,
            batch_size,
            desc,
            cache="dynamic" if engine == "dynamic" else "static",
        )


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and whatever the model's generation config adds."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def pad_id(tokenizer, stops: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]


def left_pad(batch: list[list[int]], pad: int):
    import torch

    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def finish(
    tokens: list[int], tokenizer, stops: list[int], pad: int, stop_strings, max_new_tokens: int, calls=()
) -> Completion:
    """Cut one generated sequence at its end token; pad tokens after it belong to the batch, not the answer."""
    n = len(tokens)
    while n and tokens[n - 1] == pad and pad not in stops:  # finished early on a stop string
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
    return Completion(text, n, not ended and n >= max_new_tokens, tuple(calls))


def longest_first(prompts: list[list[int]]) -> list[int]:
    """Prompt indices, longest first: a batch that does not fit in memory fails at once, not at the end."""
    return sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))

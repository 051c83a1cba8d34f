"""transformers' model.generate behind the decoding seam (eval.decoder: static or dynamic; the compact loop's stand-in
for sampling and for sliding-window models): prompts sorted by length, left padding, per-sequence stop.

Greedy batches any prompts together. Sampling decodes one question at a time, its k samples in one batch, seeded
from the question's id (decoder.sample_seed): a resumed evaluation draws the same samples, whatever was answered
before it.
"""

from __future__ import annotations

from typing import Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mathtune.evaluate.calculator import Calculator
from mathtune.evaluate.decoder import (
    Completion,
    Decoding,
    eos_ids,
    finish,
    left_pad,
    longest_first,
    pad_id,
    sample_seed,
)
from mathtune.progress import progress


@torch.inference_mode()
def decode(
    model,
    tokenizer,
    prompts: list[list[int]],
    ids: list[str],
    d: Decoding,
    batch_size: int,
    desc: str,
    cache: str = "static",
) -> Iterator[tuple[int, list[Completion]]]:
    stops = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, stops)
    order = longest_first(prompts)
    per_batch = 1 if d.sampling else batch_size
    bar = progress(len(prompts), desc, "questions")
    for start in range(0, len(order), per_batch):
        idx = order[start : start + per_batch]
        if d.sampling:
            torch.manual_seed(sample_seed(d.sampling["seed"], ids[idx[0]]))
        calc = Calculator(tokenizer) if d.calculator else None
        new = _generate(model, tokenizer, [prompts[i] for i in idx], d, stops, pad, cache, calc)
        for j, i in enumerate(idx):
            yield (
                i,
                [
                    finish(t, tokenizer, stops, pad, d.stop, d.max_new_tokens, calc.calls.get(j, ()) if calc else ())
                    for t in new[j * d.k : (j + 1) * d.k]
                ],
            )
        bar.update(len(idx))
    bar.close()


class CalculatorProcessor(LogitsProcessor):
    """The calculator in model.generate's greedy search: each row's next token is the calculator's choice given the
    model's argmax; where it differs (a forced result), every other token's score is set to -inf."""

    def __init__(self, calc: Calculator, prompt_width: int, ended: list[int]):
        self.calc, self.width, self.ended = calc, prompt_width, set(ended)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        best = scores.argmax(-1).tolist()
        generated = input_ids[:, self.width :].tolist()
        for row, token in enumerate(best):
            if self.ended.intersection(generated[row]):
                continue  # a finished row: generate pads it, whatever is chosen here
            chosen = self.calc.choose(row, token)
            if chosen != token:
                scores[row] = float("-inf")
                scores[row, chosen] = 0.0
        return scores


def _generate(
    model,
    tokenizer,
    batch: list[list[int]],
    d: Decoding,
    stops: list[int],
    pad: int,
    cache: str,
    calc: Calculator | None = None,
):
    """Generated token ids, k rows per prompt (padding after an early end included)."""
    ids, mask = left_pad(batch, pad)
    device = next(model.parameters()).device
    decoding = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if d.sampling:
        decoding = dict(do_sample=True, temperature=d.sampling["temperature"], top_p=d.sampling["top_p"], top_k=None)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=d.max_new_tokens,
        num_return_sequences=d.k,
        eos_token_id=stops,
        pad_token_id=pad,
        stop_strings=list(d.stop) or None,
        tokenizer=tokenizer if d.stop else None,
        cache_implementation=None if cache == "dynamic" else "static",
        # transformers compiles the forward on a GPU when the cache is static; every batch has its own prompt
        # length, hence cache shape, so that would recompile per batch: off.
        disable_compile=True,
        logits_processor=LogitsProcessorList([CalculatorProcessor(calc, ids.shape[1], [*stops, pad])])
        if calc
        else None,
        **decoding,
    )
    return out[:, ids.shape[1] :].tolist()

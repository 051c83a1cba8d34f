"""Generation throughput: naive one-at-a-time `generate` versus mathtune's batched engine, same process.

The embedded SmolLM2-135M-Instruct, the first N GSM8K test questions, the chat protocol, greedy decoding,
the same max_new_tokens. Tokens are generated tokens up to and including the end token, counted the same
way for both. Writes bench/results/eval_throughput.json.

    python bench/eval_throughput.py --gsm8k ../shared/data/gsm8k [--n 64] [--batch-sizes 16,32,64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from datetime import date
from pathlib import Path

import torch

from mathtune.config import load_config
from mathtune.data.sources import from_jsonl
from mathtune.evaluate.decoder import Decoding, decode, eos_ids, finish
from mathtune.evaluate.extract import extract_answer
from mathtune.evaluate.protocols import PROTOCOLS, encode_prompt
from mathtune.models import load_model, load_tokenizer
from mathtune.run import cpu_model

ROOT = Path(__file__).resolve().parents[1]


@torch.inference_mode()
def naive(model, tokenizer, prompts, max_new_tokens):
    """What a user writes first: one question at a time, no padding, no batching."""
    stops = eos_ids(model, tokenizer)
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(
            finish(gen[0, ids.shape[1] :].tolist(), tokenizer, stops, tokenizer.pad_token_id, (), max_new_tokens)
        )
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument(
        "--levers",
        default="64:float32:dynamic,64:float32:static,64:float32:compact,64:bfloat16:compact",
        help="batch_size:weights_dtype:decoder triples for the engine (eval.decoder)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_throughput.json"))
    args = ap.parse_args()

    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml")
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "left"
    model = load_model(cfg.model, "cpu").eval()
    rows = from_jsonl(Path(args.gsm8k), "test")[: args.n]
    prompts = [encode_prompt(tokenizer, PROTOCOLS["chat"], r["question"], [], cfg.model) for r in rows]

    naive_out, naive_s = timed(lambda: naive(model, tokenizer, prompts, args.max_new_tokens))
    naive_tokens = sum(n for _, n, _ in naive_out)
    naive_answers = [extract_answer(t) for t, _, _ in naive_out]
    print(f"naive: {naive_tokens} tokens in {naive_s:.1f} s = {naive_tokens / naive_s:.1f} tokens/s")

    levers = []
    for spec in args.levers.split(","):
        bs, dtype, cache = spec.split(":")
        bs = int(bs)
        # A copy in the lever's dtype: the naive baseline's float32 weights stay untouched.
        engine_model = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))

        def run(bs=bs, m=engine_model, cache=cache, label=f"batch {bs} {dtype} {cache}"):
            got = [None] * len(prompts)
            ids = [r["id"] for r in rows]
            for i, [res] in decode(cache, m, tokenizer, prompts, ids, Decoding(args.max_new_tokens), bs, label):
                got[i] = res
            return got

        out, secs = timed(run)
        tokens = sum(n for _, n, _ in out)
        answers = [extract_answer(t) for t, _, _ in out]
        differ = [rows[i]["id"] for i, (a, b) in enumerate(zip(answers, naive_answers)) if a != b]
        levers.append(
            {
                "batch_size": bs,
                "dtype": dtype,
                "kv_cache": cache,
                "seconds": round(secs, 2),
                "tokens": tokens,
                "tokens_per_s": round(tokens / secs, 2),
                "identical_answers": len(prompts) - len(differ),
                "differing_ids": differ,
            }
        )
        print(
            f"batch {bs} {dtype} {cache}: {tokens} tokens in {secs:.1f} s = {tokens / secs:.1f} tokens/s, "
            f"{len(differ)} answers differ"
        )

    # The engine's figure: the fastest setting that keeps at least n-1 answers identical to the naive run.
    faithful = [x for x in levers if x["identical_answers"] >= len(prompts) - 1] or levers
    best = max(faithful, key=lambda x: x["tokens_per_s"])
    result = {
        "benchmark": "eval_throughput",
        "model": cfg.model.name,
        "protocol": "chat",
        "n": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "naive_tokens_per_s": round(naive_tokens / naive_s, 2),
        "naive_seconds": round(naive_s, 2),
        "naive_tokens": naive_tokens,
        "engine_tokens_per_s": best["tokens_per_s"],
        "engine_batch_size": best["batch_size"],
        "engine_dtype": best["dtype"],
        "engine_kv_cache": best["kv_cache"],
        "ratio": round(best["tokens_per_s"] / (naive_tokens / naive_s), 2),
        "identical_answers": best["identical_answers"],
        "differing_ids": best["differing_ids"],
        "levers": levers,
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "cpu": cpu_model(),
            "gpu": None,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "date": date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: result[k] for k in ("ratio", "naive_tokens_per_s", "engine_tokens_per_s", "identical_answers")})
    )


if __name__ == "__main__":
    main()

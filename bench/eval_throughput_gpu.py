"""Generation on a GPU: mathtune's compact decoder against transformers' model.generate (static cache), same batch.

A ~2B-parameter Llama-shaped model with random weights in bfloat16 (hidden 2048, 24 layers, 16 heads, 8 KV heads,
intermediate 8192, SmolLM2's tokenizer and vocabulary), the chat prompts of the first N GSM8K test questions,
greedy, the same max_new_tokens. Random weights answer nonsense, so every answer runs to the limit: a worst case for
both engines, and the same work for each. Tokens/s for each and how many answers are token for token the same.

    python bench/eval_throughput_gpu.py --gsm8k DIR [--n 64] [--max-new-tokens 128]      # on the GPU machine
    python bench/eval_throughput_gpu.py --tiny --gsm8k DIR                               # a 2-layer model on the CPU
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPE_2B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from mathtune.config import load_config
    from mathtune.data.sources import from_jsonl
    from mathtune.evaluate.decoder import Decoding, decode
    from mathtune.evaluate.protocols import PROTOCOLS, encode_prompt
    from mathtune.models import load_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on the GPU, float32 --tiny")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_throughput_gpu.json"))
    args = ap.parse_args()

    device = "cpu" if args.tiny else "cuda"
    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml")
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "left"
    shape = TINY if args.tiny else SHAPE_2B
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        **shape,
    )
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    model = LlamaForCausalLM(config).to(device, dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    rows = from_jsonl(Path(args.gsm8k), "test")[: args.n]
    prompts = [encode_prompt(tok, PROTOCOLS["chat"], r["question"], [], cfg.model) for r in rows]
    ids = [r["id"] for r in rows]
    results, answers = {}, {}
    for engine in ("static", "compact"):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = dict(decode(engine, model, tok, prompts, ids, Decoding(args.max_new_tokens), len(prompts), engine))
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokens = sum(c.tokens for [c] in out.values())
        answers[engine] = [out[i][0].text for i in range(len(prompts))]
        results[engine] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
        print(f"{engine}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s", flush=True)
    same = sum(a == b for a, b in zip(answers["static"], answers["compact"]))
    result = {
        "benchmark": "eval_throughput_gpu",
        "params": params,
        "shape": shape,
        "n": len(prompts),
        "batch_size": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "dtype": str(model.dtype),
        **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()},
        "ratio": round(results["compact"]["tokens_per_s"] / results["static"]["tokens_per_s"], 2),
        "identical_answers": same,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__,
        "date": date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio", "identical_answers", "params")}))


if __name__ == "__main__":
    main()

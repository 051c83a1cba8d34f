"""LoRA training throughput on a GPU: Gemma-2-9B's architecture with random weights, plain TRL versus mathtune.

No download: the model is built from Gemma-2-9B's config (hidden 3584, intermediate 14336, 42 layers, 16 heads,
8 KV heads, head_dim 256, vocab 256000, sliding window 4096, soft-caps 50 / 30, query_pre_attn_scalar 256:
9.24B parameters) in bfloat16 with random weights. The rows are random token ids with GSM8K's lengths (prompt and
answer token counts of the first train rows, counted with the embedded SmolLM2 tokenizer as a proxy), loss on the
answer tokens only, LoRA r=8 alpha=16 dropout 0.1 on all linear layers, batch 4, as in the reference study.

Settings, each in a process of its own (its own peak memory, nothing left over from the one before):
- baseline: plain TRL + PEFT, SFTConfig's defaults (padding, TRL's default gradient checkpointing, bf16), eager
  attention (Gemma-2's soft-capping);
- mathtune: the Trainer `mathtune train` builds on a GPU (sft_kwargs of configs/gemma2-9b-gsm8k.yaml, train/lora.py's
  LoRA model, CountingSFTTrainer);
- levers on top of mathtune, each recorded, none of them mathtune's path unless it pays: Liger's kernels
  (use_liger_kernel: RMSNorm, GeGLU, RoPE; TRL keeps its own fused LM head), train/loss.py's answer-token loss
  (CompletionLossTrainer, the CPU path), padding-free rows with flash_attention_2 when flash-attn is installed.
A setting that fails records its error and the others still run.

FLOPs per trained token (documented, the MFU's numerator): LoRA with frozen base weights costs the forward (2N)
and the backward through the activations (2N), no weight gradients: 4N, plus attention: per layer 4 * s * d_attn
forward (QK^T and AV over the causal half of a row of length s: 2 * 2 * s/2 * d_attn * 2) and twice that
backward, d_attn = heads * head_dim. MFU = FLOPs/s over the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s).

    python bench/train_throughput_gpu.py [--steps 12] [--warmup 3]     # on the GPU machine
    python bench/train_throughput_gpu.py --tiny --steps 2 --warmup 0   # a 2-layer model on the CPU: the test
Writes bench/results/train_throughput_gpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import datasets
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

ROOT = Path(__file__).resolve().parents[1]

GEMMA2_9B = dict(
    hidden_size=3584,
    intermediate_size=14336,
    num_hidden_layers=42,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    vocab_size=256000,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    query_pre_attn_scalar=256,
)
TINY = dict(
    GEMMA2_9B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=1024,
    query_pre_attn_scalar=16,
)


def gsm8k_lengths(gsm8k: Path, n: int):
    """(prompt tokens, answer tokens) of the first n GSM8K train rows in the plain format, SmolLM2's tokenizer."""
    from mathtune.config import load_config
    from mathtune.data.sources import from_jsonl
    from mathtune.models import load_tokenizer

    tok = load_tokenizer(load_config(ROOT / "configs" / "demo-cpu.yaml").model)
    rows = from_jsonl(gsm8k, "train")[:n]
    return tok, [
        (len(tok(f"Question: {r['question']}\nAnswer:")["input_ids"]), len(tok(" " + r["answer"])["input_ids"]) + 1)
        for r in rows
    ]


def random_rows(lengths, vocab: int, seed: int = 0) -> datasets.Dataset:
    """Pre-tokenized prompt-completion rows (TRL's input_ids + completion_mask) with the given lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p, a in lengths:
        ids = torch.randint(3, vocab, (p + a,), generator=g).tolist()
        rows.append({"input_ids": ids, "completion_mask": [0] * p + [1] * a})
    return datasets.Dataset.from_list(rows)


def flops_per_token(cfg: dict, params: int, mean_len: float) -> float:
    d_attn = cfg["num_attention_heads"] * cfg["head_dim"]
    attention = 3 * 4 * mean_len * d_attn * cfg["num_hidden_layers"] / 2  # fwd + 2x bwd, causal half
    return 4 * params + attention


class StepTimer(TrainerCallback):
    """Wall time of the steps after the warm-up ones (CUDA synchronised at each step end)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.warmup == 0:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


SETTINGS = ("baseline", "mathtune", "mathtune_liger", "mathtune_answer_loss", "mathtune_flash_padding_free")


def build_model(arch: dict, attn: str, device: str):
    """Random weights, built in the training dtype on the device (no float32 copy of 9B parameters first)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Gemma2ForCausalLM(Gemma2Config(**arch, attn_implementation=attn))
    finally:
        torch.set_default_dtype(default)


def setting_args(name: str, args_kw: dict, ours: dict) -> tuple[dict, str, str | None]:
    """(SFTConfig arguments, attention, why the setting cannot run here or None) of one setting."""
    if name == "baseline":
        return args_kw, "eager", None
    kw, attn, missing = dict(ours), "eager", None
    if name == "mathtune_liger":
        kw["use_liger_kernel"] = True
        missing = None if _installed("liger_kernel") else "liger-kernel is not installed"
    if name == "mathtune_flash_padding_free":
        kw.update(padding_free=True, max_length=None)
        attn, missing = "flash_attention_2", None if _installed("flash_attn") else "flash-attn is not installed"
    return kw, attn, missing


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_one(name, arch, dataset, args_kw, ours, lora, cfg, warmup, device, tokenizer) -> dict:
    """One setting, in this process. mathtune's settings build the LoRA model `mathtune train` builds (train/lora.py:
    FastDropout, frozen weights in bf16 under autocast) and its Trainer class; the baseline PEFT's, as a user writes."""
    from mathtune.train.lora import lora_model
    from mathtune.train.loss import CompletionLossTrainer, CountingSFTTrainer

    kw, attn, _ = setting_args(name, args_kw, ours)
    started = time.perf_counter()
    model = build_model(arch, attn, device)
    params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - started
    if name != "baseline":
        model, lora = lora_model(model, cfg.lora, bf16_autocast=kw.get("bf16", False)), None
    trainer_class = {"baseline": SFTTrainer, "mathtune_answer_loss": CompletionLossTrainer}.get(
        name, CountingSFTTrainer
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(warmup)
    trainer = trainer_class(
        model=model,
        args=SFTConfig(**kw),
        train_dataset=dataset,
        peft_config=lora,
        callbacks=[timer],
        processing_class=tokenizer,
    )
    trainer.train()
    steps = kw["max_steps"] - warmup
    rows = steps * kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"]
    first = warmup * kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"]
    timed_rows = dataset.select(range(first, first + rows)) if first + rows <= len(dataset) else dataset
    tokens = sum(len(r) for r in timed_rows["input_ids"])
    seconds = timer.end - timer.start
    mean_len = tokens / max(1, len(timed_rows))
    return {
        "name": name,
        "attn": attn,
        "params": params,
        "build_seconds": round(build_s, 1),
        "steps_timed": steps,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "flops_per_token": flops_per_token(arch, params, mean_len),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }


def in_own_process(name: str, argv: list[str], timeout: float) -> dict:
    """Runs one setting in a child process (this script with --setting) and reads the dict it prints last."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, *argv, "--setting", name]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"name": name, "error": f"exit {res.returncode}: " + " | ".join(tail)[-600:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU (tests the script)")
    ap.add_argument("--setting", choices=SETTINGS, help="run this one setting here and print its result (internal)")
    ap.add_argument("--timeout", type=float, default=150, help="seconds each setting may take")
    ap.add_argument(
        "--settings", default=",".join(SETTINGS), help="which settings to run (baseline and mathtune always)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput_gpu.json"))
    args = ap.parse_args()

    import train_throughput  # bench/train_throughput.py: a script's own folder is on sys.path

    from mathtune.config import load_config
    from mathtune.train.lora import lora_config

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    arch = TINY if args.tiny else GEMMA2_9B
    cfg = load_config(ROOT / "configs" / "gemma2-9b-gsm8k.yaml")
    batch = cfg.train.batch_size
    fixed = dict(
        output_dir="/tmp/mathtune-gpu-bench",
        max_steps=args.steps + args.warmup,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=42,
        data_seed=42,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        max_length=cfg.train.max_length,
    )
    baseline = dict(fixed, per_device_train_batch_size=batch, gradient_accumulation_steps=1)
    ours = train_throughput.timed_kwargs(cfg, fixed["output_dir"], fixed["max_steps"], "cuda")
    ours.update(use_cpu=fixed["use_cpu"], bf16=fixed["bf16"])

    if args.setting:  # the child: one setting, its result as the last line
        # SmolLM2's tokenizer counts the lengths and lends the trainer a pad id; the rows are token ids already.
        tokenizer, lengths = gsm8k_lengths(Path(args.gsm8k), batch * (args.steps + args.warmup))
        dataset = random_rows(lengths, arch["vocab_size"])
        r = run_one(
            args.setting, arch, dataset, baseline, ours, lora_config(cfg.lora), cfg, args.warmup, device, tokenizer
        )
        print(json.dumps(r), flush=True)
        return

    argv = ["--gsm8k", args.gsm8k, "--steps", str(args.steps), "--warmup", str(args.warmup)] + (
        ["--tiny"] if args.tiny else []
    )
    results = []
    chosen = {"baseline", "mathtune", *args.settings.split(",")}
    for name in SETTINGS:
        missing = setting_args(name, baseline, ours)[2] if name in chosen else "not chosen (--settings)"
        r = {"name": name, "skipped": missing} if missing else in_own_process(name, argv, args.timeout)
        print(
            json.dumps(
                {k: r.get(k) for k in ("name", "tokens_per_s", "peak_memory_gb", "final_loss", "error", "skipped")}
            ),
            flush=True,
        )
        results.append(r)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    from mathtune.estimate import GPUS  # the data-sheet peaks `mathtune estimate` uses

    peak = next((v["peak_flops"] for k, v in GPUS.items() if gpu and k in gpu), None)
    for r in results:
        if "tokens_per_s" in r:
            r["mfu"] = round(r["tokens_per_s"] * r["flops_per_token"] / peak, 4) if peak else None
    by = {r["name"]: r for r in results}
    base, mt = by["baseline"], by["mathtune"]
    ok = "tokens_per_s" in base and "tokens_per_s" in mt
    out = {
        "benchmark": "train_throughput_gpu",
        "model": "gemma-2-9b architecture, random weights"
        if not args.tiny
        else "2-layer Gemma-2 (script test on the CPU)",
        "params": mt.get("params"),
        "ratio": round(mt["tokens_per_s"] / base["tokens_per_s"], 2) if ok else None,
        "baseline_tokens_per_s": base.get("tokens_per_s"),
        "mathtune_tokens_per_s": mt.get("tokens_per_s"),
        "mfu": mt.get("mfu"),
        "baseline_mfu": base.get("mfu"),
        "peak_memory_gb": mt.get("peak_memory_gb"),
        "baseline_peak_memory_gb": base.get("peak_memory_gb"),
        "final_loss": mt.get("final_loss"),
        "baseline_final_loss": base.get("final_loss"),
        "gpu": gpu,
        "peak_flops": peak,
        "levers": {
            name: round(by[name]["tokens_per_s"] / mt["tokens_per_s"], 3)
            if "tokens_per_s" in by[name] and "tokens_per_s" in mt
            else by[name].get("skipped") or by[name].get("error")
            for name in SETTINGS[2:]
        },
        "settings": results,
        "steps": {"timed": args.steps, "warmup": args.warmup, "rows_per_step": batch},
        "machine": {"cores": len(os.sched_getaffinity(0)), "gpu": gpu, "torch": torch.__version__},
        "date": date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    keys = ("ratio", "baseline_tokens_per_s", "mathtune_tokens_per_s", "mfu", "peak_memory_gb", "levers", "gpu")
    print(json.dumps({k: out[k] for k in keys}))


if __name__ == "__main__":
    main()

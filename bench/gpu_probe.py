"""Where a GPU training step of the Gemma-2-9B shape goes, and whether the compact decoder answers as generate on CUDA.

bench/train_throughput_gpu.py measured mathtune's LoRA step on an H200 at ~0.6 s for ~775 tokens (batch 4 of
GSM8K-length rows), 5% MFU: the arithmetic (4N FLOPs per token) is ~0.04 s of that. This probe, each part in a
process of its own, on the same random-weight model and rows:
  - profile: torch.profiler over 3 of mathtune's steps (after 3 warm-up ones): wall seconds per step against the
    seconds the GPU was busy (kernel time), kernel launches per step, and the busiest kernels;
  - rows_16: the same Trainer with 16 rows per forward and per step: tokens/s when each launch does 4x the work;
  - compile: SFTConfig(torch_compile=True), batch 4, capped at --compile-timeout seconds;
  - decode_fp32: bench/eval_throughput_gpu.py's comparison in float32 (16 questions, 32 tokens), where bf16 rounding
    cannot flip a random model's near-tied argmax: how many answers are token for token generate's.

    python bench/gpu_probe.py                       # on the GPU machine, ~4 minutes
    python bench/gpu_probe.py --tiny                # 2-layer models on the CPU (tests the script)
Writes bench/results/gpu_probe.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def trainer_for(tiny: bool, gsm8k: Path, rows_per_step: int, steps: int, compile_: bool = False, callbacks=()):
    """mathtune's Trainer (train_throughput_gpu's `mathtune` setting) with `rows_per_step` rows per forward."""
    import torch
    import train_throughput
    import train_throughput_gpu as ttg
    from trl import SFTConfig

    from mathtune.config import load_config
    from mathtune.train.lora import lora_model
    from mathtune.train.loss import CountingSFTTrainer

    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    arch = ttg.TINY if tiny else ttg.GEMMA2_9B
    cfg = load_config(ROOT / "configs" / "gemma2-9b-gsm8k.yaml")
    tokenizer, lengths = ttg.gsm8k_lengths(gsm8k, rows_per_step * steps)
    kw = train_throughput.timed_kwargs(cfg, "/tmp/mathtune-gpu-probe", steps, "cuda")
    kw.update(
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        per_device_train_batch_size=rows_per_step,
        torch_compile=compile_,
    )
    model = lora_model(ttg.build_model(arch, "eager", device), cfg.lora, bf16_autocast=kw["bf16"])
    dataset = ttg.random_rows(lengths, arch["vocab_size"])
    trainer = CountingSFTTrainer(
        model=model, args=SFTConfig(**kw), train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks)
    )
    return trainer, dataset, device


def timed(tiny: bool, gsm8k: Path, rows: int, warmup: int, steps: int, compile_: bool = False) -> dict:
    import torch
    import train_throughput_gpu as ttg

    timer = ttg.StepTimer(warmup)
    trainer, dataset, device = trainer_for(tiny, gsm8k, rows, warmup + steps, compile_, [timer])
    trainer.train()
    tokens = sum(len(r) for r in dataset.select(range(warmup * rows, (warmup + steps) * rows))["input_ids"])
    seconds = timer.end - timer.start
    return {
        "rows_per_step": rows,
        "steps_timed": steps,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }


def profile(tiny: bool, gsm8k: Path) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from transformers import TrainerCallback

    warmup, steps = 3, 3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() and not tiny else [])
    prof = torch.profiler.profile(activities=activities)
    marks = {}

    class Window(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == warmup:
                prof.start()
                marks["start"] = time.perf_counter()
            if state.global_step == warmup + steps:
                marks["end"] = time.perf_counter()
                prof.stop()

    trainer, _, device = trainer_for(tiny, gsm8k, 4, warmup + steps, callbacks=[Window()])
    trainer.train()
    events = prof.key_averages()
    wall = (marks["end"] - marks["start"]) / steps
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / steps
    launches = sum(e.count for e in kernels)
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]
    cpu_top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "wall_s_per_step": round(wall, 4),
        "gpu_busy_s_per_step": round(busy, 4),
        "gpu_busy_share": round(busy / wall, 3) if wall else None,
        "kernels_per_step": launches // steps,
        "top_kernels_ms_per_step": {e.key[:80]: round(e.self_device_time_total / 1e3 / steps, 2) for e in top},
        "top_cpu_ops_ms_per_step": {e.key[:80]: round(e.self_cpu_time_total / 1e3 / steps, 2) for e in cpu_top},
        "device": device,
    }


def decode_fp32(tiny: bool, gsm8k: Path) -> dict:
    out = Path("/tmp/mathtune-gpu-probe-decode.json")
    cmd = [sys.executable, str(ROOT / "bench" / "eval_throughput_gpu.py"), "--gsm8k", str(gsm8k), "--n", "16"]
    cmd += ["--max-new-tokens", "32", "--dtype", "float32", "--out", str(out)] + (["--tiny"] if tiny else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1])
    r = json.loads(out.read_text())
    keys = ("n", "max_new_tokens", "dtype", "identical_answers", "static_tokens_per_s", "compact_tokens_per_s")
    return {k: r[k] for k in keys}


def run_part(part: str, tiny: bool, gsm8k: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--gsm8k", str(gsm8k)] + (["--tiny"] if tiny else [])
    started = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": f"exit {res.returncode}: " + " | ".join(res.stderr.strip().splitlines()[-3:])[-600:]}
    return dict(json.loads(lines[-1]), part_seconds=round(time.perf_counter() - started, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--part", choices=("profile", "rows_16", "compile", "decode_fp32"))
    ap.add_argument("--compile-timeout", type=float, default=75)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_probe.json"))
    args = ap.parse_args()
    gsm8k = Path(args.gsm8k)
    if args.part:  # a child: one part, its result as the last line
        parts = {
            "profile": lambda: profile(args.tiny, gsm8k),
            "rows_16": lambda: timed(args.tiny, gsm8k, 16, 2, 6),
            "compile": lambda: timed(args.tiny, gsm8k, 4, 4, 12, compile_=True),
            "decode_fp32": lambda: decode_fp32(args.tiny, gsm8k),
        }
        print(json.dumps(parts[args.part]()), flush=True)
        return
    import torch

    result = {}
    for part, timeout in (("profile", 90), ("rows_16", 80), ("decode_fp32", 80), ("compile", args.compile_timeout)):
        result[part] = run_part(part, args.tiny, gsm8k, timeout)
        print(part, json.dumps(result[part]), flush=True)
    result.update(
        benchmark="gpu_probe",
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        torch=torch.__version__,
        date=date.today().isoformat(),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

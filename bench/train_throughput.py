"""LoRA training throughput on the CPU: plain TRL versus mathtune's training path, same process.

The embedded SmolLM2-135M-Instruct, the first 256 GSM8K train rows in the chat format, LoRA r=8 alpha=16
dropout 0.1 on all linear layers, batch 8, lr 2e-4, seed 42, the same number of optimizer steps.

- baseline: what a user writes with plain TRL: SFTTrainer + peft.LoraConfig, SFTConfig's defaults (padding to
  the longest row, TRL's default gradient checkpointing, its fused completion-only LM head) in float32;
- levers: the baseline with mathtune's settings switched on one at a time, cumulatively (fewer steps: a rate);
- mathtune: SFTConfig built by mathtune's own sft_kwargs from configs/demo-cpu.yaml, as `mathtune train` runs it
  (evaluation and checkpoints off here: only the training steps are timed).

Tokens are the non-padding tokens of the rows trained on, the same count for every setting. Peak RSS is sampled
from /proc every 50 ms while each setting trains. Writes bench/results/train_throughput_cpu.json.

    python bench/train_throughput.py --gsm8k ../shared/data/gsm8k [--steps 32] [--lever-steps 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import datasets
import torch
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from mathtune.config import load_config
from mathtune.data.format import sft_example
from mathtune.data.sources import from_jsonl
from mathtune.models import load_model, load_tokenizer
from mathtune.run import cpu_model
from mathtune.train.stage import batching, lora_config, sft_kwargs

ROOT = Path(__file__).resolve().parents[1]
NOTE = ("levers: no_gradient_checkpointing and +bf16_autocast add to the baseline in turn; +padding_free and "
        "+per_sequence are two alternative layouts, each on top of +bf16_autocast; mathtune = +per_sequence as "
        "mathtune train runs it (32 steps). Peak RSS is sampled in one process shared by every setting, so a later "
        "setting's figure can include memory the allocator kept from an earlier one.")


class PeakRSS:
    """Highest resident set size seen while the block runs (sampled; the process is shared by all settings)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Losses(TrainerCallback):
    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.rows.append({"step": state.global_step, "loss": logs["loss"]})


def baseline_args(out: str, steps: int, **levers) -> SFTConfig:
    """SFTConfig's defaults but for what the comparison fixes: batch, lr, steps, seed, logging, float32."""
    kw = dict(output_dir=out, per_device_train_batch_size=8, learning_rate=2e-4, max_steps=steps, seed=42,
              data_seed=42, logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
              use_cpu=True, bf16=False, disable_tqdm=True)
    kw.update(levers)
    return SFTConfig(**kw)


def mathtune_args(cfg, out: str, steps: int) -> SFTConfig:
    kw = sft_kwargs(cfg, Path(out), "cpu")
    kw.update(output_dir=out, max_steps=steps, logging_steps=1, save_strategy="no", eval_strategy="no",
              eval_on_start=False, load_best_model_at_end=False, disable_tqdm=True)
    return SFTConfig(**kw)


def train_once(name: str, cfg, tokenizer, dataset, args: SFTConfig, peft_config) -> dict:
    torch.manual_seed(42)
    model = load_model(cfg.model, "cpu")
    losses = Losses()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[losses])
    steps = args.max_steps
    with PeakRSS() as rss:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    # TRL's count of the non-padding tokens trained on (attention-mask sum, or the packed row's length): the same
    # rows in the same order for every setting (one seed), so the same count; the JSON shows it per setting.
    tokens = int(trainer._total_train_tokens)
    result = {"name": name, "steps": steps, "tokens": tokens, "seconds": round(seconds, 2),
              "tokens_per_s": round(tokens / seconds, 2), "peak_rss_gb": round(rss.peak / 2**30, 2),
              "losses": losses.rows, "final_loss": losses.rows[-1]["loss"] if losses.rows else None}
    print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s, "
          f"final loss {result['final_loss']}, peak RSS {result['peak_rss_gb']} GB", flush=True)
    del trainer, model
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32, help="optimizer steps of the baseline and mathtune (256 / 8)")
    ap.add_argument("--lever-steps", type=int, default=8, help="optimizer steps of each intermediate lever")
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--only", default="", help="comma-separated setting names to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput_cpu.json"))
    args = ap.parse_args()

    cfg = load_config(args.config, [f"data.path={args.gsm8k}"])
    tokenizer = load_tokenizer(cfg.model)
    rows = from_jsonl(Path(args.gsm8k), "train")[: args.rows]
    dataset = datasets.Dataset.from_list([sft_example(r, "chat", cfg.model) for r in rows])
    lora = lora_config(cfg.lora)  # r=8, alpha=16, dropout 0.1, all-linear: the same for every setting
    tmp = tempfile.mkdtemp(prefix="mathtune-bench-")

    # Cumulative up to bf16; then the two batch layouts, each on top of it (NOTE).
    settings = [
        ("baseline", args.steps, lambda: baseline_args(tmp, args.steps)),
        ("no_gradient_checkpointing", args.lever_steps,
         lambda: baseline_args(tmp, args.lever_steps, gradient_checkpointing=False)),
        ("+bf16_autocast", args.lever_steps,
         lambda: baseline_args(tmp, args.lever_steps, gradient_checkpointing=False, bf16=True)),
        ("+padding_free", args.lever_steps,
         lambda: baseline_args(tmp, args.lever_steps, gradient_checkpointing=False, bf16=True, padding_free=True,
                               max_length=None)),
        ("+per_sequence", args.lever_steps,
         lambda: baseline_args(tmp, args.lever_steps, gradient_checkpointing=False, bf16=True,
                               per_device_train_batch_size=1, gradient_accumulation_steps=8)),
        ("mathtune", args.steps, lambda: mathtune_args(cfg, tmp, args.steps)),
    ]
    only = set(filter(None, args.only.split(",")))
    results = {}
    for name, _, make in settings:
        if not only or name in only:
            results[name] = train_once(name, cfg, tokenizer, dataset, make(), lora)

    base, ours = results.get("baseline"), results.get("mathtune")
    out = {
        "benchmark": "train_throughput_cpu",
        "model": cfg.model.name,
        "rows": len(rows),
        "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout, "target": cfg.lora.target_modules},
        "batch_size": 8,
        "mathtune_batching": batching(cfg, "cpu"),
        "ratio": round(ours["tokens_per_s"] / base["tokens_per_s"], 2) if base and ours else None,
        "baseline_tokens_per_s": base and base["tokens_per_s"],
        "mathtune_tokens_per_s": ours and ours["tokens_per_s"],
        "baseline_final_loss": base and base["final_loss"],
        "mathtune_final_loss": ours and ours["final_loss"],
        "final_loss_diff_pct": round(100 * (ours["final_loss"] - base["final_loss"]) / base["final_loss"], 2)
        if base and ours else None,
        "peak_rss_gb": ours and ours["peak_rss_gb"],
        "baseline_peak_rss_gb": base and base["peak_rss_gb"],
        "levers_note": NOTE,
        "levers": [{k: v for k, v in r.items() if k != "losses"} | ({"x_baseline": round(r["tokens_per_s"] /
                   base["tokens_per_s"], 2)} if base else {}) for r in results.values()],
        "loss_curves": {name: r["losses"] for name, r in results.items() if r["steps"] == args.steps},
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "gpu": None,
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "date": date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("ratio", "baseline_tokens_per_s", "mathtune_tokens_per_s",
                                          "baseline_final_loss", "mathtune_final_loss", "peak_rss_gb")}))


if __name__ == "__main__":
    main()

"""LoRA training throughput on the CPU: plain TRL, mathtune's training path, and this CPU's limit, each in its own process.

The embedded SmolLM2-135M-Instruct, the first 256 GSM8K train rows in the chat format, LoRA r=8 alpha=16
dropout 0.1 on all linear layers, batch 8, lr 2e-4, seed 42.

- baseline: what a user writes with plain TRL: SFTTrainer + peft.LoraConfig, SFTConfig's defaults (padding to
  the longest row, TRL's default gradient checkpointing, its fused completion-only LM head) in float32;
- mathtune: the Trainer `mathtune train` builds (train/stage.py's make_trainer) from configs/demo-cpu.yaml, evaluation
  and checkpoints off: only the training steps are timed;
- limit: a hand-written loop with no TRL and no Trainer: the same LoRA model (train/lora.py), bf16 autocast, the same
  tokens concatenated and cut into equal-length sequences (plain causal attention, no padding, no mask), the LM head
  on the answer tokens only, AdamW. No per-step extras. Run at three lengths; the fastest is the limit;
- levers: fewer steps (a rate), each the named change on its own: TRL's settings switched on in turn, then mathtune's
  path with one of its parts taken out or changed (NOTE says which).

Tokens are the non-padding tokens trained on. Peak RSS is Linux's high-water mark (VmHWM), reset as a setting
starts, in its own process (the committed JSON of 2026-11-27 sampled VmRSS every 50 ms instead: a peak shorter
than that could be missed).
Writes bench/results/train_throughput_cpu.json.

    python bench/train_throughput.py --gsm8k ../shared/data/gsm8k [--steps 32] [--lever-steps 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from mathtune import memory  # /proc only: imports nothing that reads the allocator settings

ROOT = Path(__file__).resolve().parents[1]
NOTE = (
    "Each setting ran in its own process. Plain TRL (baseline, trl_*) on the system allocator, mathtune and the "
    "limit under tcmalloc as mathtune runs itself; trl_tcmalloc and mathtune_allocator_glibc swap that. trl_* "
    "levers add to the baseline in turn (gradient checkpointing off, "
    "then bf16 autocast, then TRL's padding_free or a per-row layout). mathtune_* levers are mathtune's path "
    "with one change: per_sequence / rows_per_forward=N (the batch layout), torch_dropout (PEFT's nn.Dropout "
    "and its A product instead of DroppedLinear), fast_dropout_then_a (FastDropout then PEFT's A product, which "
    "keep the dropped-out input and the mask for the backward, instead of DroppedLinear), unfused_head (the answer-"
    "token loss through the model's head and a chunked cross-entropy instead of linear_cross_entropy), "
    "head_outside_autocast (linear_cross_entropy outside the Trainer's autocast, so its head product in float32, as "
    "before 2026-11-28), unfused_mlp (the MLP's act(gate) * up through autograd, keeping three tensors, instead of "
    "train/mlp.py's ActTimesUp), float32_frozen (frozen weights cast by autocast on every forward), trl_loss (TRL's "
    "fused LM head over every position instead of the answer-token loss), compile (torch.compile), onednn_cache_64 "
    "(oneDNN's primitive cache capped at 64 kernels, as mathtune caps it for unpadded rows, instead of the 1024 it "
    "trains padded rows at, allocator.training_onednn_cache; plain TRL and the limit run at 1024); "
    "no_padding (train.pad_to_multiple_of taken out: the demo config pads each forward and each row's attention to a "
    "multiple of 64 tokens, so that shapes repeat; unpadded, mathtune caps oneDNN's cache at 64), over all the steps; "
    "rows_per_forward=4_all_steps (the demo's before) likewise, right after mathtune."
)
LIMIT_LENGTHS = (256, 512, 1024)


class PeakRSS:
    """Highest resident set size while the block runs: Linux's high-water mark, reset at the block's start
    (mathtune/memory.py, as a run's stages measure theirs)."""

    def __enter__(self):
        memory.reset_peak()
        return self

    def __exit__(self, *exc):
        self.peak_gb = memory.peak_gb()


def _losses_callback():
    from transformers import TrainerCallback

    class Losses(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.rows.append({"step": state.global_step, "loss": logs["loss"]})

    return Losses()


def baseline_args(out: str, steps: int, **levers):
    """SFTConfig's defaults but for what the comparison fixes: batch, lr, steps, seed, logging, float32."""
    from trl import SFTConfig

    kw = dict(
        output_dir=out,
        per_device_train_batch_size=8,
        learning_rate=2e-4,
        max_steps=steps,
        seed=42,
        data_seed=42,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    kw.update(levers)
    return SFTConfig(**kw)


def timed_kwargs(cfg, out: str, steps: int, device: str = "cpu") -> dict:
    """mathtune's SFTConfig arguments (train/stage.py's sft_kwargs) for a timed run of `steps` steps: no validation,
    no checkpoints, a loss logged every step. The GPU benchmarks time the same settings."""
    from mathtune.train.stage import sft_kwargs

    kw = sft_kwargs(cfg, Path(out), device)
    kw.update(
        output_dir=out,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        eval_on_start=False,
        load_best_model_at_end=False,
        disable_tqdm=True,
    )
    return kw


def mathtune_args(cfg, out: str, steps: int):
    from trl import SFTConfig

    return SFTConfig(**timed_kwargs(cfg, out, steps))


def timed_train(trainer, losses) -> dict:
    with PeakRSS() as rss:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    # TRL's count of the non-padding tokens trained on (attention-mask sum, or the packed row's length): the same
    # rows in the same order for every setting (one seed), so the same count; the JSON shows it per setting.
    tokens = int(trainer._total_train_tokens)
    return {
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "peak_rss_gb": rss.peak_gb,
        "losses": losses.rows,
        "final_loss": losses.rows[-1]["loss"] if losses.rows else None,
    }


def run_trl(cfg, dataset, tmp: str, steps: int, **levers) -> dict:
    import torch
    from trl import SFTTrainer

    from mathtune.models import load_model, load_tokenizer
    from mathtune.train.lora import lora_config

    torch.manual_seed(42)
    losses = _losses_callback()
    trainer = SFTTrainer(
        model=load_model(cfg.model, "cpu"),
        args=baseline_args(tmp, steps, **levers),
        train_dataset=dataset,
        processing_class=load_tokenizer(cfg.model),
        peft_config=lora_config(cfg.lora),
        callbacks=[losses],
    )
    return timed_train(trainer, losses)


def run_mathtune(cfg, dataset, tmp: str, steps: int, change: str = "") -> dict:
    """mathtune's Trainer as `mathtune train` builds it, with at most one change (a lever taken out)."""
    import torch
    from torch import nn

    import mathtune.train.loss as loss_module
    import mathtune.train.stage as stage
    from mathtune.models import load_tokenizer
    from mathtune.train import lora

    if change == "torch_dropout":
        lora.fast_dropout = lora.drop_inside_lora_a = lambda model: 0
    if change == "fast_dropout_then_a":
        lora.drop_inside_lora_a = lambda model: 0
    if change == "unfused_head":
        loss_module.fusable_head = lambda model: None
    if change == "head_outside_autocast":
        import accelerate

        accelerate.Accelerator.autocast = lambda self, *a, **k: contextlib.nullcontext()
    if change == "unfused_mlp":
        import mathtune.train.mlp as mlp

        mlp.fuse_gated_mlps = lambda model: 0
    if change == "float32_frozen":
        lora.frozen_linear_to_bf16 = lambda model: 0
    if change == "trl_loss":
        from trl import SFTTrainer

        loss_module.CompletionLossTrainer = SFTTrainer
    if change == "compile":
        cfg.train.compile = True
    torch.manual_seed(42)
    losses = _losses_callback()
    trainer = stage.make_trainer(
        cfg, "cpu", load_tokenizer(cfg.model), mathtune_args(cfg, tmp, steps), dataset, callbacks=[losses]
    )
    drops = sum(isinstance(m, nn.Dropout) for m in trainer.model.modules())
    result = timed_train(trainer, losses)
    result["torch_dropout_modules"] = drops
    # The rows per forward the training stage resolved (train/stage.py::sft_kwargs: per_sequence 1, packed
    # train.rows_per_forward or the whole batch), read from the Trainer rather than worked out again here.
    result["rows_per_forward"] = trainer.args.per_device_train_batch_size
    return result


def limit_batches(cfg, rows, length: int) -> tuple[list, list]:
    """The rows' tokens (prompt + answer, as TRL tokenizes them) concatenated and cut into sequences of `length`;
    labels -100 on prompt tokens. Returns (input_ids sequences, label sequences)."""
    from trl import SFTConfig, SFTTrainer

    from mathtune.models import load_model, load_tokenizer

    # TRL's own tokenization of the dataset (chat template, answer-only labels, EOS), so the tokens are the same.
    tok = load_tokenizer(cfg.model)
    probe = SFTTrainer(
        model=load_model(cfg.model, "cpu"),
        train_dataset=rows,
        processing_class=tok,
        args=SFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, max_length=cfg.train.max_length),
    )
    ids, labels = [], []
    for row in probe.train_dataset:
        ids += row["input_ids"]
        labels += row["labels"]  # -100 on the prompt tokens
    n = len(ids) // length
    return (
        [ids[i * length : (i + 1) * length] for i in range(n)],
        [labels[i * length : (i + 1) * length] for i in range(n)],
    )


def run_limit(cfg, dataset, length: int, tokens_per_step: int = 2048, per_forward: int | None = None) -> dict:
    """The hand-written loop (module docstring): forward, backward, AdamW step; nothing else."""
    import torch
    import torch.nn.functional as F

    from mathtune.models import load_model
    from mathtune.train.lora import lora_model

    seqs, labels = limit_batches(cfg, dataset, length)
    torch.manual_seed(42)
    model = lora_model(load_model(cfg.model, "cpu"), cfg.lora, bf16_autocast=True)
    model.train()
    causal_lm = model.get_base_model()
    backbone, head = causal_lm.base_model, causal_lm.get_output_embeddings()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
    per_step = max(1, tokens_per_step // length)
    per_forward = per_forward or per_step
    losses = []
    with PeakRSS() as rss:
        start = time.perf_counter()
        for s in range(0, len(seqs), per_step):
            scored_in_step = sum(t != -100 for row in labels[s : s + per_step] for t in row[1:])
            step_loss = 0.0
            for f in range(s, min(s + per_step, len(seqs)), per_forward):
                x = torch.tensor(seqs[f : f + per_forward])
                y = torch.tensor(labels[f : f + per_forward])[:, 1:]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    hidden = backbone(input_ids=x).last_hidden_state[:, :-1]
                    scored = y != -100
                    loss = F.cross_entropy(head(hidden[scored]).float(), y[scored], reduction="sum") / scored_in_step
                loss.backward()
                step_loss += loss.item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append({"step": len(losses) + 1, "loss": step_loss})
        seconds = time.perf_counter() - start
    tokens = len(seqs) * length
    return {
        "steps": len(losses),
        "length": length,
        "per_forward": per_forward,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "peak_rss_gb": rss.peak_gb,
        "losses": losses,
        "final_loss": losses[-1]["loss"],
    }


def settings(steps: int, lever_steps: int) -> list[tuple[str, dict]]:
    """name -> what the child process runs. Plain TRL runs on the system allocator, as a user runs it; mathtune and
    the limit under tcmalloc, as `mathtune` runs itself (allocator.py); two levers swap them."""
    out = [
        ("baseline", {"kind": "trl", "steps": steps, "allocator": "system"}),
        ("mathtune", {"kind": "mathtune", "steps": steps}),
        # right after mathtune, as near a pair as a sequence of settings gets: the demo's rows per forward before
        (
            "mathtune_rows_per_forward=4_all_steps",
            {"kind": "mathtune", "steps": steps, "overrides": ["train.rows_per_forward=4"]},
        ),
    ]
    out += [(f"limit_{n}", {"kind": "limit", "length": n}) for n in LIMIT_LENGTHS]
    out += [("limit_512_one_per_forward", {"kind": "limit", "length": 512, "per_forward": 1})]
    out += [
        ("trl_tcmalloc", {"kind": "trl", "steps": lever_steps}),
        ("mathtune_allocator_glibc", {"kind": "mathtune", "steps": lever_steps, "allocator": "system"}),
    ]
    out += [
        (
            "trl_no_gradient_checkpointing",
            {"kind": "trl", "steps": lever_steps, "levers": {"gradient_checkpointing": False}},
        ),
        (
            "trl_bf16_autocast",
            {"kind": "trl", "steps": lever_steps, "levers": {"gradient_checkpointing": False, "bf16": True}},
        ),
        (
            "trl_padding_free",
            {
                "kind": "trl",
                "steps": lever_steps,
                "levers": {"gradient_checkpointing": False, "bf16": True, "padding_free": True, "max_length": None},
            },
        ),
        (
            "trl_per_sequence",
            {
                "kind": "trl",
                "steps": lever_steps,
                "levers": {
                    "gradient_checkpointing": False,
                    "bf16": True,
                    "per_device_train_batch_size": 1,
                    "gradient_accumulation_steps": 8,
                },
            },
        ),
    ]
    for name, spec in out:
        if name.startswith("trl_") and name != "trl_tcmalloc":
            spec["allocator"] = "system"
        if spec["kind"] == "trl":
            spec["onednn_cache"] = 1024  # oneDNN's default: plain TRL as a user runs it
    # mathtune's path with the cap it gives unpadded rows, over as many steps as mathtune's run: the cache's memory
    # grows with them.
    out += [("mathtune_onednn_cache_64", {"kind": "mathtune", "steps": steps, "onednn_cache": 64})]
    out += [
        (f"mathtune_{c}", {"kind": "mathtune", "steps": lever_steps, "change": c})
        for c in (
            "torch_dropout",
            "fast_dropout_then_a",
            "unfused_head",
            "head_outside_autocast",
            "unfused_mlp",
            "float32_frozen",
            "trl_loss",
            "compile",
        )
    ]
    out += [
        (
            "mathtune_per_sequence",
            # one row per forward, unpadded: train.pad_to_multiple_of pads packed rows only
            {
                "kind": "mathtune",
                "steps": lever_steps,
                "overrides": ["train.batching=per_sequence", "train.pad_to_multiple_of=null"],
            },
        )
    ]
    out += [
        (
            f"mathtune_rows_per_forward={n}",
            {"kind": "mathtune", "steps": lever_steps, "overrides": [f"train.rows_per_forward={n}"]},
        )
        for n in (1, 2, 4)
    ]
    # train.pad_to_multiple_of (packing.py; the demo config pads to 64) taken out, over as many steps as mathtune's
    # run, as memory grows with the steps.
    out += [
        ("mathtune_no_padding", {"kind": "mathtune", "steps": steps, "overrides": ["train.pad_to_multiple_of=null"]}),
    ]
    return out


def child(spec: dict, gsm8k: str, config: str, n_rows: int) -> dict:
    import torch

    from mathtune import allocator
    from mathtune.config import load_config
    from mathtune.data.sources import from_jsonl
    from mathtune.train.stage import sft_dataset

    cfg = load_config(config, [f"data.path={gsm8k}", *spec.get("overrides", [])])
    # oneDNN's kernel cache, before the first matrix product, as mathtune's training stage sizes it (a setting's
    # own `onednn_cache`, set by child_env, stands); the limit's equal-length sequences repeat their shapes.
    if spec["kind"] == "mathtune":
        allocator.bound_onednn_cache(allocator.training_onednn_cache(cfg.train.pad_to_multiple_of))
    elif spec["kind"] == "limit":
        allocator.bound_onednn_cache(allocator.ONEDNN_CACHE_REPEATING_SHAPES)
    dataset = sft_dataset(from_jsonl(Path(gsm8k), "train")[:n_rows], "chat", cfg.model)
    tmp = tempfile.mkdtemp(prefix="mathtune-bench-")
    if spec["kind"] == "trl":
        result = run_trl(cfg, dataset, tmp, spec["steps"], **spec.get("levers", {}))
    elif spec["kind"] == "mathtune":
        result = run_mathtune(cfg, dataset, tmp, spec["steps"], spec.get("change", ""))
        from mathtune.train.stage import batching

        result["batching"] = batching(cfg, "cpu")
    else:
        result = run_limit(cfg, dataset, spec["length"], per_forward=spec.get("per_forward"))
    result["threads"] = torch.get_num_threads()
    result["allocator"] = allocator.current()
    result["onednn_cache"] = int(os.environ.get(allocator.ONEDNN_CACHE, 1024))
    return result


def child_env(name: str, onednn_cache: int | None = None) -> dict:
    """The setting's process environment: its allocator, and oneDNN's primitive cache at `onednn_cache` where the
    setting names one (plain TRL: oneDNN's default, 1024), else unset, for the child to size as mathtune does."""
    from mathtune.allocator import ONEDNN_CACHE, ONEDNN_CACHE_CHOSEN_BY, find_tcmalloc

    drop = ("LD_PRELOAD", ONEDNN_CACHE, ONEDNN_CACHE_CHOSEN_BY)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if onednn_cache:
        env[ONEDNN_CACHE] = str(onednn_cache)  # as a user's value: it stands
    if name == "tcmalloc":
        lib = find_tcmalloc()
        if lib is None:
            sys.exit("tcmalloc not found: apt-get install libtcmalloc-minimal4 (make setup does)")
        env["LD_PRELOAD"] = lib
    return env


def machine() -> dict:
    import torch

    from mathtune.run import cpu_model

    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "gpu": None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def summary(results: dict, n_rows: int, cfg) -> dict:
    base, ours = results.get("baseline"), results.get("mathtune")
    limits = {k: v for k, v in results.items() if k.startswith("limit_")}
    best = max(limits.values(), key=lambda r: r["tokens_per_s"]) if limits else None
    ratio = lambda a, b: round(a["tokens_per_s"] / b["tokens_per_s"], 3) if a and b else None  # noqa: E731
    return {
        "benchmark": "train_throughput_cpu",
        "model": cfg.model.name,
        "rows": n_rows,
        "lora": {
            "r": cfg.lora.r,
            "alpha": cfg.lora.alpha,
            "dropout": cfg.lora.dropout,
            "target": cfg.lora.target_modules,
        },
        "batch_size": cfg.train.batch_size,
        "mathtune_batching": ours and ours.get("batching"),
        "mathtune_rows_per_forward": ours and ours.get("rows_per_forward"),
        "ratio": ratio(ours, base),
        "limit_ratio": ratio(ours, best),
        "limit_length": best and best["length"],
        "baseline_tokens_per_s": base and base["tokens_per_s"],
        "mathtune_tokens_per_s": ours and ours["tokens_per_s"],
        "limit_tokens_per_s": best and best["tokens_per_s"],
        "baseline_final_loss": base and base["final_loss"],
        "mathtune_final_loss": ours and ours["final_loss"],
        "final_loss_diff_pct": round(100 * (ours["final_loss"] - base["final_loss"]) / base["final_loss"], 2)
        if base and ours
        else None,
        "peak_rss_gb": ours and ours["peak_rss_gb"],
        "baseline_peak_rss_gb": base and base["peak_rss_gb"],
        "limit_peak_rss_gb": best and best["peak_rss_gb"],
        "levers_note": NOTE,
        "settings": [
            {
                "name": k,
                **{f: v for f, v in r.items() if f != "losses"},
                **({"x_baseline": ratio(r, base)} if base else {}),
            }
            for k, r in results.items()
        ],
        "loss_curves": {k: r["losses"] for k, r in results.items() if k in ("baseline", "mathtune")},
        "machine": machine(),
        "date": date.today().isoformat(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32, help="optimizer steps of the baseline and mathtune (256 / 8)")
    ap.add_argument("--lever-steps", type=int, default=8, help="optimizer steps of each lever")
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--only", default="", help="comma-separated setting names to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput_cpu.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)  # JSON spec: run one setting in this process
    args = ap.parse_args()

    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child), args.gsm8k, args.config, args.rows)), flush=True)
        return
    from mathtune.config import load_config

    cfg = load_config(args.config, [f"data.path={args.gsm8k}"])
    only = set(filter(None, args.only.split(",")))
    specs = settings(args.steps, args.lever_steps)
    unknown = only - {name for name, _ in specs}
    if unknown:  # refused before anything runs: the summary is written after each setting, so none would be
        sys.exit(f"--only: no setting named {', '.join(sorted(unknown))}")
    results, failed = {}, {}
    for name, spec in specs:
        if only and name not in only:
            continue
        cmd = [
            sys.executable,
            __file__,
            "--gsm8k",
            args.gsm8k,
            "--config",
            args.config,
            "--rows",
            str(args.rows),
            "--child",
            json.dumps(spec),
        ]
        env = child_env(spec.get("allocator", "tcmalloc"), spec.get("onednn_cache"))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            # One setting's failure does not cost the others' figures: it is reported, and the run goes on.
            failed[name] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{name} failed: {failed[name]}\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        else:
            results[name] = r = json.loads(lines[-1][len("RESULT ") :])
            print(
                f"{name}: {r['tokens']} tokens in {r['seconds']} s = {r['tokens_per_s']} tokens/s, "
                f"final loss {r['final_loss']}, peak RSS {r['peak_rss_gb']} GB",
                flush=True,
            )
        out = write_summary(args, results, failed, cfg)  # after every setting: an interruption keeps what ran
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "ratio",
                    "limit_ratio",
                    "baseline_tokens_per_s",
                    "mathtune_tokens_per_s",
                    "limit_tokens_per_s",
                    "final_loss_diff_pct",
                    "peak_rss_gb",
                )
            }
        )
    )
    if failed:
        sys.exit(f"{len(failed)} setting(s) failed: {', '.join(failed)}")


def write_summary(args, results: dict, failed: dict, cfg) -> dict:
    from mathtune.io import atomic_write_json

    out = summary(results, args.rows, cfg)
    if failed:
        out["failed"] = failed
    out["command"] = " ".join(["python", "bench/train_throughput.py", *sys.argv[1:]])
    atomic_write_json(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()

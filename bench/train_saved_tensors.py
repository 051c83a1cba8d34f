"""Where a training forward's memory goes: every tensor autograd saves for the backward pass, by the module that
saved it, per token. What decides how many rows a forward can hold in 3 GB (train.rows_per_forward).

mathtune's own training path (train/stage.py's make_trainer: PEFT LoRA with train/lora.py's changes, packed rows,
bf16 autocast, the answer-token loss of train/loss.py) on the first micro-batch of real GSM8K rows that its data
loader yields. Saved tensors are caught with torch.autograd.graph.saved_tensors_hooks and counted once per storage;
the model's own weights (saved by reference) are left out. A module's name has its layer number replaced by `*`,
so each line sums over the layers.

    python bench/train_saved_tensors.py --gsm8k ../shared/data/gsm8k [--rows-per-forward 2,8]
Writes bench/results/train_saved_tensors_cpu.json: one entry per rows-per-forward value, and the per-token slope
between the first and the last (what one more token in a forward costs). With train.pad_to_multiple_of, `tokens` are the
rows' own and `pad_tokens` the padding row's, which the forward processes (and saves for) too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import record  # bench/record.py: a script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
KINDS = (  # (kind, a regular expression on the module's name), the first match wins
    ("weight_copies", r"weight copy"),  # autocast's bf16 copy of a float32 weight: once per forward, not per token
    ("lora_dropout_masks", r"lora_dropout"),
    ("lora_A_inputs", r"lora_A"),
    ("lora_B_inputs", r"lora_B"),
    ("mlp", r"mlp"),
    ("attention", r"self_attn"),
    ("norms", r"layernorm|norm$"),
    ("logits", r"^$|lm_head"),  # the answer positions' logits, float32 in the loss
)


def kind(module: str) -> str:
    return next((k for k, pattern in KINDS if re.search(pattern, module)), "other")


def saved_by_module(model, run_forward) -> tuple[Counter, object]:
    """Bytes autograd saves during run_forward(), by the (layer-less) name of the innermost module running, and
    what run_forward returned."""
    running, seen, by_module = [], set(), Counter()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    hooks = []
    for name, module in model.named_modules():
        short = re.sub(r"\.\d+\.", ".*.", name.removeprefix("base_model.model.").removeprefix("model."))
        hooks.append(module.register_forward_pre_hook(lambda m, a, short=short: running.append(short)))
        hooks.append(module.register_forward_hook(lambda m, a, o: (running.pop(), None)[1]))

    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen and storage.data_ptr() not in weights:
            seen.add(storage.data_ptr())
            copy = t.dim() == 2 and (tuple(t.shape) in shapes or tuple(t.shape)[::-1] in shapes)
            by_module[(running[-1] if running else "") + (" (weight copy)" if copy else "")] += storage.nbytes()
        return t

    import torch

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run_forward()
    finally:
        for h in hooks:
            h.remove()
    return by_module, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--rows-per-forward", default="2,8", help="comma-separated: one measurement each")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_saved_tensors_cpu.json"))
    args = ap.parse_args()
    from mathtune import allocator

    allocator.bound_onednn_cache()
    import datasets

    from mathtune.config import load_config
    from mathtune.data.format import prompt_format
    from mathtune.io import read_jsonl
    from mathtune.models import load_tokenizer
    from mathtune.run import open_run, run_named_stage
    from mathtune.train.stage import sft_dataset

    datasets.disable_progress_bars()
    cfg = load_config(args.config, [f"data.path={args.gsm8k}"])
    if not cfg.train.bf16:
        sys.exit("this benchmark measures bf16 autocast training (train.bf16: true)")
    run = Path(tempfile.mkdtemp(prefix="mathtune-saved-")) / "run"
    open_run(cfg, run, resume=False, force=False)
    run_named_stage(cfg, run, "data")
    tokenizer = load_tokenizer(cfg.model)
    train = sft_dataset(read_jsonl(run / "data" / "train.jsonl"), prompt_format(cfg.model, tokenizer), cfg.model)
    measured = [measure(cfg, run, tokenizer, train, int(n)) for n in args.rows_per_forward.split(",")]
    first, last = measured[0], measured[-1]
    processed = lambda m: m["tokens"] + m["pad_tokens"]  # noqa: E731  (a padding row's tokens are saved for too)
    slope = (last["saved_mb"] - first["saved_mb"]) / max(1, processed(last) - processed(first)) * 1e3
    result = {
        "benchmark": "train_saved_tensors_cpu",
        "config": os.path.relpath(args.config, ROOT),
        "bf16": True,
        "saved_kb_per_token": round(slope, 1),
        "forwards": measured,
    }
    result = record.write(args.out, result)
    print(json.dumps({"saved_kb_per_token": result["saved_kb_per_token"]}))
    for m in measured:
        print(json.dumps({k: m[k] for k in ("rows", "tokens", "pad_tokens", "saved_mb", "by_kind_mb")}))


def measure(cfg, run: Path, tokenizer, train, rows: int) -> dict:
    """Saved tensors of mathtune's first training forward at `rows` rows per forward."""
    import torch

    from mathtune.train.loss import completion_loss
    from mathtune.train.stage import make_trainer, sft_args

    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"rows_per_forward": rows})})
    trainer = make_trainer(cfg, "cpu", tokenizer, sft_args(cfg, run, "cpu"), train, train)
    batch = next(iter(trainer.get_train_dataloader()))
    pad = int(batch.pop("pad_tokens", 0))  # train.pad_to_multiple_of's padding row: processed, not trained on
    model = trainer.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_module, (_, count, _) = saved_by_module(model, lambda: completion_loss(model, batch))
    by_kind = Counter()
    for module, n in by_module.items():
        by_kind[kind(module)] += n
    return {
        "rows": rows,
        "tokens": int(batch["input_ids"].numel()) - pad,
        "pad_tokens": pad,
        "answer_tokens": int(count),
        "saved_mb": round(sum(by_module.values()) / 1e6, 1),
        "by_kind_mb": {k: round(v / 1e6, 1) for k, v in by_kind.most_common()},
        "by_module_mb": {k or "(model)": round(v / 1e6, 1) for k, v in by_module.most_common() if v >= 1e5},
    }


if __name__ == "__main__":
    main()

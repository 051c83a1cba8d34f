"""Training stage: the run's train/val rows -> LoRA adapter in PEFT's standard format, metrics.jsonl as it goes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

from mathtune.allocator import bound_onednn_cache, training_onednn_cache
from mathtune.cost import hourly_price
from mathtune.data.format import prompt_format, sft_example
from mathtune.errors import MathtuneError
from mathtune.io import atomic_replace_dir, atomic_write_json, atomic_write_jsonl, read_jsonl, repair_jsonl
from mathtune.models import load_model, load_tokenizer, pick_device
from mathtune.train.lora import lora_model
from mathtune.train.trackers import attach, check_installed, trackers


def is_done(run_dir: Path) -> bool:
    return (run_dir / "adapter" / "adapter_model.safetensors").is_file() and (run_dir / "train.json").is_file()


def batching(cfg, device: str) -> str:
    """train.batching with auto resolved (config.py says what each layout is and why)."""
    if cfg.train.batching != "auto":
        return cfg.train.batching
    if device == "cpu":
        return "packed" if cfg.model.attn_implementation in (None, "sdpa") else "per_sequence"
    return "padding_free" if cfg.model.attn_implementation == "flash_attention_2" else "padded"


def sft_dataset(rows: list[dict], fmt: str, model_cfg):
    """The rows as TRL's prompt-completion dataset in `fmt` (what the Trainer and the training benchmarks train on)."""
    import datasets

    return datasets.Dataset.from_list([sft_example(r, fmt, model_cfg) for r in rows])


def sft_args(cfg, run_dir: Path, device: str, resuming: bool = False):
    from trl import SFTConfig

    return SFTConfig(**sft_kwargs(cfg, run_dir, device, resuming))


def sft_kwargs(cfg, run_dir: Path, device: str, resuming: bool = False) -> dict:
    """mathtune's SFTConfig arguments from its config (a dict, so the benchmark can run the same settings)."""
    t = cfg.train
    early = t.early_stopping_patience > 0
    layout = batching(cfg, device)
    # per_sequence and packed: the same rows per optimizer step, fed a few at a time. The Trainer passes the step's
    # token count to every micro-batch's loss (num_items_in_batch), so the loss is the padded batch's: sum over tokens
    # / tokens.
    rows_at_once = {"per_sequence": 1, "packed": t.rows_per_forward or t.batch_size}.get(layout, t.batch_size)
    accumulate = t.grad_accum * t.batch_size // rows_at_once
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=rows_at_once,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=accumulate,
        padding_free=layout in ("padding_free", "packed"),
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        # TRL does not truncate padding-free rows (it refuses max_length there): run_train cuts them itself.
        max_length=None if layout in ("padding_free", "packed") else t.max_length,
        completion_only_loss=True,  # loss on the answer tokens only
        logging_steps=t.logging_steps,
        eval_strategy="steps",
        # Validation loss of the base model at step 0, the baseline of the loss curve. Not on a resume: the
        # checkpoint's step was evaluated before the crash and metrics.jsonl kept that row.
        eval_on_start=not resuming,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=t.bf16,
        # TRL turns gradient checkpointing on by default; we set it explicitly (off unless memory needs it).
        **{checkpointing_argument(): t.gradient_checkpointing},
        torch_compile=t.compile,
        use_liger_kernel=t.liger_kernel,
        use_cpu=device == "cpu",
        seed=t.seed,
        data_seed=t.seed,
        report_to=trackers(cfg) or "none",
        disable_tqdm=True,  # TrainProgress (train/metrics.py) shows one progress display instead
        dataloader_num_workers=0,
    )


def check_liger(cfg, device: str) -> None:
    """train.liger_kernel is applied or refused, never dropped: Liger's kernels are Triton, so a CUDA GPU."""
    if not cfg.train.liger_kernel:
        return
    if device != "cuda":
        raise MathtuneError(
            f"train.liger_kernel: needs a CUDA GPU (Liger's kernels are Triton); this run is on {device}"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise MathtuneError("train.liger_kernel: liger-kernel is not installed; pip install liger-kernel")


def checkpointing_argument() -> str:
    """TrainingArguments' name for gradient checkpointing: `activation_checkpointing` since transformers 5.24 (the old
    name stays as a deprecated alias), `gradient_checkpointing` before (the GPU image's 5.17 has only that)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last (after the adapter, optimizer,
    scheduler and RNG states), so a checkpoint whose state file is missing or torn was cut by a crash: skipped."""
    folder = run_dir / "checkpoints"
    steps = (
        sorted(
            ((int(c.name.split("-")[-1]), c) for c in folder.glob("checkpoint-*") if c.name.split("-")[-1].isdigit()),
            reverse=True,
        )
        if folder.is_dir()
        else []
    )
    for _, ckpt in steps:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (OSError, ValueError):
            print(f"mathtune: {ckpt} is incomplete (cut by a crash): skipped")
    return None


def trim_metrics(path: Path, up_to_step: int | None) -> None:
    """After a crash, keep only the rows the resumed checkpoint has already seen: no duplicate steps."""
    rows = repair_jsonl(path)
    keep = [r for r in rows if up_to_step is not None and r["step"] <= up_to_step]
    if len(keep) != len(rows):
        atomic_write_jsonl(path, keep)


def make_trainer(cfg, device: str, tokenizer, args, train_dataset, eval_dataset=None, callbacks=()):
    """The Trainer `mathtune train` runs (the training benchmark builds the same one): PEFT LoRA with train/lora.py's
    changes, the configured batch layout, and on a CPU the answer-token loss of train/loss.py (TRL's fused LM head
    projects every position there, prompt included, and computes entropies; on Triton devices it does not)."""
    from transformers import PrinterCallback, set_seed

    from mathtune.train.loss import CompletionLossTrainer, CountingSFTTrainer

    set_seed(cfg.train.seed)  # LoRA's A matrices are drawn here, so every run of a config starts from the same ones
    multiple = check_padding(cfg, device)
    model = lora_model(load_model(cfg.model, device), cfg.lora, bf16_autocast=cfg.train.bf16)
    if batching(cfg, device) == "packed":
        from mathtune.train.packing import use_packed_attention

        use_packed_attention(model, multiple)
    trainer_class = CompletionLossTrainer if device == "cpu" else CountingSFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # with disable_tqdm, it would print every log dict: metrics.jsonl has them
    if trainer.args.padding_free:
        _truncate_rows(trainer, cfg.train.max_length)
    if multiple:
        from mathtune.train.packing import pad_packed

        collate, pad_id = trainer.data_collator, trainer.data_collator.pad_token_id
        trainer.data_collator = lambda rows: pad_packed(collate(rows), multiple, pad_id)
    return trainer


def check_padding(cfg, device: str) -> int | None:
    """train.pad_to_multiple_of, applied or refused, never dropped: it pads the packed layout, on a CPU (the kernel
    caches it keeps from growing are the CPU's; the loss that skips its padding row is the CPU trainer's)."""
    multiple = cfg.train.pad_to_multiple_of
    if multiple and (device != "cpu" or batching(cfg, device) != "packed"):
        raise MathtuneError(
            f"train.pad_to_multiple_of: pads the packed layout on a CPU; this run is {batching(cfg, device)} on {device}"
        )
    return multiple


def run_train(cfg, run_dir: Path) -> dict:
    # Before torch's first matrix product in this process (`mathtune run` trains in a fresh one, isolate.py).
    onednn_cache = bound_onednn_cache(training_onednn_cache(cfg.train.pad_to_multiple_of))
    import torch
    from transformers import EarlyStoppingCallback

    from mathtune.distributed import barrier, rank_and_world
    from mathtune.distributed import is_main as main_process
    from mathtune.train.guards import NonFiniteGuard
    from mathtune.train.metrics import MetricsLogger, TrainProgress

    is_main = main_process()  # under accelerate launch every process trains; the main one writes
    check_installed(cfg)

    device = pick_device(cfg.runtime.device)
    check_liger(cfg, device)
    tokenizer = load_tokenizer(cfg.model)
    fmt = prompt_format(cfg.model, tokenizer)
    train_rows = read_jsonl(run_dir / "data" / "train.jsonl")
    val_rows = read_jsonl(run_dir / "data" / "val.jsonl")
    if not train_rows or not val_rows:
        raise MathtuneError(f"{run_dir / 'data'}: the train and validation splits must both have rows")

    resume_from = last_checkpoint(run_dir)
    if is_main:
        trim_metrics(run_dir / "metrics.jsonl", int(resume_from.name.split("-")[-1]) if resume_from else None)
    barrier()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    price = hourly_price(cfg.cost.model_dump(), gpu, rank_and_world()[1])["price_per_hour"]  # one GPU per process
    before = (
        read_jsonl(run_dir / "metrics.jsonl", True) if resume_from and (run_dir / "metrics.jsonl").is_file() else []
    )
    logger = MetricsLogger(
        run_dir / "metrics.jsonl",
        price,
        is_main,
        resumed=bool(resume_from),
        elapsed_before=before[-1]["elapsed_s"] if before else 0.0,
    )
    callbacks = [logger, NonFiniteGuard(run_dir / "checkpoints")] + ([TrainProgress()] if is_main else [])
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = make_trainer(
        cfg,
        device,
        tokenizer,
        sft_args(cfg, run_dir, device, resuming=bool(resume_from)),
        sft_dataset(train_rows, fmt, cfg.model),
        sft_dataset(val_rows, fmt, cfg.model),
        callbacks,
    )
    attach(trainer, cfg, run_dir)
    if resume_from:
        print(f"mathtune: resuming training from {resume_from}")
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.cuda.OutOfMemoryError:
        t = cfg.train
        raise MathtuneError(
            f"CUDA out of memory training with train.batch_size={t.batch_size} and train.max_length={t.max_length}: "
            f"lower train.batch_size (raise train.grad_accum to keep the effective batch), lower train.max_length, "
            f"or set train.gradient_checkpointing=true; then rerun with --resume"
        ) from None
    seconds = time.time() - start
    state = trainer.state
    planned = state.max_steps
    summary = {
        "format": fmt,
        "device": device,
        "steps": state.global_step,
        "planned_steps": planned,
        "early_stopped": state.global_step < planned,
        "best_step": _step_of(state.best_model_checkpoint),
        "best_val_loss": state.best_metric,
        # Over every session of a resumed training: the seconds before its checkpoint as metrics.jsonl logged them.
        "train_seconds": round(logger.elapsed_before + seconds, 2),
        "session_seconds": round(seconds, 2),
        "train_loss_mean": result.training_loss,
        "tokens": int(state.num_input_tokens_seen),  # every session's (loss.TokensInState)
        "batching": batching(cfg, device),
        # oneDNN's kernel cache (CPU only), as the environment gave it: a user's value is kept as written
        "onednn_cache": (int(onednn_cache) if onednn_cache.isdigit() else onednn_cache) if device == "cpu" else None,
        "resumed_from": str(resume_from) if resume_from else None,
        "mlflow_run_id": getattr(trainer, "mlflow_run_id", None),
    }
    # Under FSDP the LoRA weights are sharded: gathering them is collective, so every process takes part.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_fsdp_enabled else None
    if is_main:
        tmp = run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp, state_dict=state_dict)  # adapter_config.json + adapter_model.safetensors
        atomic_replace_dir(tmp, run_dir / "adapter")
        atomic_write_json(run_dir / "train.json", summary)
    return summary


def _truncate_rows(trainer, max_length: int) -> None:
    """TRL leaves padding-free rows untruncated: cut them at train.max_length as it cuts padded ones (keep the start,
    drop a row left with no answer token), so that every layout trains on the same tokens."""

    def cut(row):
        n = len(row["input_ids"])
        return {k: v[:max_length] for k, v in row.items() if isinstance(v, list) and len(v) == n}

    for name in ("train_dataset", "eval_dataset"):
        if getattr(trainer, name) is None:
            continue
        ds = getattr(trainer, name).map(cut)
        setattr(trainer, name, ds.filter(lambda r: any(label != -100 for label in r["labels"])))


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    tail = Path(checkpoint).name.split("-")[-1]
    return int(tail) if tail.isdigit() else None

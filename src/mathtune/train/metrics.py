"""A Trainer callback that appends every logged step to run_dir/metrics.jsonl as it happens."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from mathtune.io import append_jsonl


class MetricsLogger(TrainerCallback):
    """One JSON row per log event: train rows carry train_loss, eval rows carry val_loss.

    tokens_per_s counts the tokens of the training batches (prompt and answer, no padding) over the
    time spent training since the previous train row; evaluation time is subtracted.
    """

    def __init__(
        self,
        path: Path,
        price_per_hour: float,
        is_main: bool = True,
        resumed: bool = False,
        elapsed_before: float = 0.0,
    ):
        self.path = Path(path)
        self.price_per_hour = price_per_hour
        self.is_main = is_main
        self.start = time.time()
        self.elapsed_before = elapsed_before  # seconds trained before a resume (the last logged row's elapsed_s)
        self.last_time = None
        # A fresh run starts from 0 tokens; after a resume the first row has no rate (no reference point).
        self.last_tokens = None if resumed else 0
        self.eval_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.last_time = self.start

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.is_main or not logs:
            return
        now = time.time()
        elapsed = self.elapsed_before + now - self.start
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "elapsed_s": round(elapsed, 2)}
        if "eval_loss" in logs:
            row["val_loss"] = logs["eval_loss"]
            if "eval_mean_token_accuracy" in logs:
                row["val_mean_token_accuracy"] = logs["eval_mean_token_accuracy"]
            self.eval_seconds += logs.get("eval_runtime", 0.0)
        elif "loss" in logs:
            row["train_loss"] = logs["loss"]
            for key in ("mean_token_accuracy", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = logs[key]
            tokens = logs.get("num_tokens")
            if tokens is not None:
                row["tokens"] = int(tokens)
                if self.last_tokens is not None:
                    train_dt = max(now - self.last_time - self.eval_seconds, 1e-9)
                    row["tokens_per_s"] = round((tokens - self.last_tokens) / train_dt, 2)
                self.last_tokens = tokens
            self.last_time, self.eval_seconds = now, 0.0
        else:
            return  # the end-of-training summary: run.json has it
        row["cost_usd"] = round(elapsed / 3600 * self.price_per_hour, 4)
        append_jsonl(self.path, row)


class TrainProgress(TrainerCallback):
    """The training stage's one progress display (mathtune/progress.py): optimizer steps with an ETA, the last
    training and validation loss beside them. It replaces the Trainer's own bars, whose nested evaluation bar
    leaves escape codes in a redirected log."""

    def __init__(self):
        self.bar = None
        self.losses = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from mathtune.progress import progress

        self.bar = progress(state.max_steps, "train", "steps", initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.losses["loss"] = logs["loss"]
        if "eval_loss" in logs:
            self.losses["validation loss"] = logs["eval_loss"]
        self.bar.set_postfix_str(", ".join(f"{k} {v:.4f}" for k, v in self.losses.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""train.report_to: the experiment trackers transformers' Trainer reports to, kept inside the run directory.

tensorboard  event files under RUN_DIR/tensorboard/ (transformers' TensorBoardCallback, its folder set here);
mlflow       a local file store under RUN_DIR/mlruns/ (unless MLFLOW_TRACKING_URI names a server; MLflow 3 keeps
             its file store in maintenance and asks for MLFLOW_ALLOW_FILE_STORE, set here): the Trainer's run,
             mathtune's config as `mathtune.*` params, and after evaluation each arm's answer accuracy as a metric;
wandb, trackio  as the Trainer sets them up (their own accounts and folders).
A tracker that is not installed is a one-line error naming what to install, before anything trains.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mathtune.config import flatten
from mathtune.errors import MathtuneError

INSTALL = {
    "tensorboard": ("tensorboard", "pip install 'mathtune[tensorboard]'"),
    "mlflow": ("mlflow", "pip install 'mathtune[mlflow]'"),
    "wandb": ("wandb", "pip install wandb"),
    "trackio": ("trackio", "pip install trackio"),
}


def trackers(cfg) -> list[str]:
    return [t for t in cfg.train.report_to if t != "none"]


def check_installed(cfg) -> None:
    for name in trackers(cfg):
        module, how = INSTALL[name]
        if importlib.util.find_spec(module) is None:
            raise MathtuneError(f"train.report_to: {name} is not installed; {how}")


def mlflow_uri(run_dir: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # read by mlflow when it opens the file store
    return Path(run_dir).resolve().joinpath("mlruns").as_uri()


def attach(trainer, cfg, run_dir: Path) -> None:
    """Point the Trainer's tracker callbacks into the run directory; with mlflow, log mathtune's config too."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(Path(run_dir) / "tensorboard")
    if "mlflow" not in trackers(cfg):
        return
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri(run_dir))

    class ConfigParams(TrainerCallback):
        """After the Trainer's MLflowCallback has opened its run: mathtune's config as params, the run id kept."""

        def on_train_begin(self, args, state, control, **kwargs):
            run = mlflow.active_run()
            if run is not None and state.is_world_process_zero:
                params = {f"mathtune.{k}": str(v)[:500] for k, v in flatten(cfg.model_dump(mode="json")).items()}
                mlflow.log_params(params)
                trainer.mlflow_run_id = run.info.run_id

    trainer.add_callback(ConfigParams())


def log_accuracies(cfg, run_dir: Path, summary: dict) -> None:
    """Each arm's answer accuracy into the training's MLflow run (train.json keeps its id)."""
    if "mlflow" not in trackers(cfg):
        return
    import json

    import mlflow

    run_id = json.loads((Path(run_dir) / "train.json").read_text()).get("mlflow_run_id")
    if not run_id:
        return
    mlflow.set_tracking_uri(mlflow_uri(run_dir))
    with mlflow.start_run(run_id=run_id):
        for arm, s in summary.items():
            mlflow.log_metric(f"accuracy_{arm}", s["accuracy"])
            mlflow.log_metric(f"correct_{arm}", s["correct"])

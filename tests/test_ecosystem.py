"""Fitting the ecosystem: experiment trackers, a merged-model export with a model card, packaging ranges, clean logs."""

import re

import pytest
import tomllib
import torch

from mathtune.io import read_json

from conftest import ROOT
from conftest import mathtune_cli as mathtune

TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, gsm8k):
    run = tmp_path_factory.mktemp("eco") / "run"
    res = mathtune(
        "run",
        "--config",
        TINY,
        "--out",
        run,
        f"data.path={gsm8k}",
        "eval.limit=3",
        "train.report_to=[tensorboard, mlflow]",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return run, res


def test_tensorboard_event_files_hold_the_losses(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars
    assert len(events.Scalars("train/loss")) == 4 and events.Scalars("eval/loss")[0].value > 0


def test_mlflow_run_holds_the_config_and_the_accuracies(tracked_run, monkeypatch):
    import mlflow

    run, _ = tracked_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((run / "mlruns").as_uri())
    logged = mlflow.get_run(read_json(run / "train.json")["mlflow_run_id"]).data
    assert logged.params["mathtune.lora.r"] == "4" and "mathtune.train.learning_rate" in logged.params
    assert logged.metrics["accuracy_finetuned"] == read_json(run / "eval.json")["finetuned"]["accuracy"]
    assert "loss" in logged.metrics


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, gsm8k):
    res = mathtune("run", "--config", TINY, "--out", tmp_path / "r", f"data.path={gsm8k}", "train.report_to=wandb")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "mathtune: error: train.report_to: wandb is not installed; pip install wandb"
    ]


def test_the_log_is_clean_when_redirected(tracked_run):
    _, res = tracked_run
    log = res.stdout + res.stderr
    assert "\x1b[A" not in log and "\r" not in log and "FutureWarning" not in log
    assert re.search(r"^train: 4/4 steps \(100%\)", log, re.M)  # one progress display, one line per update


def test_export_merges_the_adapter_and_answers_the_same(tracked_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mathtune.models import TINY as TINY_MODEL
    from mathtune.models import ensure_local

    run, _ = tracked_run
    out = tmp_path / "merged"
    res = mathtune("export", run, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(ensure_local(TINY_MODEL))
    unmerged = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(merged.generate(ids, **kw), unmerged.generate(input_ids=ids, **kw))
    card = (out / "README.md").read_text()
    analysis = read_json(run / "analysis.json")
    assert "base_model: tiny-random-llama" in card and "McNemar p" in card and "--protocol chat" in card
    assert f"{analysis['models'][-1]['correct']}/{analysis['models'][-1]['n']}" in card
    res = mathtune("export", run, "--out", out)
    assert res.returncode == 2 and "not an empty folder" in res.stderr  # nothing overwritten


def test_export_adapter_only(tracked_run, tmp_path):
    run, _ = tracked_run
    res = mathtune("export", run, "--out", tmp_path / "a", "--adapter-only")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert "library_name: peft" in (tmp_path / "a" / "README.md").read_text()


def test_requirements_are_ranges_and_the_lock_pins_them():
    """pip install mathtune keeps a user's torch: no exact pins in the package, none on torch at all; the exact
    versions live in requirements.lock (pip freeze), which make setup installs from."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    assert not [d for d in deps if "==" in d]
    assert [d for d in project["dependencies"] if d.startswith("torch")] == ["torch>=2.6"]
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert not [line for line in lock if line.startswith("torch==")] and all("==" in line for line in lock)
    names = {re.split(r"[<>=\[]", d)[0].lower().replace("_", "-") for d in project["dependencies"]} - {"torch"}
    locked = {line.split("==")[0].lower().replace("_", "-") for line in lock}
    assert names <= locked
    assert "-c requirements.lock" in (ROOT / "Makefile").read_text()

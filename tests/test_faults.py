"""Numerical and memory faults: a one-line error that says what happened and what to change, nothing lost."""

import pytest
import torch

from mathtune.errors import MathtuneError
from mathtune.evaluate.stage import oom_explained

from conftest import ROOT, mathtune_cli


def test_non_finite_loss_stops_training_and_keeps_the_good_checkpoint(tmp_path, gsm8k):
    out = tmp_path / "run"
    # Adam moves each weight by about the learning rate on its first step: 1e30 overflows the next forward pass.
    res = mathtune_cli(
        "run",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--out",
        str(out),
        f"data.path={gsm8k}",
        "train.learning_rate=1e30",
        "train.eval_steps=1",
    )
    assert res.returncode == 2, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]  # progress bars are closed first: the error is the last line
    assert "Traceback" not in res.stderr and "non-finite gradient" in line and "lower train.learning_rate" in line
    assert "checkpoint-1" in line
    ckpt = out / "checkpoints" / "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter_model.safetensors").values())
    assert not (out / "adapter").exists()


def test_cuda_oom_in_generation_names_what_to_lower():
    class E:
        batch_size, max_new_tokens = 64, 512

    def rows():
        yield 0, [("text", 3, False)]
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    got = oom_explained(rows(), E, 300)
    assert next(got) == (0, [("text", 3, False)])  # rows before the fault are passed on (and kept)
    with pytest.raises(
        MathtuneError,
        match=r"eval.batch_size=64, prompts up to 300 tokens and "
        r"eval.max_new_tokens=512: lower eval.batch_size",
    ):
        next(got)


def test_no_code_runs_from_files():
    """No eval/exec anywhere in the package; torch.load only with weights_only=True; no remote code by default."""
    import ast

    from mathtune.config import ModelConfig

    for path in (ROOT / "src" / "mathtune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                assert name not in ("eval", "exec", "compile") or isinstance(node.func, ast.Attribute), path
                if name == "load" and getattr(node.func.value, "id", None) == "torch":
                    assert any(
                        k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords
                    ), path
    assert ModelConfig().trust_remote_code is False


@pytest.mark.slow
def test_a_run_writes_only_its_run_directory_and_caches(tmp_path, gsm8k):
    """HOME, the working directory and the model cache all fresh: after a whole run, nothing new outside
    the run directory except under the caches ($MATHTUNE_CACHE, ~/.cache: matplotlib's font list)."""
    import os

    home, cwd, cache = tmp_path / "home", tmp_path / "cwd", tmp_path / "cache"
    for d in (home, cwd, cache):
        d.mkdir()
    env = dict(
        os.environ,
        HOME=str(home),
        MATHTUNE_CACHE=str(cache),
        XDG_CACHE_HOME=str(home / ".cache"),
        MPLCONFIGDIR=str(home / ".cache" / "matplotlib"),
    )
    env.pop("HF_HOME", None)
    res = mathtune_cli(
        "run", "--config", str(ROOT / "configs" / "tiny.yaml"), "--out", "run", f"data.path={gsm8k}", cwd=cwd, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.name for p in cwd.iterdir()] == ["run"]
    outside = [p for p in home.rglob("*") if p.is_file() and ".cache" not in p.relative_to(home).parts]
    assert outside == []

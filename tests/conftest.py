import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# GSM8K's original files, beside the checkout (never copied into the project).
GSM8K = Path(os.environ.get("MATHTUNE_GSM8K", ROOT.parent / "shared" / "data" / "gsm8k")).resolve()


@pytest.fixture(scope="session")
def gsm8k() -> Path:
    assert (GSM8K / "train.jsonl").is_file(), f"GSM8K not found at {GSM8K} (set MATHTUNE_GSM8K)"
    return GSM8K


@pytest.fixture(autouse=True)
def no_onednn_cache_setting(monkeypatch):
    """Each test starts with oneDNN's cache variables unset, as a user's shell has them, and what a training stage
    run in this process sets there (allocator.bound_onednn_cache) is undone after it."""
    from mathtune.allocator import ONEDNN_CACHE, ONEDNN_CACHE_CHOSEN_BY

    for name in (ONEDNN_CACHE, ONEDNN_CACHE_CHOSEN_BY):
        monkeypatch.setenv(name, "")  # recorded first, so that the undo restores the variable's absence too
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tiny_overrides(gsm8k) -> list[str]:
    return [f"data.path={gsm8k}"]


def mathtune_cli(*args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """`python -m mathtune.cli ARGS` in its own process, as a user runs it (exit code, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "mathtune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def bench_script(name: str, *args, timeout=600) -> subprocess.CompletedProcess:
    """`python bench/NAME ARGS` in its own process group (exit code, stdout, stderr). On a timeout the whole group is
    killed: a benchmark's own child processes (a `mathtune eval` it runs) would otherwise outlive the test."""
    cmd = [sys.executable, str(ROOT / "bench" / name), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def python_on_glibc(code: str) -> str:
    """stdout of `python -c CODE` in a fresh process on glibc's malloc (no LD_PRELOAD, so no tcmalloc): memory
    figures there are that code's alone."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout

import os
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
    """`python bench/NAME ARGS` in its own process (exit code, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )

"""isolate.in_own_process: the function runs in another process, and its outcome comes back as this one's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathtune.errors import MathtuneError
from mathtune.isolate import in_own_process


def write_pid(path: Path) -> None:
    Path(path).write_text(str(os.getpid()))


def bad_input(message: str) -> None:
    raise MathtuneError(message)


def bug() -> None:
    raise ValueError("a bug")


def interrupted() -> None:
    raise KeyboardInterrupt


def test_runs_in_another_process(tmp_path):
    in_own_process(write_pid, tmp_path / "pid")
    assert int((tmp_path / "pid").read_text()) != os.getpid()


def test_bad_input_comes_back_as_the_same_one_line_error():
    with pytest.raises(MathtuneError, match=r"^train\.epochs: must be > 0$"):
        in_own_process(bad_input, "train.epochs: must be > 0")


def test_a_crash_comes_back_with_its_traceback():
    with pytest.raises(ChildProcessError, match="ValueError: a bug"):
        in_own_process(bug)


def test_an_interruption_comes_back_as_one():
    with pytest.raises(KeyboardInterrupt):
        in_own_process(interrupted)


def pid_then_sleep(path: Path) -> None:
    write_pid(path)
    time.sleep(600)


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_the_child_dies_with_its_parent(tmp_path):
    """A killed `mathtune run` leaves no training behind that would keep writing into the run it is resumed in."""
    pid_file = tmp_path / "pid"
    code = (
        "from test_isolate import pid_then_sleep\n"
        "from mathtune.isolate import in_own_process\n"
        "if __name__ == '__main__':\n"
        f"    in_own_process(pid_then_sleep, {str(pid_file)!r})\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 60
    while not pid_file.is_file() and time.time() < deadline:
        time.sleep(0.2)
    child = int(pid_file.read_text())  # written after prctl, which the child runs first
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while Path(f"/proc/{child}").exists() and time.time() < deadline:
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":  # dead, not yet reaped by init
            break
        time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z", f"child {child} outlived its parent"


@pytest.mark.parametrize("own", [True, False])
def test_run_trains_in_its_own_process_unless_told_not_to(tmp_path, monkeypatch, own):
    from mathtune import run
    from mathtune.config import load_config

    from conftest import ROOT

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"runtime.train_in_own_process={str(own).lower()}"])
    where = []
    monkeypatch.setattr(run, "run_stage", lambda cfg, run_dir, s: where.append((s.name, "here")))
    monkeypatch.setattr(run, "in_own_process", lambda fn, cfg, run_dir, name: where.append((name, "own")))
    run.run_all(cfg, tmp_path)
    assert where == [("data", "here"), ("train", "own" if own else "here"), ("eval", "here"), ("report", "here")]

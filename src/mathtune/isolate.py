"""A function run in a fresh process of its own, for a stage whose leftovers must not weigh on the next one.

Training leaves ~0.34 GB behind in its process after two steps of the demo's training, more as it meets more
shapes, that no Python object owns and no allocator can hand back: oneDNN's primitive cache, ideep's cache of
matmul descriptors (1,024 entries, not bounded by oneDNN's variable) and ATen's brgemm kernels for flash attention,
one per shape, all kept for the life of the process (bench/train_leftover_memory.py measures it). `mathtune run`
therefore trains in a child process; the evaluation after it starts from a clean one. Under `accelerate launch`
the stages stay in the launched processes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import traceback

from mathtune.errors import MathtuneError

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (a killed `mathtune run` must not leave a training
    behind that keeps writing into the run directory it will be resumed in)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(fn, args: tuple, parent: int, send) -> None:
    _die_with(parent)
    try:
        fn(*args)
    except MathtuneError as e:  # bad input: the parent reports it as its own, in one line
        send.send(("error", str(e)))
        sys.exit(2)
    except KeyboardInterrupt:
        send.send(("interrupted", ""))
        sys.exit(130)
    except BaseException:
        send.send(("crash", traceback.format_exc()))  # printed once, by the parent's ChildProcessError
        sys.exit(1)
    send.send(("ok", ""))


def in_own_process(fn, *args) -> None:
    """fn(*args) in a spawned process (fn and args picklable; fn returns nothing). A MathtuneError there is raised
    here with its message, an interruption as KeyboardInterrupt, any other failure as ChildProcessError with the
    child's traceback."""
    ctx = multiprocessing.get_context("spawn")  # not fork: the parent may hold OpenMP threads and open handles
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, os.getpid(), send))
    sys.stdout.flush()
    sys.stderr.flush()
    proc.start()
    send.close()
    try:
        outcome = recv.recv()
        proc.join()
    except EOFError:  # the child died without a word (killed)
        outcome = None
        proc.join()
    except KeyboardInterrupt:  # Ctrl-C reaches both processes: let the child stop, then stop
        proc.join(30)
        proc.kill()
        raise
    kind, text = outcome or ("crash", f"exit code {proc.exitcode}")
    if kind == "error":
        raise MathtuneError(text)
    if kind == "interrupted":
        raise KeyboardInterrupt
    if kind == "crash" or proc.exitcode != 0:
        raise ChildProcessError(f"{getattr(fn, '__name__', fn)} failed in its own process:\n{text}")

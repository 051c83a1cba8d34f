"""Run mathtune's heavy commands under tcmalloc when it is installed, as `torch.backends.xeon.run_cpu
--enable_tcmalloc` and Intel's PyTorch launcher do: by LD_PRELOAD, so the process restarts itself once.

Why: glibc's malloc keeps the memory of freed activations in fragmented arenas and hands it back slowly. On SmolLM2
LoRA training on 2 cores tcmalloc ran 1.3x faster (bench/results/train_throughput_cpu.json, `allocator_glibc`).
Debian/Ubuntu: `apt-get install libtcmalloc-minimal4` (`make setup` does). MATHTUNE_ALLOCATOR=system turns it off.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "MATHTUNE_ALLOCATOR"
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


def find_tcmalloc() -> str | None:
    """The shared library's name as the dynamic loader finds it (LD_PRELOAD takes a bare soname), or None."""
    for name in LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def current() -> str:
    """What this process runs on: "tcmalloc" once restarted under it, else "system" (glibc's malloc)."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def restart_under_tcmalloc(argv: list[str]) -> None:
    """Replace this process by `python -m mathtune.cli ARGV` with tcmalloc preloaded; return if that is off, done
    already, or not possible (not Linux, library not installed)."""
    if sys.platform != "linux" or os.environ.get(ENV) == "system" or current() == "tcmalloc":
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [lib, os.environ.get("LD_PRELOAD")])), **{ENV: "tcmalloc"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "mathtune.cli", *argv], env)

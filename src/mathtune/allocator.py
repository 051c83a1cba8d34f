"""Process memory settings of mathtune's heavy commands, made before torch starts.

tcmalloc, when it is installed, as `torch.backends.xeon.run_cpu --enable_tcmalloc` and Intel's PyTorch launcher do:
by LD_PRELOAD, so the process restarts itself once. Why: glibc's malloc keeps the memory of freed activations in
fragmented arenas and hands it back slowly. On SmolLM2 LoRA training on 2 cores tcmalloc ran 1.3x faster
(bench/results/train_throughput_cpu.json, `allocator_glibc`). Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`
(`make setup` does). MATHTUNE_ALLOCATOR=system turns it off.

oneDNN's primitive cache, capped (bound_onednn_cache). oneDNN (torch's CPU matrix products) keeps each compiled kernel
for reuse, up to 1024 by default. Packed training rows give every forward its own token count, so its own kernels:
the cache filled with kernels never used again, and resident memory grew step after step.

Freed memory handed back between stages and between evaluated models (release_free_memory): tcmalloc keeps freed
pages for reuse, so the training stage's pages stayed resident through evaluation and counted in its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys

ENV = "MATHTUNE_ALLOCATOR"
ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# One forward's kernels: a model's layers share a handful of shapes, so the ~30 layers still reuse them. On SmolLM2
# LoRA training with unpadded packed rows, 32 steps: peak RSS 3.31 GB at oneDNN's 1024, 2.92 GB at 64, the same loss
# to the last bit and the same speed within noise (bench/results/train_onednn_cache_cpu.json); 0 (no cache) made a
# step several times slower. With train.pad_to_multiple_of the shapes repeat and the cap costs speed: 1.08-1.17x
# faster at 1024 in three runs, 2.65 GB against 2.37 (bench/results/train_onednn_cache_padded_cpu.json). A cap chosen
# by the padding is not built yet.
ONEDNN_CACHE_SIZE = 64
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


def bound_onednn_cache() -> None:
    """Cap oneDNN's primitive cache at ONEDNN_CACHE_SIZE unless the environment already sets it. oneDNN reads the
    variable when it builds its cache, at the first matrix product: call this before any."""
    os.environ.setdefault(ONEDNN_CACHE, str(ONEDNN_CACHE_SIZE))


def release_free_memory() -> str | None:
    """Collect garbage and hand the allocator's free pages back to the OS: between stages, so that a stage's memory
    starts from what is alive rather than from what the stage before it freed (tcmalloc keeps freed pages for
    reuse). Returns which call did it ("tcmalloc" or "glibc"), or None where neither is there."""
    gc.collect()
    process = ctypes.CDLL(None)
    for symbol, name in (("MallocExtension_ReleaseFreeMemory", "tcmalloc"), ("malloc_trim", "glibc")):
        fn = getattr(process, symbol, None)
        if fn is not None:
            fn(*([0] if name == "glibc" else []))
            return name
    return None

"""Process memory settings of mathtune's heavy commands, made before torch starts.

tcmalloc, when it is installed, as `torch.backends.xeon.run_cpu --enable_tcmalloc` and Intel's PyTorch launcher do:
by LD_PRELOAD, so the process restarts itself once. Why: glibc's malloc keeps the memory of freed activations in
fragmented arenas and hands it back slowly. On SmolLM2 LoRA training on 2 cores tcmalloc ran 1.3x faster
(bench/results/train_throughput_cpu.json, `allocator_glibc`). Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`
(`make setup` does). MATHTUNE_ALLOCATOR=system turns it off.

oneDNN's primitive cache, sized by the shapes (bound_onednn_cache, training_onednn_cache). oneDNN (torch's CPU matrix
products) keeps each compiled kernel for reuse, up to 1024 by default. Unpadded packed training rows and generation
give every forward its own token count, so its own kernels: the cache filled with kernels never used again, and
resident memory grew step after step; they run capped at 64. Training rows padded to a multiple
(train.pad_to_multiple_of) repeat their shapes, and their kernels come back: they train at oneDNN's default.

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
# "mathtune" when mathtune chose ONEDNN_CACHE's value, so that the training stage may choose again; a value set
# without it is the user's, and stands.
ONEDNN_CACHE_CHOSEN_BY = "MATHTUNE_ONEDNN_CACHE_CHOSEN_BY"
# One forward's kernels: a model's layers share a handful of shapes, so the ~30 layers still reuse them. On SmolLM2
# LoRA training with unpadded packed rows, 32 steps: peak RSS 3.31 GB at oneDNN's 1024, 2.92 GB at 64, the same loss
# to the last bit and the same speed within noise (bench/results/train_onednn_cache_cpu.json); 0 (no cache) made a
# step several times slower.
ONEDNN_CACHE_SIZE = 64
# With train.pad_to_multiple_of the shapes repeat, and a cap of 64 evicted kernels that came back: at oneDNN's
# default the padded demo config trained faster in 5 of 5 pairs, 1.05-1.15x, 2.65 GB against 2.37, the same loss to
# the last bit (bench/results/train_onednn_cache_padded_cpu.json).
ONEDNN_CACHE_REPEATING_SHAPES = 1024
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


def bound_onednn_cache(size: int = ONEDNN_CACHE_SIZE) -> str:
    """Set oneDNN's primitive cache capacity to `size` unless the user set it (a value mathtune chose before may be
    chosen again). oneDNN reads the variable when it builds its cache, at a process's first matrix product: call
    this before any. Returns the capacity the process runs with."""
    if os.environ.get(ONEDNN_CACHE) is None or os.environ.get(ONEDNN_CACHE_CHOSEN_BY) == "mathtune":
        os.environ[ONEDNN_CACHE] = str(size)
        os.environ[ONEDNN_CACHE_CHOSEN_BY] = "mathtune"
    return os.environ[ONEDNN_CACHE]


def training_onednn_cache(pad_to_multiple_of: int | None) -> int:
    """The capacity a training with this train.pad_to_multiple_of runs fastest at in bounded memory: padded shapes
    repeat and their kernels come back; unpadded ones are each met once."""
    return ONEDNN_CACHE_SIZE if pad_to_multiple_of is None else ONEDNN_CACHE_REPEATING_SHAPES


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

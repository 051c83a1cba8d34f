"""What LoRA training leaves behind in its process once it has ended: memory allocated during the train stage and
never freed, after the stage returned, garbage was collected and freed pages were handed back (allocator.py), by
owner. The reason `mathtune run` trains in a process of its own (src/mathtune/isolate.py).

The demo config (configs/demo-cpu.yaml: SmolLM2, packed rows, bf16 autocast, oneDNN's cache capped as the CLI caps
it) for a few optimizer steps, traced by memray with native stacks (`pip install memray`, a test dependency).
An allocation's owner is the first of these found in its native stack:
- onednn_primitive_cache: oneDNN's primitives (JIT-compiled kernels), the cache ONEDNN_PRIMITIVE_CACHE_CAPACITY bounds;
- ideep_matmul_descriptors: ideep's cache of matmul primitive descriptors (1,024 entries; the variable above does
  not bound it);
- aten_brgemm_kernels: ATen's brgemm kernels (flash attention on the CPU), one per shape, unbounded;
- mkl_buffers: MKL's per-thread gemm buffers;
- other: the rest (Python's interned strings and module objects, tokenizers, ...).

    python bench/train_leftover_memory.py --gsm8k ../shared/data/gsm8k [--steps 2]
Writes bench/results/train_leftover_memory_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import record  # bench/record.py: a script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
OWNERS = (  # (owner, a substring of a native frame's function name), the first match wins
    ("onednn_primitive_cache", "primitive_cache_t"),
    ("onednn_primitive_cache", "primitive_hashing::key_t"),
    ("ideep_matmul_descriptors", "ideep::utils::computation_cache"),
    ("aten_brgemm_kernels", "at::native::cpublas::KernelCache"),
    ("mkl_buffers", "mkl_serv_allocate"),
)


def owner(frames: list[str]) -> str:
    for name, marker in OWNERS:
        if any(marker in f for f in frames):
            return name
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps (a validation pass after each)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_leftover_memory_cpu.json"))
    args = ap.parse_args()
    try:
        import memray
    except ImportError:
        sys.exit("memray is not installed: pip install memray")
    from mathtune import allocator, memory

    allocator.bound_onednn_cache()  # as the CLI does, before torch's first matrix product

    from mathtune.config import load_config
    from mathtune.run import open_run, run_named_stage

    overrides = [
        f"data.path={args.gsm8k}",
        f"data.max_train_rows={8 * args.steps}",
        "data.max_val_rows=8",
        f"train.max_steps={args.steps}",
        "train.eval_steps=1",
    ]
    cfg = load_config(args.config, overrides)
    work = Path(tempfile.mkdtemp(prefix="mathtune-leftover-"))
    run = work / "run"
    open_run(cfg, run, resume=False, force=False)
    run_named_stage(cfg, run, "data")
    import datasets  # noqa: F401  (imported before tracing: importing is not what training leaves)
    import peft  # noqa: F401
    import trl  # noqa: F401

    from mathtune.train import stage  # noqa: F401

    allocator.release_free_memory()
    before = memory.resident_gb()
    trace = work / "train.bin"
    with memray.Tracker(trace, native_traces=True):
        run_named_stage(cfg, run, "train")
        allocator.release_free_memory()
    after = memory.resident_gb()

    by_owner, count = Counter(), 0
    for leak in memray.FileReader(trace).get_leaked_allocation_records(merge_threads=True):
        frames = [f[0] for f in leak.native_stack_trace(max_stacks=40)]
        by_owner[owner(frames)] += leak.size
        count += 1
    total = sum(by_owner.values())
    result = {
        "benchmark": "train_leftover_memory_cpu",
        "config": os.path.relpath(args.config, ROOT),
        "overrides": overrides,
        "steps": args.steps,
        "allocator": allocator.current(),
        "onednn_cache": os.environ.get(allocator.ONEDNN_CACHE),
        "leftover_mb": round(total / 1e6, 1),
        "leftover_allocations": count,
        "by_owner_mb": {k: round(v / 1e6, 1) for k, v in by_owner.most_common()},
        "rss_gb_before_train": before,
        "rss_gb_after_train": after,
    }
    result = record.write(args.out, result)
    print(
        json.dumps({k: result[k] for k in ("leftover_mb", "by_owner_mb", "rss_gb_before_train", "rss_gb_after_train")})
    )


if __name__ == "__main__":
    main()

"""oneDNN's kernel cache on mathtune's training path, measured in pairs against this machine's drift.

bench/train_throughput.py's `mathtune` setting (the Trainer `mathtune train` builds, at the cache its training stage
chooses for the config: allocator.training_onednn_cache) and its `mathtune_onednn_cache_64` lever (the same, capped
at 64 kernels), each in its own process, pair after pair, in the order A B, B A, A B, ... so that a steady drift of
the machine's speed favours neither. Each pair's ratio is its two runs'; the summary counts the pairs the uncapped
cache won. Writes bench/results/train_onednn_cache_pairs_cpu.json.

    python bench/train_onednn_cache_pairs.py --gsm8k ../shared/data/gsm8k [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHOSEN, CAPPED = "mathtune", "mathtune_onednn_cache_64"
KEYS = ("tokens", "seconds", "tokens_per_s", "peak_rss_gb", "final_loss", "onednn_cache", "allocator")


def one_setting(args, name: str, tmp: Path) -> dict:
    """One setting of bench/train_throughput.py, in its own process (that script starts one per setting)."""
    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--gsm8k", args.gsm8k]
    cmd += ["--config", args.config, "--rows", str(args.rows), "--steps", str(args.steps), "--only", name]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    setting = json.loads(out.read_text())["settings"][0]
    print(f"{name}: {setting['tokens_per_s']} tokens/s, peak RSS {setting['peak_rss_gb']} GB", flush=True)
    return {k: setting[k] for k in KEYS}


def pair(chosen: dict, capped: dict, order: str) -> dict:
    return {
        "order": order,
        "chosen": chosen,
        "capped_64": capped,
        "speed_ratio_chosen_over_64": round(chosen["tokens_per_s"] / capped["tokens_per_s"], 3),
        "same_final_loss": chosen["final_loss"] == capped["final_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_onednn_cache_pairs_cpu.json"))
    args = ap.parse_args()
    from mathtune.allocator import training_onednn_cache
    from mathtune.config import load_config
    from mathtune.io import atomic_write_json

    chosen_cache = training_onednn_cache(load_config(args.config).train.pad_to_multiple_of)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mathtune-pairs-") as tmp:
        for i in range(args.pairs):
            first, second = (CHOSEN, CAPPED) if i % 2 == 0 else (CAPPED, CHOSEN)
            got = {name: one_setting(args, name, Path(tmp)) for name in (first, second)}
            order = " then ".join(str(got[name]["onednn_cache"]) for name in (first, second))
            runs.append(pair(got[CHOSEN], got[CAPPED], order))
    ratios = [r["speed_ratio_chosen_over_64"] for r in runs]
    out = {
        "benchmark": "train_onednn_cache_pairs_cpu",
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "chosen_cache": chosen_cache,
        "runs": runs,
        "speed_ratios_chosen_over_64": ratios,
        "faster_than_capped": f"{sum(x > 1 for x in ratios)} of {len(ratios)}",
        "peak_rss_gb": {
            "chosen": [r["chosen"]["peak_rss_gb"] for r in runs],
            "capped_64": [r["capped_64"]["peak_rss_gb"] for r in runs],
        },
        "command": " ".join(["python", "bench/train_onednn_cache_pairs.py", *sys.argv[1:]]),
        "machine": machine(),
        "date": date.today().isoformat(),
    }
    atomic_write_json(Path(args.out), out)
    print(json.dumps({k: out[k] for k in ("chosen_cache", "speed_ratios_chosen_over_64", "faster_than_capped")}))


def machine() -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from train_throughput import machine as bench_machine

    return bench_machine()


if __name__ == "__main__":
    main()

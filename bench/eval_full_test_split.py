"""The whole GSM8K test split (1,319 questions) with `mathtune eval`: SmolLM2, chat protocol, greedy, 256 new tokens,
the compact decoder, in --dtype (float32: the full study's; bfloat16: the AMX path), at the batch size measured fastest.

1. batch sizes: the first --sweep questions at each of --batch-sizes (tokens/s from each run's summary);
2. the full split at the fastest, timed as a user runs it (`mathtune eval --model ... --out`, wall seconds, peak RSS);
   or, with --from-run RUN, the base model's evaluation inside a finished `mathtune run` whose config is these same
   settings at that batch size (the full study: the same command's work, timed by the eval stage from model load to
   the last answer; its peak RSS is the whole run's, training included, so it is not reported);
3. the static engine (`--decoder static`, model.generate) on the first 64 questions at the same batch size: how many
   of those 64 answers (extracted numbers) and completions are the same as the full run's;
4. with --reference (the full study's float32 base predictions), how many of the full run's answers are the same;
5. in float32, right after the sweep: its questions at the fastest batch size with torch's own linear layers
   (eval.cpu_linear=aten, MKL) against the sweep's oneDNN ones (evaluate/cpu_linear.py): speed ratio, same answers.
Writes bench/results/eval_full_test_split.json (float32) or eval_full_test_split_bf16.json.

    python bench/eval_full_test_split.py --gsm8k ../shared/data/gsm8k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from mathtune import memory
from mathtune.config import generation_dtype, load_config
from mathtune.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def mathtune_eval(gsm8k: str, config: str, out: Path, *extra: str) -> dict:  # extra: key=value overrides
    """Run `mathtune eval` in its own process; its summary plus the command's wall seconds and peak RSS."""
    cmd = [
        sys.executable,
        "-m",
        "mathtune.cli",
        "eval",
        "--model",
        MODEL,
        "--protocol",
        "chat",
        "--data",
        gsm8k,
        "--config",
        config,
        "--out",
        str(out),
        *extra,
    ]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:  # the process's own high-water mark, read while it runs
            peak = max(peak, memory.peak_gb(proc.pid) or 0.0)
            time.sleep(0.5)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    summary.update(wall_seconds=round(wall, 1), peak_rss_gb=peak, command=" ".join(["mathtune", *cmd[3:]]))
    print(
        f"{' '.join(extra)}: {summary['generated_tokens']} tokens in {summary['seconds']} s = "
        f"{summary['tokens_per_s']} tokens/s ({wall:.0f} s wall)",
        flush=True,
    )
    return summary


RATE_KEYS = ("tokens_per_s", "seconds", "generated_tokens", "peak_rss_gb")  # what a sweep entry keeps of a summary


def predictions(path: Path) -> dict:
    """A predictions file's rows by question id (mathtune's own JSONL reader: a bad line names the file and line)."""
    return {r["id"]: r for r in read_jsonl(path)}


def from_run(run: Path, cfg, work: Path) -> dict | None:
    """The base model's summary from a finished run (its predictions copied to work/full.jsonl), or None (with the
    reason printed) when that run's evaluation is not this benchmark's: any model or eval setting that differs from
    `cfg` (the settings `mathtune eval` runs with here), or no test question left out."""
    import yaml

    # eval.protocol is compared by what it resolved to (the summary's), as a run's "auto" is the chat protocol here.
    want = cfg.model_dump()
    want["eval"].pop("protocol")
    have = yaml.safe_load((run / "config.yaml").read_text())
    for c in (want, have):  # eval.dtype compared by the dtype it resolves to ("model": model.dtype)
        if c["eval"].get("dtype", "model") == "model":
            c["eval"]["dtype"] = c["model"]["dtype"]
    differs = [
        f"{section}.{k}={have[section].get(k)!r} (wanted {v!r})"
        for section in ("model", "eval")
        for k, v in want[section].items()
        if have[section].get(k) != v
    ]
    base = json.loads((run / "eval.json").read_text()).get("base") if (run / "eval.json").exists() else None
    if base is not None and base["protocol"] != "chat":
        differs.append(f"eval.protocol={base['protocol']!r} (wanted 'chat')")
    if base is None or differs:
        print(f"{run} is not this benchmark's evaluation: {', '.join(differs) or 'no base evaluation'}", flush=True)
        return None
    (work / "full.jsonl").write_text((run / "predictions" / "base.jsonl").read_text())
    return {
        **base,
        "wall_seconds": base["seconds"],
        "peak_rss_gb": None,
        "command": f"mathtune run --config {run / 'config.yaml'} (its base evaluation: eval.json)",
    }


def sweep_agreement(work: Path, sizes: list[int]) -> dict:
    """For each pair of swept batch sizes, on how many of the sweep's questions the extracted answers are the same:
    whether a question's greedy answer depends on the batch it is decoded in (float32 on this CPU: no; bfloat16:
    yes, its matrix products round differently with the batch's shape)."""
    runs = {b: predictions(work / f"sweep-{b}.jsonl") for b in sizes}
    return {
        f"{a} vs {b}": sum(runs[a][i]["extracted"] == runs[b][i]["extracted"] for i in runs[a])
        for n, a in enumerate(sizes)
        for b in sizes[n + 1 :]
    }


def compare_linear(args, work: Path, onednn: dict, batch_size: int, *overrides: str) -> dict:
    """The sweep's questions at its fastest batch size again, with torch's own float32 linear layers
    (eval.cpu_linear=aten: MKL) instead of oneDNN's (the sweep's, eval.cpu_linear's default on CPU), right after
    the sweep: the speed ratio and how many answers and completions are the same."""
    aten = mathtune_eval(
        args.gsm8k,
        args.config,
        work / "sweep-aten.jsonl",
        *overrides,
        f"eval.limit={args.sweep}",
        f"eval.batch_size={batch_size}",
        "eval.cpu_linear=aten",
    )
    a, o = predictions(work / "sweep-aten.jsonl"), predictions(work / f"sweep-{batch_size}.jsonl")
    return {
        "questions": args.sweep,
        "batch_size": batch_size,
        "aten": {k: aten[k] for k in RATE_KEYS},
        "onednn": onednn,
        "ratio": round(aten["seconds"] / onednn["seconds"], 3),
        "same_answers": sum(a[i]["extracted"] == o[i]["extracted"] for i in a),
        "same_completions": sum(a[i]["completion"] == o[i]["completion"] for i in a),
    }


def reference(full: dict, path: Path) -> dict | None:
    """The full run's answers against another evaluation's of the same questions (the full study's float32 base
    evaluation by default): accuracy of each, and how many extracted answers are the same."""
    if not path.exists():
        return None
    ref = predictions(path)
    ids = [i for i in full if i in ref]
    return {
        "predictions": os.path.relpath(path, ROOT),
        "n": len(ids),
        "same_answers": sum(full[i]["extracted"] == ref[i]["extracted"] for i in ids),
        "correct_here": sum(full[i]["correct"] for i in ids),
        "correct_there": sum(ref[i]["correct"] for i in ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    # The full study's settings (dtype, attention, token limit), so that its base evaluation is this benchmark's run.
    ap.add_argument("--config", default=str(ROOT / "configs" / "full-cpu.yaml"))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="eval.dtype of every run")
    ap.add_argument("--sweep", type=int, default=128)
    ap.add_argument("--batch-sizes", default="32,64,128")
    ap.add_argument("--check", type=int, default=64)
    ap.add_argument("--limit", type=int, help="fewer questions than the whole split (a test of the script)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--from-run", help="a finished run whose base evaluation is the full split at these settings")
    ap.add_argument(
        "--reference",
        default=str(ROOT / "examples" / "full-study" / "predictions" / "base.jsonl"),
        help="predictions of the same model on the same questions to compare answers with (skipped when absent)",
    )
    ap.add_argument("--keep", help="folder for the predictions files (default: a temporary one)")
    ap.add_argument("--out", help="default: bench/results/eval_full_test_split.json (float32), _bf16.json")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mathtune-full-split-"))
    work.mkdir(parents=True, exist_ok=True)

    limit = f"eval.max_new_tokens={args.max_new_tokens}"
    dtype = f"eval.dtype={args.dtype}"
    sweep = {}
    for bs in map(int, args.batch_sizes.split(",")):
        s = mathtune_eval(
            args.gsm8k,
            args.config,
            work / f"sweep-{bs}.jsonl",
            limit,
            dtype,
            f"eval.limit={args.sweep}",
            f"eval.batch_size={bs}",
        )
        sweep[bs] = {k: s[k] for k in RATE_KEYS}
    best = max(sweep, key=lambda b: sweep[b]["tokens_per_s"])
    linear = compare_linear(args, work, sweep[best], best, limit, dtype) if args.dtype == "float32" else None
    overrides = [limit, dtype, f"eval.batch_size={best}", "eval.limit=null"]
    cfg = load_config(args.config, [f"model.name={MODEL}", *overrides])  # what the full run's `mathtune eval` gets
    full = from_run(Path(args.from_run), cfg, work) if args.from_run else None
    if full is None:
        full = mathtune_eval(
            args.gsm8k,
            args.config,
            work / "full.jsonl",
            *overrides,
            *([f"eval.limit={args.limit}"] if args.limit else []),
        )
    static = mathtune_eval(
        args.gsm8k,
        args.config,
        work / "static.jsonl",
        limit,
        dtype,
        f"eval.limit={args.check}",
        f"eval.batch_size={best}",
        "eval.decoder=static",
    )

    f, s = predictions(work / "full.jsonl"), predictions(work / "static.jsonl")
    ids = list(s)
    import torch

    from mathtune.run import cpu_model

    result = {
        "benchmark": "eval_full_test_split",
        "model": MODEL,
        "protocol": "chat",
        "config": os.path.relpath(args.config, ROOT),
        "settings": {
            "batch_size": best,
            "max_new_tokens": cfg.eval.max_new_tokens,
            "dtype": generation_dtype(cfg),
            "attn_implementation": cfg.model.attn_implementation,
            "decoder": cfg.eval.decoder,
            "cpu_linear": cfg.eval.cpu_linear,
            "greedy": True,
        },
        "batch_size_sweep": {
            "questions": args.sweep,
            "tokens_per_s": sweep,
            "same_answers": sweep_agreement(work, list(sweep)),
        },
        "linear_layers": linear,
        "n": full["n"],
        "wall_seconds": full["wall_seconds"],
        "minutes": round(full["wall_seconds"] / 60, 1),
        "target_minutes": 15,
        "target_met": full["wall_seconds"] <= 15 * 60,
        "generation_seconds": full["seconds"],
        "generated_tokens": full["generated_tokens"],
        "tokens_per_s": full["tokens_per_s"],
        "correct": full["correct"],
        "strict_correct": full["strict_correct"],
        "accuracy": round(full["accuracy"], 4),
        "peak_rss_gb": full["peak_rss_gb"],
        "truncated": sum(r["truncated"] for r in f.values()),
        "command": full["command"],
        "static_check": {
            "n": len(ids),
            "batch_size": best,
            "command": static["command"],
            "same_answers": sum(f[i]["extracted"] == s[i]["extracted"] for i in ids),
            "same_completions": sum(f[i]["completion"] == s[i]["completion"] for i in ids),
            "differing_ids": [i for i in ids if f[i]["extracted"] != s[i]["extracted"]],
        },
        "reference": reference(f, Path(args.reference)),
        "files": str(work),
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "torch": torch.__version__},
        "date": date.today().isoformat(),
        "command_of_this_benchmark": " ".join(["python", "bench/eval_full_test_split.py", *sys.argv[1:]]),
    }
    out = Path(
        args.out or ROOT / "bench" / "results" / f"eval_full_test_split{'_bf16' * (args.dtype != 'float32')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("minutes", "tokens_per_s", "accuracy")}
            | {"same_answers": result["static_check"]["same_answers"]}
        )
    )


if __name__ == "__main__":
    main()

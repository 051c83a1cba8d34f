"""Few-shot GSM8K, lm-evaluation-harness against `mathtune eval --protocol few-shot`, one after the other.

The same model (the embedded SmolLM2 by default), the same first N test questions from the local JSONL files, the
same 5-shot "Question: ...\\nAnswer:" format, the same stop strings and token limit, greedy, float32, on the CPU:
  - lm-eval: `lm_eval --model hf` on a local copy of its gsm8k task (gsm8k.yaml, version 3.0) whose dataset is the
    JSONL files instead of the hub; batch size --lm-eval-batch;
  - mathtune: `mathtune eval --model M --protocol few-shot` (its compact decoder; the 5 examples' keys and values are
    computed once and shared by every question).
Both tools' own stop lists are made one: lm-eval's ("Question:", "</s>", "<|im_end|>") plus a blank line, which
mathtune's few-shot protocol adds (GSM8K solutions have none; without it lm-eval generates to the token limit).
One difference stays, on purpose (evaluate/protocols.py): lm-eval draws 5 examples per question, mathtune draws 5
once for all. Wall seconds are each command's whole run (start-up and model load included).

Writes bench/results/eval_vs_lm_eval.json: ratio (lm-eval's seconds / mathtune's), each tool's accuracy with a Wilson
95% interval, and how many questions both graded the same (lm-eval's strict-match against mathtune's strict_correct,
and mathtune's grader on lm-eval's responses against mathtune's own answers).

    python bench/eval_vs_lm_eval.py --gsm8k ../shared/data/gsm8k [--limit 100]
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

ROOT = Path(__file__).resolve().parents[1]
STOPS = ["Question:", "</s>", "<|im_end|>", "\n\n"]

TASK = """task: gsm8k_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
generation_kwargs:
  until: {until}
  do_sample: false
  temperature: 0.0
repeats: 1
num_fewshot: 5
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""


def write_task(folder: Path, gsm8k: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gsm8k_local.yaml").write_text(
        TASK.format(
            train=(gsm8k / "train.jsonl").resolve(), test=(gsm8k / "test.jsonl").resolve(), until=json.dumps(STOPS)
        )
    )
    return folder


def run_lm_eval(model_path: str, task_dir: Path, out: Path, limit: int, batch: int, max_new: int) -> tuple[float, Path]:
    cmd = [
        sys.executable,  # the lm_eval of this interpreter, whether or not its bin folder is on PATH
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_path},dtype=float32",
        "--tasks",
        "gsm8k_local",
        "--include_path",
        str(task_dir),
        "--limit",
        str(limit),
        "--batch_size",
        str(batch),
        "--device",
        "cpu",
        "--log_samples",
        "--output_path",
        str(out),
        "--gen_kwargs",
        f"max_gen_toks={max_new}",
    ]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"lm_eval failed:\n{res.stderr[-3000:]}")
    samples = sorted(out.rglob("samples_gsm8k_local_*.jsonl"))
    if not samples:
        sys.exit(f"lm_eval wrote no samples file under {out}")
    return seconds, samples[-1]


def run_mathtune(model: str, gsm8k: Path, out: Path, limit: int, batch: int, max_new: int) -> tuple[float, Path]:
    cmd = [
        sys.executable,
        "-m",
        "mathtune.cli",
        "eval",
        "--model",
        model,
        "--protocol",
        "few-shot",
        "--data",
        str(gsm8k),
        "--limit",
        str(limit),
        "--out",
        str(out),
        f"eval.batch_size={batch}",
        f"eval.max_new_tokens={max_new}",
        "model.dtype=float32",
        "model.attn_implementation=sdpa",  # what lm-eval's hf model gets from transformers by default
    ]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"mathtune eval failed:\n{res.stderr[-3000:]}")
    return seconds, out


def compare(lm_samples: Path, ours: Path) -> dict:
    from mathtune.analysis.inputs import load_predictions
    from mathtune.evaluate.score import grade_row
    from mathtune.evaluate.stats import wilson_ci
    from mathtune.io import read_jsonl

    raw = [r for r in read_jsonl(lm_samples) if r.get("filter") == "strict-match"]
    lm_strict = {f"test-{r['doc_id']}": bool(r["exact_match"]) for r in raw}
    lm_rows = {r["id"]: grade_row(r) for r in load_predictions(lm_samples)}
    mt = {r["id"]: r for r in read_jsonl(ours)}
    ids = [i for i in mt if i in lm_rows]
    n = len(ids)

    def acc(k):
        return {"correct": k, "n": n, "accuracy": k / n, "ci95": list(wilson_ci(k, n))}

    return {
        "n": n,
        "lm_eval_strict_match": acc(sum(lm_strict[i] for i in ids)),
        "lm_eval_responses_mathtune_grader": acc(sum(lm_rows[i]["correct"] for i in ids)),
        "mathtune_accuracy": acc(sum(mt[i]["correct"] for i in ids)),
        "mathtune_strict": acc(sum(mt[i]["strict_correct"] for i in ids)),
        "graded_the_same_strict": sum(lm_strict[i] == mt[i]["strict_correct"] for i in ids),
        "graded_the_same_mathtune_grader": sum(lm_rows[i]["correct"] == mt[i]["correct"] for i in ids),
        "same_extracted_answer": sum(lm_rows[i]["extracted"] == mt[i]["extracted"] for i in ids),
        "lm_eval_generated_chars": sum(len(lm_rows[i]["completion"]) for i in ids),
        "mathtune_generated_chars": sum(len(mt[i]["completion"]) for i in ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--lm-eval-batch", type=int, default=16)
    ap.add_argument("--mathtune-batch", type=int, default=64)
    ap.add_argument("--keep", help="folder to keep both tools' outputs in (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_vs_lm_eval.json"))
    args = ap.parse_args()

    from mathtune.models import ensure_local

    gsm8k = Path(args.gsm8k)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mathtune-vs-lm-eval-"))
    model_path = ensure_local(args.model)
    lm_s, lm_samples = run_lm_eval(
        model_path,
        write_task(work / "task", gsm8k),
        work / "lm_eval",
        args.limit,
        args.lm_eval_batch,
        args.max_new_tokens,
    )
    print(f"lm-eval: {lm_s:.1f} s", flush=True)
    mt_s, ours = run_mathtune(
        args.model, gsm8k, work / "mathtune.jsonl", args.limit, args.mathtune_batch, args.max_new_tokens
    )
    print(f"mathtune: {mt_s:.1f} s", flush=True)
    import torch

    from mathtune.run import cpu_model

    result = {
        "benchmark": "eval_vs_lm_eval",
        "model": args.model,
        "limit": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "stop": STOPS,
        "lm_eval": {
            "version": _version("lm_eval"),
            "batch_size": args.lm_eval_batch,
            "wall_seconds": round(lm_s, 1),
            "command": "lm_eval --model hf --tasks gsm8k_local (bench/eval_vs_lm_eval.py's TASK)",
        },
        "mathtune": {
            "batch_size": args.mathtune_batch,
            "wall_seconds": round(mt_s, 1),
            "command": "mathtune eval --model M --protocol few-shot",
        },
        "ratio": round(lm_s / mt_s, 2),
        **compare(lm_samples, ours),
        "files": str(work),
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "torch": torch.__version__},
        "date": date.today().isoformat(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio", "n", "graded_the_same_strict")}))


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()

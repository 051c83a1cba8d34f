"""Every number of the report, computed from the run directory's files alone (no torch): analysis.json."""

from __future__ import annotations

from pathlib import Path

import yaml

from mathtune.evaluate.score import grade_row
from mathtune.evaluate.stats import mcnemar_exact, paired_diff_ci, wilson_ci
from mathtune.io import read_json, read_jsonl


def model_summary(name: str, rows: list[dict]) -> dict:
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson_ci(correct, n)
    return {
        "name": name,
        "protocol": rows[0].get("protocol") if rows else None,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [lo, hi],
        "strict_accuracy": sum(bool(r.get("strict_correct")) for r in rows) / n if n else 0.0,
        "no_answer": sum(r["extracted"] is None for r in rows),
        "truncated": sum(bool(r.get("truncated")) for r in rows),
    }


def paired(a_name: str, a: list[dict], b_name: str, b: list[dict]) -> dict:
    """2x2 table on the questions both files answered, and the exact McNemar p-value."""
    a_by, b_by = {r["id"]: r["correct"] for r in a}, {r["id"]: r["correct"] for r in b}
    common = [i for i in a_by if i in b_by]
    both = sum(a_by[i] and b_by[i] for i in common)
    only_a = sum(a_by[i] and not b_by[i] for i in common)
    only_b = sum(b_by[i] and not a_by[i] for i in common)
    n = len(common)
    return {
        "a": a_name,
        "b": b_name,
        "n": n,
        "both_correct": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": n - both - only_a - only_b,
        "diff": (only_b - only_a) / n if n else 0.0,
        "diff_ci95": list(paired_diff_ci(only_a, only_b, n)),
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def _decrease_pct(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or first == 0:
        return None
    return 100 * (first - last) / first


def training_summary(metrics: list[dict], train_info: dict) -> dict:
    train = [m for m in metrics if "train_loss" in m]
    val = [m for m in metrics if "val_loss" in m]
    speeds = [m["tokens_per_s"] for m in train if m.get("tokens_per_s")]
    first = lambda rows, key: rows[0].get(key) if rows else None  # noqa: E731
    last = lambda rows, key: rows[-1].get(key) if rows else None  # noqa: E731
    out = {
        "steps": train_info.get("steps"),
        "early_stopped": train_info.get("early_stopped"),
        "best_step": train_info.get("best_step"),
        "first_train_loss": first(train, "train_loss"),
        "last_train_loss": last(train, "train_loss"),
        "first_val_loss": first(val, "val_loss"),
        "first_val_step": first(val, "step"),
        "last_val_loss": last(val, "val_loss"),
        "last_val_step": last(val, "step"),
        "first_mean_token_accuracy": first(train, "mean_token_accuracy"),
        "last_mean_token_accuracy": last(train, "mean_token_accuracy"),
        "tokens": train_info.get("tokens"),
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "train_seconds": train_info.get("train_seconds"),
    }
    out["train_loss_decrease_pct"] = _decrease_pct(out["first_train_loss"], out["last_train_loss"])
    out["val_loss_decrease_pct"] = _decrease_pct(out["first_val_loss"], out["last_val_loss"])
    return out


def summarize_run(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    preds = {}
    for name in ("base", "finetuned"):
        path = run_dir / "predictions" / f"{name}.jsonl"
        if path.is_file():
            # Rows from elsewhere (or older runs) may lack a verdict: grade them with the same grader.
            preds[name] = [r if {"correct", "strict_correct"} <= set(r) else grade_row(r) for r in read_jsonl(path)]
    analysis = {"models": [model_summary(n, rows) for n, rows in preds.items()]}
    for m in analysis["models"]:
        samples = run_dir / "predictions" / f"{m['name']}.samples.jsonl"
        if samples.is_file():
            srows = read_jsonl(samples)
            m["k"] = len(srows[0]["answers"]) if srows else 0
            m["maj_at_k"] = sum(r["maj_correct"] for r in srows) / len(srows) if srows else 0.0
            m["pass_at_k"] = sum(r["pass_at_k"] for r in srows) / len(srows) if srows else 0.0
    if "base" in preds and "finetuned" in preds:
        analysis["comparison"] = paired("base", preds["base"], "finetuned", preds["finetuned"])
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        train_info = read_json(run_dir / "train.json") if (run_dir / "train.json").is_file() else {}
        analysis["training"] = training_summary(read_jsonl(metrics_path, drop_torn_tail=True), train_info)
    run_info = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    analysis["stages_seconds"] = {k: v["seconds"] for k, v in run_info.get("stages", {}).items()}
    analysis["environment"] = run_info.get("environment", {})
    analysis["config_hash"] = run_info.get("config_hash")
    analysis["git_commit"] = run_info.get("git_commit")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    analysis["model_name"] = cfg.get("model", {}).get("name")
    price = cfg.get("cost", {}).get("price_per_hour", 0.0)
    seconds = sum(analysis["stages_seconds"].values())
    analysis["cost"] = {"wall_seconds": seconds, "price_per_hour": price,
                        "price_source": cfg.get("cost", {}).get("price_source", ""), "dollars": seconds / 3600 * price}
    data_info = run_dir / "data" / "info.json"
    analysis["data"] = read_json(data_info) if data_info.is_file() else {}
    return analysis

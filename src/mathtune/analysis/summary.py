"""analysis.json: every number of the report, computed from predictions, metrics and run files (no torch).

The schema (stable; the report renders from it alone) is documented in docs/analysis-schema.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from mathtune.analysis.behaviour import behaviour_table
from mathtune.analysis.categories import (
    CATEGORIES,
    QUESTION_CATEGORIES,
    answer_categories,
    question_categories,
    reference_steps,
)
from mathtune.analysis.curve import curve_verdict
from mathtune.analysis.inputs import run_inputs
from mathtune.config import flatten
from mathtune.cost import hourly_price
from mathtune.errors import MathtuneError
from mathtune.evaluate.extract import reference_value
from mathtune.evaluate.score import grade_row
from mathtune.evaluate.stats import mcnemar_detectable, mcnemar_exact, mcnemar_n_needed, paired_diff_ci, wilson_ci

SCHEMA_VERSION = 1
GSM8K_TEST = 1319  # the whole GSM8K test split: the power sentence says what it would detect
EXAMPLES_PER_CATEGORY = 3
STEP_BUCKETS = ("1", "2", "3", "4", "5", "6", "7", "8+")


def graded(rows: list[dict]) -> list[dict]:
    """Rows as they are where they carry a verdict; graded with mathtune's grader where not."""
    return [r if {"correct", "strict_correct", "extracted"} <= set(r) else grade_row(r) for r in rows]


def model_summary(name: str, rows: list[dict]) -> dict:
    n = len(rows)
    correct = sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson_ci(correct, n)
    protocols = sorted({str(r.get("protocol")) for r in rows if r.get("protocol")})
    return {
        "name": name,
        "protocol": protocols[0] if len(protocols) == 1 else (", ".join(protocols) or None),
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [lo, hi],
        "strict_accuracy": sum(bool(r.get("strict_correct")) for r in rows) / n if n else 0.0,
        "format_failures": sum(r.get("extracted") is None for r in rows),
        "truncated": sum(bool(r.get("truncated")) for r in rows),
    }


def common_ids(preds: dict[str, list[dict]]) -> list[str]:
    """The question ids every file answered, in the first file's order: the paired question set."""
    names = list(preds)
    held = [{r["id"] for r in preds[n]} for n in names[1:]]
    common = [r["id"] for r in preds[names[0]] if all(r["id"] in h for h in held)]
    if not common:
        raise MathtuneError(f"{' and '.join(names)} have no question ids in common: nothing to pair")
    return common


def paired(a_name: str, a: list[dict], b_name: str, b: list[dict]) -> dict:
    """2x2 table on the questions both files answered, the exact McNemar p-value, the difference's CI, and what this
    many questions could detect (alpha 0.05, 80% power, at the observed share of discordant pairs)."""
    a_by, b_by = {r["id"]: bool(r["correct"]) for r in a}, {r["id"]: bool(r["correct"]) for r in b}
    common = [i for i in a_by if i in b_by]
    if not common:
        raise MathtuneError(f"{a_name} and {b_name} have no question ids in common: nothing to pair")
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
        "diff": (only_b - only_a) / n,
        "diff_ci95": list(paired_diff_ci(only_a, only_b, n)),
        "mcnemar_p": mcnemar_exact(only_a, only_b),
        "power": power(n, only_a, only_b),
    }


def power(n: int, only_a: int, only_b: int, alpha: float = 0.05, level: float = 0.8) -> dict:
    """What this paired comparison could detect, and what the observed difference would need (evaluate/stats.py)."""
    discordant = (only_a + only_b) / n
    diff = (only_b - only_a) / n
    needed = mcnemar_n_needed(diff, discordant, alpha, level)
    return {
        "alpha": alpha,
        "power": level,
        "discordant_share": discordant,
        "detectable_diff": mcnemar_detectable(n, discordant, alpha, level),
        "full_split_n": GSM8K_TEST,
        "full_split_detectable_diff": mcnemar_detectable(GSM8K_TEST, discordant, alpha, level),
        "n_needed_for_observed": math.ceil(needed) if needed is not None else None,
    }


def changes(a_name: str, a: list[dict], b_name: str, b: list[dict]) -> dict:
    """Every question whose correctness differs: fixed (wrong in a, right in b) and broken (right in a, wrong in b),
    with each model's extracted answer and completion, in a's order."""
    b_by = {r["id"]: r for r in b}
    out = {"a": a_name, "b": b_name, "fixed": [], "broken": []}
    for ra in a:
        rb = b_by.get(ra["id"])
        if rb is None or bool(ra["correct"]) == bool(rb["correct"]):
            continue
        out["fixed" if rb["correct"] else "broken"].append(
            {
                "id": ra["id"],
                "question": ra["question"],
                "reference": reference_value(ra["reference"]),
                "extracted_a": ra.get("extracted"),
                "extracted_b": rb.get("extracted"),
                "completion_a": ra["completion"],
                "completion_b": rb["completion"],
            }
        )
    return out


def _steps_bucket(reference: str) -> str:
    s = reference_steps(reference)
    return "8+" if s >= 8 else str(s)


def label_rows(preds: dict[str, list[dict]]) -> dict[str, dict[str, tuple[list[str], list[dict]]]]:
    """name -> id -> (failure categories of the question and of this model's answer, its false equations)."""
    labelled = {}
    for name, rows in preds.items():
        labelled[name] = {}
        for r in rows:
            a_cats, false = answer_categories(r)
            labelled[name][r["id"]] = (question_categories(r["question"], r["reference"]) + a_cats, false)
    return labelled


def pick_examples(in_category: list[str], shown: set[str]) -> list[str]:
    """Up to EXAMPLES_PER_CATEGORY ids, those not shown under an earlier category first (in their order), so that
    each category shows questions of its own where it has any. Deterministic: the ids keep the test order."""
    fresh = [i for i in in_category if i not in shown]
    return (fresh or in_category)[:EXAMPLES_PER_CATEGORY]


def failure_table(preds: dict[str, list[dict]], labelled: dict) -> dict:
    """Per category: each model's count and accuracy in it, and the focus model's wrong answers in it (count, share,
    example ids). The focus model (whose wrong answers are counted and cited) is the last one: the fine-tuned one."""
    names = list(preds)
    focus = names[-1]
    by_id = {name: {r["id"]: r for r in rows} for name, rows in preds.items()}
    wrong = [r for r in preds[focus] if not r["correct"]]
    table, shown = {}, set()
    for cat in CATEGORIES:
        entry = {"kind": "question" if cat in QUESTION_CATEGORIES else "answer"}
        for name in names:
            members = [i for i, (cats, _) in labelled[name].items() if cat in cats]
            entry[f"n_{name}"] = len(members)
            entry[f"accuracy_{name}"] = (
                sum(by_id[name][i]["correct"] for i in members) / len(members) if members else None
            )
        in_cat = [r["id"] for r in wrong if cat in labelled[focus][r["id"]][0]]
        entry["count"] = len(in_cat)
        entry["share_of_wrong"] = len(in_cat) / len(wrong) if wrong else 0.0
        entry["examples"] = pick_examples(in_cat, shown)
        shown.update(entry["examples"])
        table[cat] = entry
    return table


def accuracy_by_steps(preds: dict[str, list[dict]]) -> list[dict]:
    """Each model's accuracy by the number of steps of the reference solution (1 to 8+)."""
    names = list(preds)
    steps = []
    for bucket in STEP_BUCKETS:
        row = {"steps": bucket}
        for name in names:
            members = [r for r in preds[name] if _steps_bucket(r["reference"]) == bucket]
            row[f"n_{name}"] = len(members)
            row[f"correct_{name}"] = sum(bool(r["correct"]) for r in members)
            row[f"accuracy_{name}"] = row[f"correct_{name}"] / len(members) if members else None
        row["n"] = row[f"n_{names[-1]}"]
        steps.append(row)
    return steps


def cited_examples(preds: dict[str, list[dict]], labelled: dict, ids: list[str]) -> dict:
    """The rows the report cites, each model's answer beside the question and reference, false equations marked."""
    names = list(preds)
    by_id = {name: {r["id"]: r for r in rows} for name, rows in preds.items()}
    examples = {}
    for i in dict.fromkeys(ids):
        ref = next(by_id[name][i] for name in reversed(names) if i in by_id[name])
        examples[i] = {
            "question": ref["question"],
            "reference": ref["reference"],
            "answers": {
                name: {
                    "completion": by_id[name][i]["completion"],
                    "extracted": by_id[name][i].get("extracted"),
                    "correct": bool(by_id[name][i]["correct"]),
                    "false_equations": labelled[name][i][1],
                }
                for name in names
                if i in by_id[name]
            },
        }
    return examples


def _series(metrics: list[dict], key: str) -> list[list[float]]:
    return [[m["step"], m[key]] for m in metrics if m.get(key) is not None]


def _decrease_pct(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or first == 0:
        return None
    return 100 * (first - last) / first


def training_summary(metrics: list[dict], train_info: dict, epochs: float | None) -> dict:
    train = [m for m in metrics if m.get("train_loss") is not None]
    val = [m for m in metrics if m.get("val_loss") is not None]
    speeds = [m["tokens_per_s"] for m in train if m.get("tokens_per_s")]
    first = lambda rows, key: rows[0].get(key) if rows else None  # noqa: E731
    last = lambda rows, key: rows[-1].get(key) if rows else None  # noqa: E731
    per_epoch = [m["step"] / m["epoch"] for m in metrics if m.get("epoch")]
    out = {
        "steps": train_info.get("steps", last(metrics, "step")),
        "early_stopped": train_info.get("early_stopped"),
        "best_step": train_info.get("best_step"),
        "first_train_loss": first(train, "train_loss"),
        "last_train_loss": last(train, "train_loss"),
        "first_val_loss": first(val, "val_loss"),
        "last_val_loss": last(val, "val_loss"),
        "first_val_step": first(val, "step"),
        "last_val_step": last(val, "step"),
        "first_mean_token_accuracy": first(train, "mean_token_accuracy"),
        "last_mean_token_accuracy": last(train, "mean_token_accuracy"),
        "tokens": train_info.get("tokens"),
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "train_seconds": train_info.get("train_seconds"),
        "epochs": epochs,
    }
    out["train_loss_decrease_pct"] = _decrease_pct(out["first_train_loss"], out["last_train_loss"])
    out["val_loss_decrease_pct"] = _decrease_pct(out["first_val_loss"], out["last_val_loss"])
    verdict = curve_verdict([(m["step"], m["val_loss"]) for m in val], epochs, per_epoch[-1] if per_epoch else None)
    out.update(verdict)
    out["curve"] = {
        k: _series(metrics, k)
        for k in ("train_loss", "val_loss", "mean_token_accuracy", "val_mean_token_accuracy", "learning_rate")
    }
    return out


def cost_summary(run_info: dict, cfg: dict) -> dict:
    env = run_info.get("environment", {})
    stages = {k: v["seconds"] for k, v in run_info.get("stages", {}).items()}
    wall = sum(stages.values())
    # Priced on what the run used: GPU time only for a cuda run, one GPU per process (not the host's GPU count).
    gpu = env.get("gpu") if run_info.get("device") == "cuda" else None
    price = hourly_price(cfg.get("cost", {}), gpu, run_info.get("processes", 1))
    gpu_hours = wall / 3600 * price["gpus"]
    return {
        "stages_seconds": stages,
        # Each stage's peak resident memory (run.py, memory.py), where the platform can measure it.
        "stages_peak_rss_gb": {k: v.get("peak_rss_gb") for k, v in run_info.get("stages", {}).items()},
        "wall_seconds": wall,
        "device": price["device"],
        "gpus": price["gpus"],
        "gpu_hours": gpu_hours,
        "price_per_gpu_hour": price["per_gpu"],
        "price_matched": price["matched"],
        "price_source": price["source"],
        "price_date": price["date"],
        "dollars": wall / 3600 * price["price_per_hour"],
        "predicted": run_info.get("estimate"),  # mathtune estimate's figures, recorded before training
    }


def reproducibility(run_info: dict, cfg: dict, data_info: dict) -> dict:
    env = run_info.get("environment", {})
    data = cfg.get("data", {})
    return {
        "config_hash": run_info.get("config_hash"),
        "git_commit": run_info.get("git_commit"),
        "python": env.get("python"),
        "packages": env.get("packages", {}),
        "cpu": env.get("cpu"),
        "cores": env.get("cores"),
        "gpu": env.get("gpu"),
        "seeds": {
            "data": data.get("seed"),
            "train": cfg.get("train", {}).get("seed"),
            "eval": cfg.get("eval", {}).get("seed"),
        },
        "model": cfg.get("model", {}).get("name"),
        "data": {
            "source": data_info.get("source", data.get("source")),
            "location": data.get("path") or data.get("hub_id"),
            "test_source": data_info.get("test_source"),
            "rows_before_split": data_info.get("rows_before_split"),
            "train": data_info.get("train"),
            "val": data_info.get("val"),
            "test": data_info.get("test"),
            "warnings": data_info.get("warnings", []),
        },
        "started": run_info.get("started"),
        "finished": run_info.get("finished"),
    }


def model_summaries(all_rows: dict[str, list[dict]], paired_rows: dict[str, list[dict]]) -> list[dict]:
    """Each model on the paired question set; a file that answered more questions also gets its figures on all of
    them (n_all, correct_all, accuracy_all, ci95_all), kept apart so that no sentence mixes the two."""
    out = []
    for name, rows in paired_rows.items():
        m = model_summary(name, rows)
        if len(all_rows[name]) > len(rows):
            whole = model_summary(name, all_rows[name])
            m.update(
                n_all=whole["n"], correct_all=whole["correct"], accuracy_all=whole["accuracy"], ci95_all=whole["ci95"]
            )
        out.append(m)
    return out


def analyze(
    preds: dict[str, list[dict]],
    metrics: list[dict] | None = None,
    train_info: dict | None = None,
    run_info: dict | None = None,
    cfg: dict | None = None,
    data_info: dict | None = None,
) -> dict:
    """The whole analysis from already loaded files; every argument but preds may be missing. With several models,
    every figure about the models is on the questions all of them answered (docs/analysis-schema.md says which)."""
    cfg, run_info = cfg or {}, run_info or {}
    preds = {name: graded(rows) for name, rows in preds.items()}
    names = list(preds)
    common = set(common_ids(preds)) if len(names) >= 2 else None
    on = {name: [r for r in rows if common is None or r["id"] in common] for name, rows in preds.items()}
    analysis = {
        "schema_version": SCHEMA_VERSION,
        "title": cfg.get("model", {}).get("name") or " vs ".join(names),
        "models": model_summaries(preds, on),
        "warnings": [],
    }
    protocols = sorted({str(m["protocol"]) for m in analysis["models"]})
    if len(protocols) > 1:
        analysis["warnings"].append(
            f"the models were evaluated under different protocols ({', '.join(protocols)}): "
            "their accuracies are not comparable"
        )
    if len(names) >= 2:
        analysis["comparison"] = paired(names[0], on[names[0]], names[-1], on[names[-1]])
        analysis["changes"] = changes(names[0], on[names[0]], names[-1], on[names[-1]])
        # Each model with the calculator against itself without: the calculator's own effect (evaluate/calculator.py).
        with_calc = [(n.removesuffix("-calculator"), n) for n in names if n.endswith("-calculator")]
        calc = [paired(a, on[a], b, on[b]) for a, b in with_calc if a in on]
        if calc:
            analysis["calculator"] = [
                {**c, "calculator_calls": sum(len(r.get("calculator_calls") or ()) for r in on[c["b"]])} for c in calc
            ]
    if preds:
        analysis["behaviour"] = behaviour_table(on)
        labelled = label_rows(on)
        analysis["failures"] = failure_table(on, labelled)
        analysis["by_steps"] = accuracy_by_steps(on)
        cited = [i for entry in analysis["failures"].values() for i in entry["examples"]]
        analysis["examples"] = cited_examples(on, labelled, cited)
    if metrics:
        epochs = cfg.get("train", {}).get("epochs")
        analysis["training"] = training_summary(metrics, train_info or {}, epochs)
    if run_info:
        analysis["cost"] = cost_summary(run_info, cfg)
        analysis["reproducibility"] = reproducibility(run_info, cfg, data_info or {})
    return analysis


def add_sampling(analysis: dict, samples: dict[str, list[dict]]) -> None:
    """maj@k and pass@k beside each model's greedy accuracy, where sampled answers were written."""
    for m in analysis["models"]:
        srows = samples.get(m["name"])
        if srows:
            m["k"] = len(srows[0]["answers"])
            m["maj_at_k"] = sum(r["maj_correct"] for r in srows) / len(srows)
            m["pass_at_k"] = sum(r["pass_at_k"] for r in srows) / len(srows)


def summarize_run(run_dir: Path) -> dict:
    inputs = run_inputs(run_dir)
    samples = inputs.pop("samples")
    analysis = analyze(**inputs)
    add_sampling(analysis, samples)
    return analysis


def compare_runs(run_a: Path, run_b: Path) -> dict:
    """Two runs' fine-tuned models paired on common ids, with their config differences and training side by side."""
    names = [run_a.name or str(run_a), run_b.name or str(run_b)]
    if names[0] == names[1]:
        names = [str(run_a), str(run_b)]
    inputs = []
    for run in (run_a, run_b):
        if not (run / "predictions" / "finetuned.jsonl").is_file():
            raise MathtuneError(f"{run}: no predictions/finetuned.jsonl (is it a finished run directory?)")
        inputs.append(run_inputs(run))
        inputs[-1].pop("samples")
    preds = {n: i["preds"]["finetuned"] for n, i in zip(names, inputs)}
    analysis = analyze(preds)
    flat = [flatten(i["cfg"]) for i in inputs]
    analysis["runs"] = {
        "names": names,
        "config_differences": [
            {"key": k, "a": flat[0].get(k), "b": flat[1].get(k)}
            for k in sorted(set(flat[0]) | set(flat[1]))
            if flat[0].get(k) != flat[1].get(k)
        ],
        "training": [
            {
                k: v
                for k, v in training_summary(
                    i["metrics"], i["train_info"], i["cfg"].get("train", {}).get("epochs")
                ).items()
                if k != "curve"
            }
            if i["metrics"]
            else None
            for i in inputs
        ],
    }
    return analysis

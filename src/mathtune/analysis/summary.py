"""analysis.json: every number of the report, computed from predictions, metrics and run files (no torch).

The schema (stable; the report renders from it alone) is documented in docs/analysis-schema.md.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mathtune.analysis.categories import (ANSWER_CATEGORIES, CATEGORIES, QUESTION_CATEGORIES, answer_categories,
                                          question_categories, reference_steps)
from mathtune.analysis.curve import curve_verdict
from mathtune.cost import hourly_price
from mathtune.errors import MathtuneError
from mathtune.evaluate.score import grade_row
from mathtune.evaluate.stats import mcnemar_exact, paired_diff_ci, wilson_ci
from mathtune.io import read_json, read_jsonl

SCHEMA_VERSION = 1
REQUIRED = ("id", "question", "reference", "completion")
EXAMPLES_PER_CATEGORY = 3
STEP_BUCKETS = ("1", "2", "3", "4", "5", "6", "7", "8+")


def load_predictions(path: Path) -> list[dict]:
    """A predictions file of the documented shape; rows without a verdict are graded here."""
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"{path}: predictions file not found")
    rows = read_jsonl(path)
    if not rows:
        raise MathtuneError(f"{path}: no predictions in it")
    for i, r in enumerate(rows, start=1):
        missing = [k for k in REQUIRED if not isinstance(r.get(k), str)]
        if missing:
            raise MathtuneError(f"{path}:{i}: needs string fields {', '.join(REQUIRED)} (missing {missing[0]!r})")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise MathtuneError(f"{path}: question ids are not unique")
    return graded(rows)


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


def paired(a_name: str, a: list[dict], b_name: str, b: list[dict]) -> dict:
    """2x2 table on the questions both files answered, the exact McNemar p-value, and the difference's CI."""
    a_by, b_by = {r["id"]: bool(r["correct"]) for r in a}, {r["id"]: bool(r["correct"]) for r in b}
    common = [i for i in a_by if i in b_by]
    if not common:
        raise MathtuneError(f"{a_name} and {b_name} have no question ids in common: nothing to pair")
    both = sum(a_by[i] and b_by[i] for i in common)
    only_a = sum(a_by[i] and not b_by[i] for i in common)
    only_b = sum(b_by[i] and not a_by[i] for i in common)
    n = len(common)
    return {
        "a": a_name, "b": b_name, "n": n,
        "both_correct": both, "only_a": only_a, "only_b": only_b, "neither": n - both - only_a - only_b,
        "diff": (only_b - only_a) / n,
        "diff_ci95": list(paired_diff_ci(only_a, only_b, n)),
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def _steps_bucket(reference: str) -> str:
    s = reference_steps(reference)
    return "8+" if s >= 8 else str(s)


def failures(preds: dict[str, list[dict]]) -> tuple[dict, list[dict], dict]:
    """(failures by category, accuracy by reference steps, the example rows the failures cite).

    The focus model (whose wrong answers are counted and cited) is the last one: the fine-tuned model.
    """
    names = list(preds)
    focus = names[-1]
    labelled = {}  # name -> id -> (labels, false equations)
    for name, rows in preds.items():
        labelled[name] = {}
        for r in rows:
            a_cats, false = answer_categories(r)
            labelled[name][r["id"]] = (question_categories(r["question"], r["reference"]) + a_cats, false)
    by_id = {name: {r["id"]: r for r in rows} for name, rows in preds.items()}
    wrong = [r for r in preds[focus] if not r["correct"]]
    table, cited = {}, []
    for cat in CATEGORIES:
        entry = {"kind": "question" if cat in QUESTION_CATEGORIES else "answer"}
        for name in names:
            members = [i for i, (cats, _) in labelled[name].items() if cat in cats]
            entry[f"n_{name}"] = len(members)
            entry[f"accuracy_{name}"] = (sum(by_id[name][i]["correct"] for i in members) / len(members)
                                         if members else None)
        in_cat = [r["id"] for r in wrong if cat in labelled[focus][r["id"]][0]]
        entry["count"] = len(in_cat)
        entry["share_of_wrong"] = len(in_cat) / len(wrong) if wrong else 0.0
        entry["examples"] = in_cat[:EXAMPLES_PER_CATEGORY]
        cited += entry["examples"]
        table[cat] = entry
    steps = []
    for bucket in STEP_BUCKETS:
        row = {"steps": bucket}
        for name in names:
            members = [r for r in preds[name] if _steps_bucket(r["reference"]) == bucket]
            row[f"n_{name}"] = len(members)
            row[f"correct_{name}"] = sum(bool(r["correct"]) for r in members)
            row[f"accuracy_{name}"] = row[f"correct_{name}"] / len(members) if members else None
        row["n"] = row[f"n_{focus}"]
        steps.append(row)
    examples = {}
    for i in dict.fromkeys(cited):
        ref = by_id[focus][i]
        examples[i] = {"question": ref["question"], "reference": ref["reference"], "answers": {
            name: {"completion": by_id[name][i]["completion"], "extracted": by_id[name][i].get("extracted"),
                   "correct": bool(by_id[name][i]["correct"]), "false_equations": labelled[name][i][1]}
            for name in names if i in by_id[name]}}
    return table, steps, examples


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
        "first_train_loss": first(train, "train_loss"), "last_train_loss": last(train, "train_loss"),
        "first_val_loss": first(val, "val_loss"), "last_val_loss": last(val, "val_loss"),
        "first_val_step": first(val, "step"), "last_val_step": last(val, "step"),
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
    out["curve"] = {k: _series(metrics, k) for k in ("train_loss", "val_loss", "mean_token_accuracy",
                                                     "val_mean_token_accuracy", "learning_rate")}
    return out


def cost_summary(run_info: dict, cfg: dict) -> dict:
    env = run_info.get("environment", {})
    stages = {k: v["seconds"] for k, v in run_info.get("stages", {}).items()}
    wall = sum(stages.values())
    price = hourly_price(cfg.get("cost", {}), env.get("gpu"), env.get("gpu_count"))
    gpu_hours = wall / 3600 * price["gpus"]
    return {
        "stages_seconds": stages, "wall_seconds": wall, "device": price["device"], "gpus": price["gpus"],
        "gpu_hours": gpu_hours, "price_per_gpu_hour": price["per_gpu"], "price_matched": price["matched"],
        "price_source": price["source"], "price_date": price["date"],
        "dollars": wall / 3600 * price["price_per_hour"],
        "predicted": run_info.get("estimate"),  # mathtune estimate's figures, recorded before training
    }


def reproducibility(run_info: dict, cfg: dict, data_info: dict) -> dict:
    env = run_info.get("environment", {})
    data = cfg.get("data", {})
    return {
        "config_hash": run_info.get("config_hash"), "git_commit": run_info.get("git_commit"),
        "python": env.get("python"), "packages": env.get("packages", {}),
        "cpu": env.get("cpu"), "cores": env.get("cores"), "gpu": env.get("gpu"),
        "seeds": {"data": data.get("seed"), "train": cfg.get("train", {}).get("seed"),
                  "eval": cfg.get("eval", {}).get("seed")},
        "model": cfg.get("model", {}).get("name"),
        "data": {"source": data_info.get("source", data.get("source")),
                 "location": data.get("path") or data.get("hub_id"),
                 "test_source": data_info.get("test_source"), "rows_before_split": data_info.get("rows_before_split"),
                 "train": data_info.get("train"), "val": data_info.get("val"), "test": data_info.get("test"),
                 "warnings": data_info.get("warnings", [])},
        "started": run_info.get("started"), "finished": run_info.get("finished"),
    }


def analyze(preds: dict[str, list[dict]], metrics: list[dict] | None = None, train_info: dict | None = None,
            run_info: dict | None = None, cfg: dict | None = None, data_info: dict | None = None) -> dict:
    """The whole analysis from already loaded files; every argument but preds may be missing."""
    cfg, run_info = cfg or {}, run_info or {}
    preds = {name: graded(rows) for name, rows in preds.items()}
    names = list(preds)
    analysis = {"schema_version": SCHEMA_VERSION, "title": cfg.get("model", {}).get("name") or " vs ".join(names),
                "models": [model_summary(n, rows) for n, rows in preds.items()], "warnings": []}
    protocols = {m["protocol"] for m in analysis["models"]}
    if len(protocols) > 1:
        analysis["warnings"].append(f"the models were evaluated under different protocols ({', '.join(map(str, protocols))}): "
                                    "their accuracies are not comparable")
    if len(names) >= 2:
        analysis["comparison"] = paired(names[0], preds[names[0]], names[-1], preds[names[-1]])
    if preds:
        analysis["failures"], analysis["by_steps"], analysis["examples"] = failures(preds)
    if metrics:
        epochs = cfg.get("train", {}).get("epochs")
        analysis["training"] = training_summary(metrics, train_info or {}, epochs)
    if run_info:
        analysis["cost"] = cost_summary(run_info, cfg)
        analysis["reproducibility"] = reproducibility(run_info, cfg, data_info or {})
    return analysis


def _optional_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _optional_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MathtuneError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def run_inputs(run_dir: Path) -> dict:
    """The analyze() arguments a run directory holds (what `mathtune report RUN_DIR` reads)."""
    run_dir = Path(run_dir)
    preds = {name: load_predictions(run_dir / "predictions" / f"{name}.jsonl") for name in ("base", "finetuned")
             if (run_dir / "predictions" / f"{name}.jsonl").is_file()}
    metrics_path = run_dir / "metrics.jsonl"
    return {
        "preds": preds,
        "metrics": read_jsonl(metrics_path, drop_torn_tail=True) if metrics_path.is_file() else None,
        "train_info": _optional_json(run_dir / "train.json"),
        "run_info": _optional_json(run_dir / "run.json"),
        "cfg": _optional_yaml(run_dir / "config.yaml"),
        "data_info": _optional_json(run_dir / "data" / "info.json"),
    }


def add_sampling(analysis: dict, run_dir: Path) -> None:
    """maj@k and pass@k beside each model's greedy accuracy, where sampled answers were written."""
    for m in analysis["models"]:
        samples = Path(run_dir) / "predictions" / f"{m['name']}.samples.jsonl"
        if samples.is_file():
            srows = read_jsonl(samples)
            m["k"] = len(srows[0]["answers"]) if srows else 0
            m["maj_at_k"] = sum(r["maj_correct"] for r in srows) / len(srows) if srows else 0.0
            m["pass_at_k"] = sum(r["pass_at_k"] for r in srows) / len(srows) if srows else 0.0


def summarize_run(run_dir: Path) -> dict:
    analysis = analyze(**run_inputs(run_dir))
    add_sampling(analysis, run_dir)
    return analysis


def read_inputs(paths: list[Path], names: str | None, metrics: str | None, run_info: str | None) -> dict:
    """analyze() arguments from files named on the command line (`mathtune analyze`)."""
    labels = [n.strip() for n in names.split(",")] if names else [p.name.removesuffix(".jsonl") for p in paths]
    if len(labels) != len(paths):
        raise MathtuneError(f"--names gives {len(labels)} names for {len(paths)} predictions files")
    if len(set(labels)) != len(labels) or not all(labels):
        raise MathtuneError(f"model names must be unique and non-empty: {', '.join(labels)} (use --names)")
    inputs = {"preds": {label: load_predictions(p) for label, p in zip(labels, paths)}}
    if metrics:
        m = Path(metrics)
        if not m.is_file():
            raise MathtuneError(f"{m}: metrics file not found")
        inputs["metrics"] = read_jsonl(m, drop_torn_tail=True)
        inputs["train_info"] = _optional_json(m.with_name("train.json"))
    if run_info:
        r = Path(run_info)
        if not r.is_file():
            raise MathtuneError(f"{r}: run.json not found")
        inputs["run_info"] = read_json(r)
        inputs["cfg"] = _optional_yaml(r.with_name("config.yaml"))
        inputs["data_info"] = _optional_json(r.parent / "data" / "info.json")
    return inputs


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
    preds = {n: i["preds"]["finetuned"] for n, i in zip(names, inputs)}
    analysis = analyze(preds)
    flat = [_flatten(i["cfg"]) for i in inputs]
    analysis["runs"] = {
        "names": names,
        "config_differences": [{"key": k, "a": flat[0].get(k), "b": flat[1].get(k)}
                               for k in sorted(set(flat[0]) | set(flat[1])) if flat[0].get(k) != flat[1].get(k)],
        "training": [{k: v for k, v in training_summary(i["metrics"], i["train_info"],
                                                        i["cfg"].get("train", {}).get("epochs")).items()
                      if k != "curve"} if i["metrics"] else None for i in inputs],
    }
    return analysis

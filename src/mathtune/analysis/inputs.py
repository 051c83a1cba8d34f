"""The analysis's inputs: predictions files (mathtune's, or any tool's with the documented fields), a run
directory's files, or files named on the command line. Loading and checking only; summary.py computes."""

from __future__ import annotations

from pathlib import Path

import yaml

from mathtune.errors import MathtuneError
from mathtune.evaluate.arms import report_order
from mathtune.io import read_json, read_jsonl

REQUIRED = ("id", "question", "reference", "completion")


def load_predictions(path: Path) -> list[dict]:
    """A predictions file of the documented shape (rows without a verdict are graded by the analysis), or
    lm-evaluation-harness's --log_samples file (lm_eval_rows)."""
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"{path}: predictions file not found")
    rows = read_jsonl(path)
    if not rows:
        raise MathtuneError(f"{path}: no predictions in it")
    if "doc_id" in rows[0] and "resps" in rows[0]:
        rows = lm_eval_rows(rows, path)
    for i, r in enumerate(rows, start=1):
        missing = [k for k in REQUIRED if not isinstance(r.get(k), str)]
        if missing:
            raise MathtuneError(f"{path}:{i}: needs string fields {', '.join(REQUIRED)} (missing {missing[0]!r})")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise MathtuneError(f"{path}: question ids are not unique")
    return rows


def lm_eval_rows(samples: list[dict], path: Path) -> list[dict]:
    """lm-evaluation-harness's `--log_samples` JSONL (one row per document and filter: doc_id, doc, target, resps,
    filter, prompt_hash) -> one prediction row per document, graded by mathtune's grader like any other file.

    The id is `test-<doc_id>`: lm-eval's gsm8k task reads GSM8K's test split in its file order, which is how
    mathtune names test questions, so an lm-eval run pairs with a mathtune predictions file question by question.
    The completion is the model's raw response (resps), before lm-eval's filters; the question and reference come
    from the document (GSM8K's `question` and `answer`), else the target."""
    out: dict[str, dict] = {}
    for i, s in enumerate(samples, start=1):
        try:
            completion = s["resps"][0][0]
            doc_id = s["doc_id"]
        except (KeyError, IndexError, TypeError):
            raise MathtuneError(
                f"{path}:{i}: an lm-eval sample needs doc_id and a generated response in resps"
            ) from None
        key = f"test-{doc_id}"
        if key in out:
            continue  # the same response under another filter
        doc = s.get("doc") if isinstance(s.get("doc"), dict) else {}
        reference = doc.get("answer", s.get("target"))
        out[key] = {
            "id": key,
            "question": doc.get("question"),
            "reference": None if reference is None else str(reference),
            "completion": completion,
            "prompt_hash": s.get("prompt_hash"),
            "source": "lm-eval --log_samples",
        }
    return list(out.values())


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
    names = (
        [p.name.removesuffix(".jsonl") for p in (run_dir / "predictions").glob("*.jsonl") if p.name.count(".") == 1]
        if (run_dir / "predictions").is_dir()
        else []
    )  # not .samples / .partial files
    preds = {name: load_predictions(run_dir / "predictions" / f"{name}.jsonl") for name in report_order(names)}
    metrics_path = run_dir / "metrics.jsonl"
    return {
        "preds": preds,
        "metrics": read_jsonl(metrics_path, drop_torn_tail=True) if metrics_path.is_file() else None,
        "train_info": _optional_json(run_dir / "train.json"),
        "run_info": _optional_json(run_dir / "run.json"),
        "cfg": _optional_yaml(run_dir / "config.yaml"),
        "data_info": _optional_json(run_dir / "data" / "info.json"),
        "samples": {
            name: read_jsonl(run_dir / "predictions" / f"{name}.samples.jsonl")
            for name in preds
            if (run_dir / "predictions" / f"{name}.samples.jsonl").is_file()
        },
    }


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

"""Data stage: load the configured source, split train/validation deterministically, write run_dir/data/."""

from __future__ import annotations

from pathlib import Path

from mathtune.data import sources
from mathtune.data.rows import strip_calculator
from mathtune.io import atomic_write_json, atomic_write_jsonl

# GSM-Symbolic (Mirzadeh et al., 2024) built its templates from GSM8K test questions; we measured a median
# word-Jaccard of 0.59 between a generated question and its nearest GSM8K test question (0.24 to train).
SYMBOLIC_LEAK = (
    "data.source is gsm_symbolic, whose templates were made from GSM8K test questions: "
    "GSM8K test accuracy after this training is contaminated and likely inflated"
)

FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "info.json")


def is_done(run_dir: Path) -> bool:
    return all((run_dir / "data" / f).is_file() for f in FILES)


def load_train_rows(d) -> list[dict]:
    if d.source == "jsonl":
        return sources.from_jsonl(Path(d.path), "train")
    if d.source == "hub":
        return sources.from_hub(d.hub_id, d.hub_config, "train")
    return sources.from_gsm_symbolic(d.symbolic_size, d.seed)


def load_test_rows(d) -> list[dict]:
    source = d.source if d.test_source == "same" else d.test_source
    if source == "jsonl":
        return sources.from_jsonl(Path(d.test_path or d.path), "test")
    return sources.from_hub(d.hub_id, d.hub_config, "test")


def split_rows(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """The split a HF user would make: datasets' train_test_split with a seed (deterministic)."""
    import datasets

    parts = datasets.Dataset.from_list(rows).train_test_split(test_size=val_fraction, seed=seed)
    return parts["train"].to_list(), parts["test"].to_list()


def prepare_rows(cfg) -> tuple[dict[str, list[dict]], dict]:
    """The rows a run trains, validates and tests on ({train, val, test}), and what info.json says of them."""
    d = cfg.data
    train_all = load_train_rows(d)
    test = load_test_rows(d)
    if cfg.eval.limit:
        test = test[: cfg.eval.limit]
    train, val = split_rows(train_all, d.val_fraction, d.seed)
    train, val = train[: d.max_train_rows], val[: d.max_val_rows]
    if d.strip_calculator:
        train = [{**r, "answer": strip_calculator(r["answer"])} for r in train]
        val = [{**r, "answer": strip_calculator(r["answer"])} for r in val]
    info = {
        "source": d.source,
        "test_source": d.source if d.test_source == "same" else d.test_source,
        "rows_before_split": len(train_all),
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "warnings": [SYMBOLIC_LEAK] if d.source == "gsm_symbolic" else [],
    }
    return {"train": train, "val": val, "test": test}, info


def run_data(cfg, run_dir: Path) -> dict:
    rows, info = prepare_rows(cfg)
    out = run_dir / "data"
    for name in ("train", "val", "test"):
        atomic_write_jsonl(out / f"{name}.jsonl", rows[name])
    atomic_write_json(out / "info.json", info)
    for w in info["warnings"]:
        print(f"mathtune: warning: {w}")
    return info

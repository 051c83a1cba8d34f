"""Three sources of GSM8K-shaped rows. Each returns raw rows; rows.validate_row checks them."""

from __future__ import annotations

from pathlib import Path

from mathtune.data.rows import validate_row
from mathtune.errors import MathtuneError
from mathtune.io import read_jsonl


def from_jsonl(path: Path, split: str) -> list[dict]:
    """GSM8K's original files: one {"question", "answer"} object per line."""
    path = Path(path)
    if path.suffix != ".jsonl":  # a folder in GSM8K's layout
        path = path / f"{split}.jsonl"
    raw = read_jsonl(path)
    if not raw:
        raise MathtuneError(f"{path}: no rows")
    return [validate_row(r, f"{path}:{i + 1}", i, split) for i, r in enumerate(raw)]


def from_hub(hub_id: str, hub_config: str | None, split: str) -> list[dict]:
    """datasets.load_dataset, as any HF user would; hub_id may also be a local folder of JSONL files."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MathtuneError(
            f"data.hub_id: cannot load {hub_id!r} split {split!r} ({msg}); "
            "offline, use data.source=jsonl with data.path=<folder with train.jsonl and test.jsonl>"
        ) from None
    return [validate_row(dict(r), f"{hub_id}[{split}] row {i}", i, split) for i, r in enumerate(ds)]


def from_gsm_symbolic(size: int, seed: int) -> list[dict]:
    """Generated offline by reasoning-gym. Its templates come from GSM8K *test* questions: see stage.py."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    rows = []
    for i in range(size):
        item = ds[i]
        raw = {"id": f"gsm_symbolic-{seed}-{i}", "question": item["question"], "answer": item["metadata"]["answer_cot"]}
        rows.append(validate_row(raw, f"gsm_symbolic item {i}", i, "gsm_symbolic"))
    return rows

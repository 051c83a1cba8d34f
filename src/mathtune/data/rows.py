"""The one row shape every source produces: {id, question, answer}, the answer ending in `#### N`."""

from __future__ import annotations

import re

from mathtune.errors import MathtuneError

# GSM8K's final-answer line: "#### 1,234" (commas and a sign appear in the original data).
FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
CALCULATOR = re.compile(r"<<[^<>]*>>")
MAX_FIELD_CHARS = 100_000  # a GSM8K question is < 1,000 characters; anything this long is not a row


def reference_answer(answer: str) -> str | None:
    """The number after `####` with thousands separators removed, or None."""
    m = FINAL_ANSWER.search(answer.strip())
    return m.group(1).replace(",", "") if m else None


def strip_calculator(answer: str) -> str:
    return CALCULATOR.sub("", answer)


def validate_row(row: dict, where: str, index: int, id_prefix: str) -> dict:
    """Check one raw row and return it in the common shape; `where` names the file and line in errors."""
    if not isinstance(row, dict):
        raise MathtuneError(f"{where}: expected an object with question and answer")
    for key in ("question", "answer"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise MathtuneError(f"{where}: missing or empty {key!r}")
        if len(value) > MAX_FIELD_CHARS:
            raise MathtuneError(f"{where}: {key!r} is {len(value):,} characters long (limit {MAX_FIELD_CHARS:,})")
    if reference_answer(row["answer"]) is None:
        raise MathtuneError(f"{where}: answer does not end with a final '#### <number>'")
    row_id = str(row.get("id", f"{id_prefix}-{index}"))
    return {"id": row_id, "question": row["question"].strip(), "answer": row["answer"].strip()}

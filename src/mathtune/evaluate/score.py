"""Grading: `correct` (mathtune's numeric grader) and `strict_correct` (lm-evaluation-harness's strict-match).

strict_correct reproduces lm-eval's gsm8k task exactly (lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0):
the filter `regex "#### (\\-?[0-9\\.\\,]+)"` + `take_first`, then `exact_match` with ignore_case and
regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"] applied to prediction and reference alike. It compares
strings, so "#### 7.50" against a reference of 7.5 is wrong there; `correct` compares numbers and counts it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mathtune.errors import MathtuneError
from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.io import atomic_write_jsonl, read_jsonl

LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_EVAL_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def lm_eval_normalize(text: str) -> str:
    for pattern in LM_EVAL_IGNORE:
        text = pattern.sub("", text)
    return text.lower()  # ignore_case; lm-eval does not strip


def strict_extract(completion: str, pattern: re.Pattern = LM_EVAL_STRICT) -> str | None:
    m = pattern.search(completion)
    return m.group(1) if m else None


def strict_correct(completion: str, reference: str, pattern: re.Pattern = LM_EVAL_STRICT) -> bool:
    found = strict_extract(completion, pattern)
    # lm-eval's reference for a bare number is the number itself; for a GSM8K answer the text after "#### ".
    return found is not None and lm_eval_normalize(found) == lm_eval_normalize(reference)


def grade_row(row: dict, pattern: re.Pattern = LM_EVAL_STRICT) -> dict:
    extracted = extract_answer(row["completion"])
    return {
        **row,
        "extracted": extracted,
        "correct": is_correct(extracted, row["reference"]),
        "strict_correct": strict_correct(row["completion"], row["reference"], pattern),
    }


def grade_file(src: Path, dst: Path) -> dict:
    rows = read_jsonl(src)
    for i, r in enumerate(rows, start=1):
        for key in ("completion", "reference"):
            if not isinstance(r.get(key), str):
                raise MathtuneError(f"{src}:{i}: needs a string field {key!r}")
    graded = [grade_row(r) for r in rows]
    atomic_write_jsonl(dst, graded)
    n = len(graded)
    return {
        "n": n,
        "correct": sum(r["correct"] for r in graded),
        "strict_correct": sum(r["strict_correct"] for r in graded),
    }

"""The grader on 212 labelled completions (tests/data/graded_completions.jsonl).

Each row: completion, reference, `expected` (the final number, written by hand from the documented rules),
`correct` (by hand), and `lm_eval_strict` (the verdict of lm-evaluation-harness 0.4.13's own gsm8k
strict-match filter and exact_match metric, run on these rows: see tests/data/README.md).
"""

import json
from collections import Counter

import pytest

from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.evaluate.score import grade_row, strict_correct
from mathtune.io import read_jsonl

from conftest import ROOT, mathtune_cli

LABELLED = read_jsonl(ROOT / "tests" / "data" / "graded_completions.jsonl")


def test_the_labelled_set_covers_every_format():
    assert len(LABELLED) >= 200
    formats = Counter(r["format"] for r in LABELLED)
    for f in [
        "hashes",
        "answer-is",
        "boxed",
        "a-colon",
        "final-answer",
        "bold",
        "latex",
        "separators",
        "currency",
        "percent",
        "units",
        "period",
        "decimals",
        "fractions",
        "unicode-minus",
        "end-token",
        "continuation",
        "no-number",
        "real-smollm2",
    ]:
        assert formats[f] > 0, f
    assert formats["real-smollm2"] >= 60
    assert 0 < sum(r["correct"] for r in LABELLED) < len(LABELLED)  # right and wrong answers both


@pytest.mark.parametrize("row", LABELLED, ids=lambda r: f"{r['format']}:{r['completion'][:30]!r}")
def test_grader_agrees_with_the_labels(row):
    assert extract_answer(row["completion"]) == row["expected"]
    assert is_correct(row["expected"], row["reference"]) == row["correct"]


def test_strict_agrees_with_lm_eval_on_every_row():
    disagree = [r for r in LABELLED if strict_correct(r["completion"], r["reference"]) != r["lm_eval_strict"]]
    assert disagree == []


def test_strict_agrees_with_lm_eval_run_live():
    # lm-evaluation-harness's own code, not a copy: its gsm8k strict-match filter and exact_match metric.
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    docs = [{}] * len(LABELLED)
    filtered = TakeFirstFilter().apply(
        RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)").apply([[r["completion"]] for r in LABELLED], docs), docs
    )
    for row, pred in zip(LABELLED, filtered):
        em = exact_match_hf_evaluate(
            [pred],
            [row["reference"]],
            regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
            ignore_case=True,
            ignore_punctuation=False,
        )["exact_match"]
        assert strict_correct(row["completion"], row["reference"]) == (em == 1.0), row["completion"]
        assert row["lm_eval_strict"] == (em == 1.0)


def test_grade_row_keeps_extra_fields():
    row = grade_row({"id": "x", "completion": "#### 5", "reference": "#### 5", "model": "m"})
    assert row["model"] == "m" and row["correct"] and row["strict_correct"] and row["extracted"] == "5"


def test_grade_command(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": i, "completion": r["completion"], "reference": r["reference"]}) + "\n"
            for i, r in enumerate(LABELLED)
        )
    )
    dst = tmp_path / "out.jsonl"
    res = mathtune_cli("grade", src, "--out", dst)
    assert res.returncode == 0, res.stderr
    out = read_jsonl(dst)
    assert [r["correct"] for r in out] == [r["correct"] for r in LABELLED]
    assert [r["strict_correct"] for r in out] == [r["lm_eval_strict"] for r in LABELLED]
    n_right = sum(r["correct"] for r in LABELLED)
    assert f"accuracy {n_right}/{len(LABELLED)}" in res.stdout


def test_grade_command_rejects_rows_without_fields(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "#### 5", "reference": "#### 5"}\n{"completion": "x"}\n')
    res = mathtune_cli("grade", src, "--out", tmp_path / "o")
    assert res.returncode == 2 and f"{src}:2" in res.stderr and "reference" in res.stderr

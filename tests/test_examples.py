"""The committed examples recheck: every accuracy and the paired test in each analysis.json come back the same from
its predictions files, through the same analysis anyone can run (`mathtune analyze`)."""

import json

import pytest

from mathtune.analysis.inputs import read_inputs
from mathtune.analysis.summary import analyze

from conftest import ROOT

EXAMPLES = sorted(p.parent for p in (ROOT / "examples").glob("*/analysis.json"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_examples_numbers_come_back_from_its_predictions(example):
    committed = json.loads((example / "analysis.json").read_text())
    names = [m["name"] for m in committed["models"]]
    files = [example / "predictions" / f"{n}.jsonl" for n in names]
    again = analyze(**read_inputs(files, ",".join(names), None, None))
    for was, now in zip(committed["models"], again["models"]):
        assert (now["name"], now["n"], now["correct"], now["strict_accuracy"], now["truncated"]) == (
            was["name"],
            was["n"],
            was["correct"],
            was["strict_accuracy"],
            was["truncated"],
        )
    for key in ("n", "only_a", "only_b", "both_correct", "mcnemar_p"):
        assert again["comparison"][key] == pytest.approx(committed["comparison"][key]), key

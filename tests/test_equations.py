"""The equation re-evaluator behind `arithmetic_slip`: exact, safe, bounded."""

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

from mathtune.analysis.equations import EquationError, check_equations, evaluate, false_equations, show


@pytest.mark.parametrize(
    "side, value",
    [
        ("3 + 4 * 2", 11),
        ("(3 + 4) * 2", 14),
        ("10 / 4", Fraction(5, 2)),
        ("-3 + 5", 2),
        ("2^10", 1024),
        ("2^3^2", 512),
        ("20%", Fraction(1, 5)),
        ("50 * 20%", 10),
        ("0.1 + 0.2", Fraction(3, 10)),
        ("--2", 2),
        (".5 * 4", 2),
        ("7", 7),
    ],
)
def test_evaluate_exactly(side, value):
    assert evaluate(side) == value


@pytest.mark.parametrize(
    "side",
    [
        "",
        "3 +",
        "(3 + 4",
        "3 + 4)",
        "1.2.3",
        "2 / 0",
        "9^9^9",
        "2^0.5",
        "2^100",
        "0^-1",
        "3 apples",
        "(" * 40 + "1" + ")" * 40,
        "__import__('os')",
        "1e5",
    ],
)
def test_evaluate_refuses(side):
    with pytest.raises(EquationError):
        evaluate(side)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7 * 8 = 56", []),
        ("7 * 8 = 54", ["7 * 8 = 54"]),
        ("She has 3 + 2 = 5 apples. Then 5 + 4 = 10 apples.", ["5 + 4 = 10"]),
        ("He pays $1,200 x 2 = $2,400", []),
        ("He pays $1,200 × 2 = $2,500", ["1200 * 2 = 2500"]),
        ("so <<48/2=24>>24 clips", []),
        ("so <<48/2=25>>25 clips", ["48/2 = 25"]),
        ("10/3 = 3.33 each", []),  # rounding to the written precision
        ("7/2 = 3 whole boxes", []),
        ("10 / 4 = 2.4", ["10 / 4 = 2.4"]),
        ("(3+4)*2 = 14 = 7 * 3", ["14 = 7 * 3"]),  # a chain: every adjacent pair is checked
        ("3 − 5 = −2", []),  # Unicode minus
        ("20% of 50 = 10", []),  # "of" ends the chunk: "50 = 10" alone is no arithmetic
        ("2 hours * 60 = 120 minutes", []),  # a unit inside: skipped, not guessed at
        ("3 + 4 = **7**", []),
        ("2**3 = 8", []),
        ("1 = 1", []),
        ("\\(12 \\times 3 = 36\\)", []),
        ("$12 \\times 3 = 35$", ["12 * 3 = 35"]),
    ],
)
def test_false_equations(text, expected):
    assert [q["equation"] for q in false_equations(text)] == expected


def test_false_equation_reports_the_true_value():
    [q] = false_equations("Then 48 * 4 = 224 cookies.")
    assert q == {
        "equation": "48 * 4 = 224",
        "left": "192",
        "right": "224",
        "computed": "left",
        "says": "left side is 192",
    }


def test_show():
    assert [show(Fraction(x)) for x in (56, "2.5", "1/3", "-7/4")] == ["56", "2.5", "1/3", "-1.75"]


def test_real_smollm2_slips():
    # Real SmolLM2 completions from tests/data/graded_completions.jsonl (GSM8K test-0 and test-2, base model).
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / "graded_completions.jsonl").open()]
    by_source = {r["source"]: r for r in rows}
    test0 = false_equations(by_source["smollm2-135m-instruct demo (base), GSM8K test-0"]["completion"])
    assert {k: test0[0][k] for k in ("equation", "left", "right")} == {
        "equation": "48 * 3 = 184",
        "left": "144",
        "right": "184",
    }
    test2 = false_equations(by_source["smollm2-135m-instruct demo (base), GSM8K test-2"]["completion"])
    assert [q["equation"] for q in test2] == ["80000 + 50000 = 140000", "140000 - 80000 = 20000"]


def test_adversarial_inputs_are_fast():
    # One linear regex pass, chunks capped: a megabyte of almost-arithmetic does not hang.
    for text in ("1+" * 500_000, "(" * 1_000_000, "1 = " * 250_000, "9^" * 500_000 + "9 = 1", "1." * 500_000):
        start = time.perf_counter()
        check_equations(text)
        assert time.perf_counter() - start < 10


def test_no_eval_in_the_source():
    import inspect

    import mathtune.analysis.equations as eq

    source = inspect.getsource(eq)
    assert "eval(" not in source.replace("evaluate(", "").replace("re-eval", "")
    assert "exec(" not in source


@pytest.mark.parametrize(
    "text, says",
    [
        ("So 20 = 4 * 20 in all.", ["right side is 80"]),  # the computed side is the right one
        ("Then 48 * 4 = 224 cookies.", ["left side is 192"]),
        ("2 * 3 = 5 + 2 here", ["left side is 6, right side is 7"]),
        ("4 * 5 = 20 = 21 apples", ["20 is not 21"]),  # a chain: the pair of plain numbers
        ("4 * 5 = 21 = 20 + 1", ["left side is 20"]),  # the chain's first pair is false, its second true
    ],
)
def test_messages_name_the_computed_side(text, says):
    assert [q["says"] for q in false_equations(text)] == says

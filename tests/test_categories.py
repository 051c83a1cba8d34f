"""Failure categories: each rule on real GSM8K test questions."""

import json

import pytest

from mathtune.analysis.categories import answer_categories, question_categories, reference_steps, units_named


@pytest.fixture(scope="module")
def test_rows(gsm8k):
    return [json.loads(line) for line in (gsm8k / "test.jsonl").open()]


def cats(rows, i):
    return set(question_categories(rows[i]["question"], rows[i]["answer"]))


def test_reference_steps_count_calculator_annotations(test_rows):
    # test-2 (Josh flips a house): <<80000+50000=130000>>, <<80000*1.5=120000>>, <<120000+80000=200000>>,
    # <<200000-130000=70000>>.
    assert reference_steps(test_rows[2]["answer"]) == 4
    assert reference_steps("She has 3 apples.\nShe eats one.\n#### 2") == 2  # no annotations: lines


def test_multi_step(test_rows):
    assert "multi_step" in cats(test_rows, 2)  # 4 steps
    assert "multi_step" not in cats(test_rows, 0)  # Janet's ducks: 2 steps


def test_unit_conversion(test_rows):
    # test-48: a wire 4 feet long cut into pieces 6 inches long.
    assert units_named(test_rows[48]["question"]) == {"length": {"foot", "inch"}}
    assert "unit_conversion" in cats(test_rows, 48)
    assert "unit_conversion" in cats(test_rows, 32)  # .5 hours a day -> hours a week
    assert "unit_conversion" in cats(test_rows, 11)  # dozens
    assert "unit_conversion" not in cats(test_rows, 3)  # meters and weeks: two dimensions, no conversion


def test_percentages(test_rows):
    assert "percentages" in cats(test_rows, 2)  # "increased the value of the house by 150%"
    assert "percentages" not in cats(test_rows, 0)


def test_fractions_and_ratios(test_rows):
    assert "fractions_ratios" in cats(test_rows, 1)  # "half that much white fiber"
    assert "fractions_ratios" not in cats(test_rows, 3)


def test_money_and_decimals(test_rows):
    assert "money_decimals" in cats(test_rows, 0)  # "$2 per fresh duck egg"
    assert "money_decimals" not in cats(test_rows, 3)
    assert "money_decimals" in cats(test_rows, 32)  # ".5 hours": a decimal


def test_ordinal_second_is_not_a_unit():
    assert units_named("On the second day she walked for 3 hours.") == {"time": {"day", "hour"}}
    assert units_named("It takes 30 seconds per lap, 2 minutes in all.") == {"time": {"second", "minute"}}


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"completion": "I do not know.", "extracted": None, "correct": False}, {"format_failure"}),
        (
            {"completion": "16 - 3 - 4 = 9 and 9 * 2 = 19.\n#### 19", "extracted": "19", "correct": False},
            {"arithmetic_slip"},
        ),
        (
            {"completion": "16 - 3 = 13 and 13 * 2 = 26.\n#### 26", "extracted": "26", "correct": False},
            {"reasoning_error"},
        ),
        ({"completion": "16 - 3 - 4 = 9 and 9 * 2 = 18.\n#### 18", "extracted": "18", "correct": True}, set()),
        (
            {"completion": "16 - 3 - 4 = 9 and 9 * 2 = 18, so", "extracted": "18", "correct": False, "truncated": True},
            {"truncated", "reasoning_error"},
        ),
    ],
)
def test_answer_categories(row, expected):
    assert set(answer_categories(row)[0]) == expected

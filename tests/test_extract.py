import pytest

from mathtune.data.rows import reference_answer
from mathtune.evaluate.extract import canonical, extract_answer, is_correct, reference_value, to_fraction
from mathtune.io import read_jsonl


def test_every_real_gsm8k_answer_extracts_to_its_reference(gsm8k):
    # The reference solutions are themselves completions in the trained format: extraction must recover
    # the final number of every one, and grade it correct.
    for split in ("train", "test"):
        for row in read_jsonl(gsm8k / f"{split}.jsonl"):
            extracted = extract_answer(row["answer"])
            assert extracted == reference_value(row["answer"]), row
            assert is_correct(extracted, row["answer"])
            assert to_fraction(extracted) == to_fraction(reference_answer(row["answer"]))


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("3 + 4 = 7\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("#### $18.", "18"),
        ("The answer is 42.", "42"),
        ("so \\boxed{12}", "12"),
        ("Final answer: 3.50", "3.5"),
        ("It costs 7.0 dollars", "7"),
        ("−5 degrees", "-5"),
        ("half is 1/2", "0.5"),
        ("a third is 1/3", "1/3"),
        ("#### 5\nQuestion: Tom has 9 apples", "5"),
        ("x = 4 + 4 = 8\nQuestion: next one has 99", "8"),
        ("2 + 2 = 4<|im_end|>junk 77", "4"),
        ("I do not know", None),
        ("", None),
    ],
)
def test_extract_formats(completion, expected):
    assert extract_answer(completion) == expected


def test_hashes_take_precedence_over_later_numbers():
    assert extract_answer("#### 10\nThat is 10 apples for 3 friends") == "10"


@pytest.mark.parametrize("a, b", [("3.0", "3"), ("7.50", "7.5"), ("1,000", "1000"), ("0.25", "1/4")])
def test_exact_equality(a, b):
    assert to_fraction(a) == to_fraction(b)


def test_canonical():
    from fractions import Fraction

    assert canonical(Fraction(15, 2)) == "7.5"
    assert canonical(Fraction(-1, 4)) == "-0.25"
    assert canonical(Fraction(1, 3)) == "1/3"
    assert canonical(Fraction(10)) == "10"


def test_wrong_answers_are_wrong():
    assert not is_correct("17", "blah\n#### 18")
    assert not is_correct(None, "#### 18")
    assert is_correct("18.00", "18")

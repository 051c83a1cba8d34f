"""Parsers that cannot be broken: the answer extractor, the equation re-evaluator, the JSONL reader and the
config override parser, fuzzed with hypothesis.

Each may only raise its documented error type (or nothing), and never hangs. The default suite runs
FUZZ_EXAMPLES (300) examples per parser; `make fuzz` runs 10,000 (MATHTUNE_FUZZ=10000).
"""

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathtune.analysis.equations import EquationError, check_equations, evaluate
from mathtune.config import parse_override
from mathtune.errors import MathtuneError
from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.io import read_jsonl

FUZZ_EXAMPLES = int(os.environ.get("MATHTUNE_FUZZ", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# Text that looks like what models write: digits, operators, LaTeX, GSM8K markers, Unicode, as well as noise.
PIECES = st.sampled_from(
    [
        "####",
        " ",
        "\n",
        "=",
        "+",
        "-",
        "*",
        "/",
        "^",
        "**",
        "(",
        ")",
        "%",
        "$",
        ",",
        ".",
        "\\boxed{",
        "}",
        "\\frac{",
        "The answer is",
        "Answer:",
        "A:",
        "<<",
        ">>",
        "−",
        "×",
        "÷",
        "<|im_end|>",
        "Question:",
        "e",
        "E",
        "1e999",
        "9" * 40,
        "0",
        "3.50",
        "1/3",
    ]
)
MATHY = st.lists(st.one_of(PIECES, st.integers(-(10**6), 10**6).map(str), st.text(max_size=5)), max_size=60).map(
    "".join
)
TEXT = st.one_of(MATHY, st.text(max_size=300))


@FUZZ
@given(TEXT, TEXT)
def test_extractor_never_raises(completion, reference):
    got = extract_answer(completion)
    assert got is None or isinstance(got, str)
    assert isinstance(is_correct(got, reference), bool)


@FUZZ
@given(TEXT)
def test_equation_checker_never_raises(text):
    for check in check_equations(text):
        assert isinstance(check.ok, bool)


@FUZZ
@given(MATHY)
def test_evaluate_raises_only_its_error(side):
    try:
        evaluate(side)
    except EquationError:
        pass


@FUZZ
@given(st.binary(max_size=400))
def test_jsonl_reader_raises_only_its_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(data)
    try:
        rows = read_jsonl(path)
        assert all(isinstance(r, dict) for r in rows)
    except MathtuneError as e:
        assert str(path) in str(e) and "\n" not in str(e)


@FUZZ
@given(st.text(max_size=80))
def test_override_parser_raises_only_its_error(text):
    try:
        keys, _ = parse_override(text)
        assert all(k.isidentifier() for k in keys)
    except MathtuneError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize(
    "text",
    [
        "1" * 1_000_000,
        "#### " * 200_000,
        "\\boxed{" * 140_000,
        "The answer is " * 70_000,
        ("1,000" * 200_000),
        "(" * 500_000 + "1" + ")" * 500_000,
        "9^" * 500_000 + "9",
    ],
)
def test_one_megabyte_adversarial_strings(text):
    start = time.perf_counter()
    extract_answer(text)
    check_equations(text)
    try:
        evaluate(text)
    except EquationError:
        pass
    assert time.perf_counter() - start < 20, "catastrophic backtracking or unbounded work"

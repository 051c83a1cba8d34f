"""Failure categories: deterministic rules, several labels per answer.

About the question (the same for every model):
  multi_step        the reference solution takes >= MULTI_STEP steps (see reference_steps).
  unit_conversion   the question names two different units of one dimension (minutes and hours, feet and
                    inches, cents and dollars, ...) or dozens.
  percentages       "%" or "percent" in the question.
  fractions_ratios  a fraction a/b, a fraction word (half, third, quarter, ...) or "ratio"/"proportion".
  money_decimals    a "$", a money word (dollar, cent, price, ...), or a decimal number in the question.
About the answer (per model):
  format_failure    no number could be extracted from the completion.
  repetition_loop   a runaway repetition (behaviour.py's rule): the model says the same thing over and over.
  truncated         generation hit max_new_tokens before an end token, without a repetition loop.
  arithmetic_slip   the completion holds an equation that is false when re-evaluated (equations.py).
  reasoning_error   a wrong answer with a number and no false equation: the arithmetic written down is right,
                    the plan is not.
"""

from __future__ import annotations

import re

from mathtune.analysis.behaviour import LOOP_MIN_CHARS, LOOP_REPEATS, repetition_loop
from mathtune.analysis.equations import false_equations

MULTI_STEP = 3
QUESTION_CATEGORIES = ("multi_step", "unit_conversion", "percentages", "fractions_ratios", "money_decimals")
ANSWER_CATEGORIES = ("format_failure", "repetition_loop", "truncated", "arithmetic_slip", "reasoning_error")
CATEGORIES = QUESTION_CATEGORIES + ANSWER_CATEGORIES
# Each rule in a line, as the report prints it beside its category (the functions below implement them).
RULES = {
    "multi_step": f"reference solution has {MULTI_STEP} or more steps (calculator annotations, else lines)",
    "unit_conversion": "question names two units of one dimension, or dozens",
    "percentages": "question has % or 'percent'",
    "fractions_ratios": "question has a fraction a/b, a fraction word, 'ratio' or 'proportion'",
    "money_decimals": "question has $, a money word or a decimal number",
    "format_failure": "no number found in the answer",
    "repetition_loop": f"the answer ends in a block repeated back to back {LOOP_REPEATS}+ times, numbers aside "
    f"({LOOP_MIN_CHARS}+ characters)",
    "truncated": "answer hit the token limit without a repetition loop",
    "arithmetic_slip": "answer holds an equation that is false when re-evaluated",
    "reasoning_error": "wrong answer whose equations are all right",
}

# Units by dimension; a question naming two different units of one dimension converts between them.
UNITS = {
    "time": ["second", "minute", "hour", "day", "week", "month", "year", "decade", "century"],
    "length": [
        "inch",
        "inches",
        "foot",
        "feet",
        "yard",
        "mile",
        "millimeter",
        "centimeter",
        "meter",
        "kilometer",
        "mm",
        "cm",
        "km",
    ],
    "mass": ["ounce", "pound", "lb", "lbs", "gram", "kilogram", "kg", "ton"],
    "volume": ["teaspoon", "tablespoon", "cup", "pint", "quart", "gallon", "liter", "litre", "milliliter", "ml"],
    "money": ["cent", "dollar", "nickel", "dime", "quarter"],
}
_COUNT_UNITS = re.compile(r"\b(dozens?|half-dozen)\b", re.I)
_FRACTION = re.compile(
    r"\b\d+\s*/\s*\d+\b|\b(half|halves|thirds?|quarters?|fourths?|fifths?|sixths?|sevenths?|eighths?|ninths?|"
    r"tenths?|ratio|proportion|fraction)\b",
    re.I,
)
_PERCENT = re.compile(r"%|\bpercent", re.I)
_MONEY = re.compile(r"\$|\b(dollars?|cents?|price|cost|costs|paid|pays?|spends?|spent|earns?|earned)\b|\d\.\d", re.I)
_ANNOTATION = re.compile(r"<<[^<>]*=[^<>]*>>")


def _unit_words(unit: str) -> re.Pattern:
    if unit == "second":  # "the second day" is an ordinal, not a unit
        return re.compile(r"\bseconds\b|\bper second\b", re.I)
    stem = unit[:-1] if unit.endswith("s") and len(unit) > 3 and unit not in ("inches", "lbs") else unit
    plural = "(es|s)?" if not unit.endswith("s") else ""
    return re.compile(rf"\b{re.escape(stem)}{plural}\b", re.I)


_UNIT_PATTERNS = {dim: [(u, _unit_words(u)) for u in units] for dim, units in UNITS.items()}
_SAME_UNIT = {"inches": "inch", "feet": "foot", "lbs": "lb"}


def units_named(question: str) -> dict[str, set[str]]:
    """The units of each dimension the question names (inch and inches count once)."""
    found = {}
    for dim, patterns in _UNIT_PATTERNS.items():
        names = {_SAME_UNIT.get(u, u) for u, p in patterns if p.search(question)}
        if dim == "money":
            names.discard("quarter")  # "a quarter of" is a fraction far more often than a coin
        if names:
            found[dim] = names
    return found


def reference_steps(reference: str) -> int:
    """Steps of a GSM8K solution: its calculator annotations <<a*b=c>>, else its lines before "####"."""
    annotations = len(_ANNOTATION.findall(reference))
    if annotations:
        return annotations
    body = reference.split("####")[0]
    return max(1, sum(1 for line in body.splitlines() if line.strip()))


def question_categories(question: str, reference: str) -> list[str]:
    cats = []
    if reference_steps(reference) >= MULTI_STEP:
        cats.append("multi_step")
    if any(len(v) >= 2 for v in units_named(question).values()) or _COUNT_UNITS.search(question):
        cats.append("unit_conversion")
    if _PERCENT.search(question):
        cats.append("percentages")
    if _FRACTION.search(question):
        cats.append("fractions_ratios")
    if _MONEY.search(question):
        cats.append("money_decimals")
    return cats


def answer_categories(row: dict) -> tuple[list[str], list[str]]:
    """(labels, false equations) for one graded prediction row."""
    false = false_equations(row.get("completion") or "")
    cats = []
    loop = repetition_loop(row.get("completion") or "")
    if row.get("extracted") is None:
        cats.append("format_failure")
    if loop:
        cats.append("repetition_loop")
    elif row.get("truncated"):
        cats.append("truncated")
    if false:
        cats.append("arithmetic_slip")
    if not row.get("correct") and row.get("extracted") is not None and not false:
        cats.append("reasoning_error")
    return cats, false

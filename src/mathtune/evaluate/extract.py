"""Final-answer extraction and exact comparison. Plain code, no torch: the analysis uses it too.

Precedence, first rule that finds a number wins (and why):
1. The first `#### N`: the format the model is trained and instructed to end with, and GSM8K's own, where
   it is the last line; whatever a model writes after its first `#### N` is a continuation (real SmolLM2
   outputs repeat `#### N` lines until the token limit cuts the last one mid-number).
2. The last `\boxed{N}`, then the last "answer is N" / "Answer: N" / "A: N": explicit answer statements;
   the last one, because models restate and correct themselves ("the answer is 6 items * $16.50 = $98.
   So, the answer is 98.").
3. The last number in the text.
Before matching, the completion is cut at a chat end token or at a new "Question:" line: a model that
goes on to write a new problem has finished its answer, and that continuation's numbers are not the answer.
Numbers are compared exactly as fractions.Fraction: 3.0 == 3, 7.50 == 7.5, 1,000 == 1000; never floats, never eval.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from fractions import Fraction

# A number: thousands-grouped or plain digits, optional decimals, optional /denominator; minus may be Unicode.
NUM = r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-−]?\.\d+"
_NUM_RE = re.compile(NUM)
_HASHES = re.compile(r"####\s*\$?\s*(" + NUM + ")")
_BOXED = re.compile(r"\\boxed\{\s*\\?\$?\s*(" + NUM + r")\s*\}")
_MARKED = re.compile(
    r"(?:answer is|answer:|answer =|^\s*A:)\s*[$*\\(]*\s*\$?(" + NUM + ")", re.IGNORECASE | re.MULTILINE
)
_PLAIN = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_CONTINUATION = re.compile(r"\n\s*Question:")
# Chat end tokens some models print as text when decoding keeps special tokens.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>", "</s>", "<|eot_id|>")

MAX_CHARS = 100_000  # completions longer than this are cut before matching: bounded work on any input


def cut_continuation(text: str) -> str:
    """The answer part of a completion: up to an end token or a new "Question:" the model started."""
    text = text[:MAX_CHARS]
    for tok in _END_TOKENS:
        text = text.split(tok, 1)[0]
    m = _CONTINUATION.search(text)
    return text[: m.start()] if m else text


def to_fraction(text: str | None) -> Fraction | None:
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("−", "-").lstrip("$").rstrip(".")
    # Plain decimals and a/b only (no exponents: Fraction("1e4300") is a 4,300-digit integer), bounded length.
    if len(s) > 200 or not _PLAIN.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def canonical(value: Fraction) -> str:
    """Fraction -> the plain string a person writes: 3, 7.5, -0.25, or 1/3 when the decimal never ends."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = 200
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".")


def extract_answer(completion: str) -> str | None:
    """The completion's final answer as a canonical number string, or None when it gives no number."""
    text = cut_continuation(completion)
    first = _HASHES.search(text)
    candidates = [first.group(1)] if first else []
    for pattern in (_BOXED, _MARKED):
        found = pattern.findall(text)
        candidates.append(found[-1] if found else None)
    for candidate in candidates:
        value = to_fraction(candidate)
        if value is not None:
            return canonical(value)
    for match in reversed(_NUM_RE.findall(text)):
        value = to_fraction(match)
        if value is not None:
            return canonical(value)
    return None


def reference_value(reference: str) -> str | None:
    """A GSM8K answer ("... #### 72") or a bare number -> canonical number string."""
    m = _HASHES.search(reference)
    value = to_fraction(m.group(1) if m else reference)
    return canonical(value) if value is not None else None


def is_correct(extracted: str | None, reference: str) -> bool:
    ref = reference_value(reference)
    if extracted is None or ref is None:
        return False
    return to_fraction(extracted) == to_fraction(ref)

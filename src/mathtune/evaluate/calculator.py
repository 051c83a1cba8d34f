"""A calculator in the decoding loop (eval.calculator), as in the GSM8K paper (Cobbe et al., 2021).

GSM8K's solutions carry calculator annotations `<<48/2=24>>`. When a sequence has generated `<<EXPR=`, the
calculator evaluates EXPR (analysis/equations.py's exact evaluator over fractions: numbers with decimals and
thousands separators, + - * / x ×, parentheses, unary minus, bounded: never `eval`) and forces the tokens of the
result and `>>` into that sequence; the model continues after them. An EXPR that does not parse is left to the model.

It sits behind the decoding seam (evaluate/decoder.py): the compact loop asks `choose` for each row's next token, and
model.generate's greedy path does the same through `CalculatorProcessor`. Per-row state only: other rows of a batch are
unaffected, and the KV cache holds exactly the tokens chosen, forced or not.
"""

from __future__ import annotations

import re
from fractions import Fraction

from mathtune.analysis.equations import EquationError, evaluate, normalise

MAX_EXPR = 200  # characters of an annotation's expression
TAIL = 48  # tokens of a row's text looked at: an annotation is short
_OPEN = re.compile(r"<<([^<>=]{1,%d})=" % MAX_EXPR)


def calculate(expr: str) -> str | None:
    """The value of an annotation's expression as GSM8K writes it (an integer without ".0", else at most two
    decimals, more only for a value that would round to 0), or None when it is not arithmetic."""
    if len(expr) > MAX_EXPR:
        return None
    try:
        value = evaluate(normalise(expr).replace(";", " "))
    except (EquationError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return show(value)


def show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    for places in (2, 4, 6):
        text = f"{float(value):.{places}f}".rstrip("0").rstrip(".")
        if text not in ("0", "-0"):
            return text
    return "0"


class Calculator:
    """The calculator's state per row: recent tokens, tokens still to force, and the calls made."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tail: dict[int, list[int]] = {}
        self.queue: dict[int, list[int]] = {}
        self.calls: dict[int, list[dict]] = {}

    def choose(self, row: int, token: int) -> int:
        """The token `row` generates, given the model's own choice: a forced one while a result is being written;
        else the model's, unless it closes `<<EXPR=` (or runs past the "="), which starts forcing "=", the result
        and ">>" in its place."""
        tail = self.tail.setdefault(row, [])
        queue = self.queue.get(row)
        if queue:
            chosen = queue.pop(0)
        else:
            chosen = self._intercept(row, tail, token)
        tail.append(chosen)
        del tail[:-TAIL]
        return chosen

    def _intercept(self, row: int, tail: list[int], token: int) -> int:
        piece = self.tokenizer.decode([token])
        if "=" not in piece:
            return token
        before = self.tokenizer.decode(tail)
        text = before + piece
        start = text.rfind("<<")
        if start < 0 or ">>" in text[start:]:
            return token
        m = _OPEN.match(text, start)
        if m is None or m.end() <= len(before):  # no open annotation, or its "=" was written before this token
            return token
        value = calculate(m.group(1))
        if value is None:
            return token
        # This token's text up to its "=", then the result and ">>": the model's own digits after "=" are replaced.
        forced = piece[: m.end() - len(before)] + value + ">>"
        ids = self.tokenizer.encode(forced, add_special_tokens=False)
        self.calls.setdefault(row, []).append({"expr": m.group(1).strip(), "value": value})
        self.queue[row] = ids[1:]
        return ids[0]

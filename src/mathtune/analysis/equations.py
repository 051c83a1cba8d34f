"""Find the equations `a op b = c` in a completion and re-evaluate them exactly: arithmetic slips.

No eval: a small recursive-descent parser over fractions.Fraction (numbers, + - * / ^, unary minus,
parentheses, a postfix % meaning /100). Everything is bounded, so no input can make it slow:
text is split into candidate chunks by one linear regex pass, chunks longer than MAX_CHUNK are skipped,
parentheses nest at most MAX_DEPTH deep, and an exponent must be an integer of at most MAX_EXPONENT
with a base of at most MAX_BASE digits (9**9**9 is refused, not computed).

Which text is an equation (the rule the failure taxonomy documents):
- The completion is normalised: "×", "·" and a letter x between numbers mean *, "÷" means /, a Unicode
  minus is "-", "$" and thousands separators are dropped; GSM8K's calculator brackets "<<" ">>" and a
  full stop not followed by a digit separate.
- A chunk is a maximal run of digits, ".", spaces, operators, parentheses, "%" and "=" (any other
  character ends it). A chunk with at least one "=" is a chain `e0 = e1 = ... = en`.
- A chain counts only if one of its sides holds an operator ("50 = 10" alone is a restatement, not
  arithmetic) and every side parses; otherwise it is skipped, never guessed at.
- Each adjacent pair must be equal. Exactly, unless the left side divides or holds a decimal: then a
  rounding to the precision written on the right is accepted (10/3 = 3.33 and 7/2 = 3 pass, 7*8 = 54 and
  10/4 = 2.4 do not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_CHUNK = 400
MAX_DEPTH = 16
MAX_EXPONENT = 64
MAX_BASE = 30  # digits of the base's numerator and denominator
MAX_CHAINS = 200  # per completion

_NORMALISE = [
    (re.compile(r"<<|>>"), " ; "),  # calculator annotations: each one a chunk of its own
    (re.compile(r"(?<=[\d)])[ \t]*\*\*[ \t]*(?=[\d(])"), "^"),  # 2**3 is a power
    (re.compile(r"\*\*"), ""),  # **7** is Markdown bold
    (re.compile(r"[×·∗]"), "*"),
    (re.compile(r"÷"), "/"),
    (re.compile(r"[−–]"), "-"),  # Unicode minus, en dash
    (re.compile(r"(?<=\d)[ \t]*[xX][ \t]*(?=[\d(])"), " * "),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # 1,200 -> 1200
    (re.compile(r"\$"), ""),
    (re.compile(r"\\times"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\.(?!\d)"), " ; "),  # a full stop that is not a decimal point ends a sentence
]
_CHUNK = re.compile(r"[0-9.+\-*/^()% \t=]+")
_OPERATOR = re.compile(r"[0-9.%)]\s*[+\-*/^]\s*[0-9.(]")


_DIGITS = frozenset("0123456789")


class EquationError(ValueError):
    """A side that does not parse, or would take too long to compute."""


@dataclass(frozen=True)
class Check:
    text: str  # "left = right", as normalised
    left: Fraction
    right: Fraction
    ok: bool
    computed: str = "left"  # which side holds an operator: "left", "right", "both" or "neither"


def _tokens(s: str) -> list[str]:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c in " \t":
            i += 1
        elif c in _DIGITS or c == ".":  # ASCII only: "¹".isdigit() is true, but it is no number
            j = i
            while j < len(s) and (s[j] in _DIGITS or s[j] == "."):
                j += 1
            out.append(s[i:j])
            i = j
        elif c in "+-*/^()%":
            out.append(c)
            i += 1
        else:
            raise EquationError(f"unexpected {c!r}")
    return out


class _Parser:
    """expr := term (('+'|'-') term)*; term := power (('*'|'/') power)*;
    power := unary ('^' power)?; unary := '-' unary | atom '%'*; atom := number | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.t, self.i, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise EquationError("unexpected end")
        self.i += 1
        return tok

    def parse(self) -> Fraction:
        if not self.t:
            raise EquationError("empty")
        value = self.expr()
        if self.peek() is not None:
            raise EquationError(f"unexpected {self.peek()!r}")
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.power()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.power()
            if op == "/" and rhs == 0:
                raise EquationError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def power(self) -> Fraction:
        base = self.unary()
        if self.peek() != "^":
            return base
        self.take()
        exp = self.power()
        if exp.denominator != 1 or abs(exp) > MAX_EXPONENT:
            raise EquationError("exponent too large or not an integer")
        if len(str(base.numerator)) > MAX_BASE or len(str(base.denominator)) > MAX_BASE:
            raise EquationError("base too large")
        if base == 0 and exp < 0:
            raise EquationError("division by zero")
        return base ** int(exp)

    def unary(self) -> Fraction:
        if self.peek() == "-":
            self.take()
            self._enter()
            value = -self.unary()
            self.depth -= 1
            return value
        value = self.atom()
        while self.peek() == "%":
            self.take()
            value = value / 100
        return value

    def atom(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            self._enter()
            value = self.expr()
            if self.take() != ")":
                raise EquationError("unbalanced parenthesis")
            self.depth -= 1
            return value
        if not (tok[0] in _DIGITS or tok[0] == ".") or tok.count(".") > 1 or tok == ".":
            raise EquationError(f"expected a number, got {tok!r}")
        return Fraction(tok)

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise EquationError("nested too deep")


def evaluate(side: str) -> Fraction:
    """The exact value of one side ("3 * (4 + 5)", "20%"); EquationError if it is not arithmetic."""
    if len(side) > MAX_CHUNK:
        raise EquationError("too long")
    return _Parser(_tokens(side)).parse()


def _decimals(side: str) -> int | None:
    """Decimals written in a side that is a bare number ("3.33" -> 2), else None."""
    m = re.fullmatch(r"\s*-?\d+(?:\.(\d*))?\s*", side)
    return None if m is None else len(m.group(1) or "")


def _equal(left_text: str, left: Fraction, right_text: str, right: Fraction) -> bool:
    if left == right:
        return True
    decimals = _decimals(right_text)
    rounds = "/" in left_text or "." in left_text or "%" in left_text
    if decimals is None or not rounds:
        return False
    return abs(left - right) <= Fraction(1, 2 * 10**decimals)


def normalise(text: str) -> str:
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return text


def check_equations(text: str) -> list[Check]:
    """Every checkable equality in `text`, in order, each re-evaluated (see the module docstring)."""
    checks: list[Check] = []
    chains = 0
    for chunk in _CHUNK.findall(normalise(text)):
        if "=" not in chunk or len(chunk) > MAX_CHUNK or chains >= MAX_CHAINS:
            continue
        sides = [s.strip().rstrip(".").strip() for s in chunk.split("=")]
        if not any(_OPERATOR.search(s) for s in sides):
            continue
        try:
            values = [evaluate(s) for s in sides]
        except (EquationError, ValueError, ZeroDivisionError):
            continue
        chains += 1
        for (lt, lv), (rt, rv) in zip(zip(sides, values), zip(sides[1:], values[1:])):
            computed = {(True, False): "left", (False, True): "right", (True, True): "both"}.get(
                (bool(_OPERATOR.search(lt)), bool(_OPERATOR.search(rt))), "neither"
            )
            checks.append(Check(f"{lt} = {rt}", lv, rv, _equal(lt, lv, rt, rv), computed))
    return checks


def show(x: Fraction) -> str:
    """A value as people write it: 56, 2.5, or 10/3 when it has no short decimal form."""
    if x.denominator == 1:
        return str(x.numerator)
    for places in range(1, 7):
        if (x * 10**places).denominator == 1:
            return f"{float(x):.{places}f}"
    return f"{x.numerator}/{x.denominator}"


def _says(c: Check) -> str:
    """What is wrong, naming the side that was computed: "right side is 80" for `20 = 4 * 20`."""
    left, right = show(c.left), show(c.right)
    return {
        "left": f"left side is {left}",
        "right": f"right side is {right}",
        "both": f"left side is {left}, right side is {right}",
    }.get(c.computed, f"{left} is not {right}")


def false_equations(text: str) -> list[dict]:
    """[{equation, left, right, computed, says}] for every equality that does not hold: the exact value of each side,
    which side holds the arithmetic, and a message that names it."""
    return [
        {"equation": c.text, "left": show(c.left), "right": show(c.right), "computed": c.computed, "says": _says(c)}
        for c in check_equations(text)
        if not c.ok
    ]

"""Confidence intervals and the paired test, with scipy rather than by hand."""

from __future__ import annotations

import math

from scipy.stats import binomtest, norm


def wilson_ci(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, n).proportion_ci(confidence_level=level, method="wilson")
    return (ci.low, ci.high)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar test: a two-sided binomial test on the discordant pairs (p = 1 when there are none)."""
    n = only_a + only_b
    return 1.0 if n == 0 else binomtest(only_a, n, 0.5).pvalue


def paired_diff_ci(only_a: int, only_b: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wald interval for the difference of two paired proportions, b minus a (Agresti, Categorical Data
    Analysis, 2nd ed., section 10.1.1): d = (n_b - n_a) / n, se = sqrt((n_a + n_b) - (n_b - n_a)^2 / n) / n,
    where n_a, n_b count the questions only a, only b answered right."""
    if n == 0:
        return (0.0, 0.0)
    d = (only_b - only_a) / n
    se = math.sqrt(max((only_a + only_b) - (only_b - only_a) ** 2 / n, 0.0)) / n
    z = norm.ppf(0.5 + level / 2)
    return (d - z * se, d + z * se)


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (ties: the one that appeared first); None only if all are None."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.get) if counts else None

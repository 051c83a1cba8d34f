"""Confidence intervals and the paired test, with scipy rather than by hand."""

from __future__ import annotations

from scipy.stats import binomtest


def wilson_ci(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, n).proportion_ci(confidence_level=level, method="wilson")
    return (ci.low, ci.high)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar test: a two-sided binomial test on the discordant pairs (p = 1 when there are none)."""
    n = only_a + only_b
    return 1.0 if n == 0 else binomtest(only_a, n, 0.5).pvalue

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


def _paired_z(alpha: float, power: float) -> tuple[float, float]:
    return norm.ppf(1 - alpha / 2), norm.ppf(power)


def mcnemar_n_needed(diff: float, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Paired questions a McNemar test needs to detect a difference `diff` (b's accuracy minus a's) when a share
    `discordant` of the questions is answered right by exactly one model, at level alpha with this power (Connor,
    Biometrics 1987): n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2. None when diff is 0 or impossible."""
    d, psi = abs(diff), discordant
    if d == 0 or psi <= 0 or d > psi:
        return None
    za, zb = _paired_z(alpha, power)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - d * d)) ** 2 / (d * d)


def mcnemar_detectable(n: int, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest difference (a share, e.g. 0.04 = 4 points) n paired questions detect with this power, for the
    given discordant share: Connor's formula solved for d (the n needed falls as d grows). None when psi is 0."""
    if n <= 0 or discordant <= 0:
        return None
    lo, hi = 1e-9, discordant
    if mcnemar_n_needed(hi, discordant, alpha, power) > n:
        return None  # not even the largest possible difference
    for _ in range(100):  # bisection: n_needed is decreasing in d on (0, psi]
        mid = (lo + hi) / 2
        if mcnemar_n_needed(mid, discordant, alpha, power) > n:
            lo = mid
        else:
            hi = mid
    return hi

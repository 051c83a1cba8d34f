import pytest
from scipy.stats import binom

from mathtune.evaluate.stats import majority, mcnemar_exact, paired_diff_ci, wilson_ci


def test_wilson_matches_the_textbook_formula():
    # Wilson (1927) score interval, written out: p=0.8, n=10, z=1.959964 -> (0.4902, 0.9433) (Newcombe 1998).
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_ci(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_is_a_binomial_test_on_discordant_pairs():
    # 2 vs 8 discordant pairs: p = 2 * P(X <= 2), X ~ Bin(10, 0.5) = 0.109375
    assert mcnemar_exact(2, 8) == pytest.approx(2 * binom.cdf(2, 10, 0.5))
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_difference_matches_agresti():
    # Agresti (2002), Table 10.1: presidential approval, n = 1600; 150 approve -> disapprove, 86 the reverse.
    # Difference of marginals 0.59 - 0.55 = 0.04, SE 0.0095, 95% CI (0.021, 0.059).
    lo, hi = paired_diff_ci(only_a=86, only_b=150, n=1600)
    assert (lo + hi) / 2 == pytest.approx(0.04)
    assert lo == pytest.approx(0.021, abs=5e-4) and hi == pytest.approx(0.059, abs=5e-4)
    assert paired_diff_ci(0, 0, 10) == (0.0, 0.0)


def test_majority_vote():
    assert majority(["3", "4", "4", None]) == "4"
    assert majority(["5", "6"]) == "5"  # tie: first seen
    assert majority([None, None]) is None

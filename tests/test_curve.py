"""The learning-curve verdict on synthetic validation curves of each kind."""

import math
import random

import pytest

from mathtune.analysis.curve import curve_verdict


def curve(fn, n=12, every=10, noise=0.0, seed=0):
    rng = random.Random(seed)
    return [(i * every, fn(i * every) + rng.gauss(0, noise)) for i in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_still_improving(seed):
    # Falling steadily to the end: a slow exponential far from its floor, with noise.
    v = curve_verdict(
        curve(lambda s: 0.5 + 1.0 * math.exp(-s / 400), noise=0.003, seed=seed), epochs=3, steps_per_epoch=40
    )
    assert v["curve_verdict"] == "still_improving"
    assert "6 epochs" in v["recommendation"]


@pytest.mark.parametrize("seed", range(5))
def test_plateaued(seed):
    # Reached its floor half-way through; only noise after.
    v = curve_verdict(curve(lambda s: 0.8 + 0.6 * math.exp(-s / 10), noise=0.003, seed=seed))
    assert v["curve_verdict"] == "plateaued"


@pytest.mark.parametrize("seed", range(5))
def test_overfitting(seed):
    # Down, then up: a U with its minimum at step 40.
    v = curve_verdict(
        curve(lambda s: 1.0 + 0.0004 * (s - 40) ** 2, noise=0.003, seed=seed), epochs=3, steps_per_epoch=40
    )
    assert v["curve_verdict"] == "overfitting"
    assert v["evidence"]["best_step"] in (30, 40, 50)
    assert "epoch" in v["recommendation"]


def test_too_short_to_tell():
    assert curve_verdict([(0, 1.3), (8, 1.2), (16, 1.1)])["curve_verdict"] == "too_short_to_tell"
    assert curve_verdict([])["curve_verdict"] == "too_short_to_tell"


def test_the_demo_curve():
    # The demo's validation losses (1 epoch of 256 rows, linear decay to 0): still falling at the end.
    val = [(0, 1.3125), (8, 1.2035), (16, 1.0987), (24, 1.0587), (32, 1.0462)]
    assert curve_verdict(val, epochs=1, steps_per_epoch=32)["curve_verdict"] == "still_improving"


def test_non_finite_points_are_ignored():
    val = curve(lambda s: 0.8 + 0.6 * math.exp(-s / 10), noise=0.003) + [(200, float("nan"))]
    assert curve_verdict(val)["curve_verdict"] == "plateaued"

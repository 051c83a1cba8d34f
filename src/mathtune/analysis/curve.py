"""The learning-curve verdict, from the validation losses alone.

The rule (tests/test_curve.py runs it on synthetic curves of each kind):
1. Fewer than MIN_POINTS validation points: `too_short_to_tell`.
2. Noise: sigma = median |second difference| / 1.65 over all points. Second differences cancel a linear
   trend, and for white noise of sd sigma they have sd sigma*sqrt(6), whose median absolute value is
   0.674*sqrt(6)*sigma = 1.65*sigma. Floor: 0.1% of the last loss (a smooth curve is not infinitely certain).
3. The window is the last third of the points (at least 3). Its least-squares slope, times the window's
   length in steps, is the change the trend made over it.
4. `overfitting`: the best loss is before the window's last point and the last loss is above it by more than
   2 x noise, with a rising window (positive change).
5. `still_improving`: the window's change is a decrease of more than 2 x noise.
6. Otherwise `plateaued`.
"""

from __future__ import annotations

import math
import statistics

MIN_POINTS = 4


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def curve_verdict(
    val: list[tuple[int, float]],
    epochs: float | None = None,
    steps_per_epoch: float | None = None,
) -> dict:
    """val: (step, validation loss) in step order. Returns {verdict, recommendation, evidence}."""
    points = [(s, v) for s, v in val if v is not None and math.isfinite(v)]
    if len(points) < MIN_POINTS:
        return {
            "curve_verdict": "too_short_to_tell",
            "recommendation": f"Only {len(points)} validation points: evaluate more often (train.eval_steps) "
            f"to get at least {MIN_POINTS}.",
            "evidence": {"points": len(points)},
        }
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    second = [losses[i + 1] - 2 * losses[i] + losses[i - 1] for i in range(1, len(losses) - 1)]
    noise = max(statistics.median(abs(d) for d in second) / 1.65, 1e-3 * abs(losses[-1]))
    k = max(3, math.ceil(len(points) / 3))
    ws, wl = steps[-k:], losses[-k:]
    change = _slope(ws, wl) * (ws[-1] - ws[0])
    best = min(range(len(losses)), key=losses.__getitem__)
    evidence = {
        "points": len(points),
        "window": k,
        "window_change": change,
        "noise": noise,
        "best_step": steps[best],
        "best_loss": losses[best],
        "last_loss": losses[-1],
    }
    epoch_of = (lambda s: s / steps_per_epoch) if steps_per_epoch else (lambda s: None)
    if best < len(losses) - 1 and losses[-1] - losses[best] > 2 * noise and change > 0:
        e = epoch_of(steps[best])
        at = f" (epoch {e:.2f})" if e is not None else ""
        return {
            "curve_verdict": "overfitting",
            "evidence": evidence,
            "recommendation": f"Validation loss was lowest at step {steps[best]}{at} and rose by "
            f"{losses[-1] - losses[best]:.4f} since: keep that checkpoint, and train for about "
            f"{max(e, 0.01):.2f} epochs next time, or regularise (more LoRA dropout, a lower "
            f"learning rate)."
            if e is not None
            else f"Validation loss was lowest at step {steps[best]}: keep that checkpoint and stop "
            f"there next time, or regularise (more LoRA dropout, a lower learning rate).",
        }
    if -change > 2 * noise:
        more = (
            f" Train for {2 * epochs:g} epochs instead of {epochs:g}, with early stopping on, to find where it "
            f"levels off."
            if epochs
            else " Train longer, with early stopping on."
        )
        return {
            "curve_verdict": "still_improving",
            "evidence": evidence,
            "recommendation": f"Validation loss fell {-change:.4f} over the last {k} evaluations, more than "
            f"twice the noise ({noise:.4f}): the curve had not levelled off." + more,
        }
    return {
        "curve_verdict": "plateaued",
        "evidence": evidence,
        "recommendation": f"Validation loss changed {change:+.4f} over the last {k} evaluations, within twice "
        f"the noise ({noise:.4f}): more epochs on the same data are unlikely to help; more or "
        f"different data, or a larger LoRA rank, might.",
    }

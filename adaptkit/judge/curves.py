"""Learning curves: how an arm's error falls with training-set size, and what that predicts.

Error against data size follows a power law over the ranges fine-tuning sees (Hestness et al.
2017, "Deep learning scaling is predictable, empirically"): ``error(n) = a * n ** -b``, a straight
line in log-log axes. ``compare`` fits one per arm to its scores at the sizes it tried and
answers the two questions a user with little data asks, with intervals:

- how many rows would training from scratch need to match the best transfer arm's score at
  the largest size tried (infinite when scratch's curve does not fall);
- what doubling the data is expected to gain for each arm.

The intervals refit the curve on every bootstrap replicate of the eval rows (the same paired
replicates the verdict uses), so they carry the evaluation noise; with one seed they do not
carry training noise, and extrapolating far beyond the sizes tried is a guess the report flags.
A two-parameter least-squares line needs no library beyond numpy; scipy's ``curve_fit`` would
fit the same line in log space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

FLOOR = 1e-4  # an error of 0 has no logarithm; no eval set here resolves finer than this
EXTRAPOLATION_LIMIT = 10.0  # predictions beyond 10x the largest size tried are flagged


@dataclass(frozen=True)
class PowerLaw:
    """``error(n) = exp(intercept) * n ** slope`` (slope < 0 when more data helps)."""

    intercept: float
    slope: float

    def error(self, n: float) -> float:
        return math.exp(self.intercept + self.slope * math.log(n))

    def rows_for(self, error: float) -> float:
        """Rows at which the curve reaches ``error``; inf when it never does (a flat or rising curve)."""
        if self.slope >= 0:
            return math.inf if error < self.error(1.0) else 1.0
        exponent = (math.log(max(error, FLOOR)) - self.intercept) / self.slope
        return math.exp(exponent) if exponent < 700 else math.inf  # a nearly flat curve: beyond any float


def fit_power_law(sizes: Sequence[float], errors: Sequence[float]) -> Optional[PowerLaw]:
    """Least squares in log-log space; None with fewer than two distinct sizes."""
    points = [(math.log(n), math.log(max(e, FLOOR))) for n, e in zip(sizes, errors) if n and n > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return PowerLaw(mean_y - slope * mean_x, slope)


def to_error(metric: float, greater_is_better: bool) -> float:
    """Error from a score: 1 - score for a score in [0, 1] where higher is better, the score itself otherwise."""
    return 1.0 - metric if greater_is_better else metric


def from_error(error: float, greater_is_better: bool) -> float:
    return 1.0 - error if greater_is_better else error


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan, math.nan
    low = finite[int((1 - level) / 2 * (len(finite) - 1))]
    high = finite[int(math.ceil((1 + level) / 2 * (len(finite) - 1)))]
    return low, high


def curve_questions(sizes: list[int], points: dict[str, list[float]], replicates: dict[str, list[list[float]]],
                    greater: bool, scratch: Optional[str], best_transfer: Optional[str]) -> dict[str, dict]:
    """Per arm: the fitted curve, the gain from doubling the largest size, and scratch's rows to match.

    ``points[arm]`` holds the arm's metric at each of ``sizes``; ``replicates[arm][i]`` the
    bootstrap replicates at ``sizes[i]`` (paired across arms: replicate k uses the same rows).
    """
    largest = max(sizes)
    out: dict[str, dict] = {}
    rounds = min((len(r) for per_size in replicates.values() for r in per_size), default=0)

    def doubling(curve: Optional[PowerLaw]) -> float:
        if curve is None:
            return math.nan
        return from_error(curve.error(2 * largest), greater) - from_error(curve.error(largest), greater)

    for arm, values in points.items():
        curve = fit_power_law(sizes, [to_error(v, greater) for v in values])
        gains = [doubling(fit_power_law(sizes, [to_error(replicates[arm][i][k], greater) for i in range(len(sizes))]))
                 for k in range(rounds)]
        low, high = percentile_interval(gains)
        out[arm] = {"slope": None if curve is None else round(curve.slope, 4),
                    "doubling_gain": None if curve is None else round(doubling(curve), 4),
                    "doubling_gain_ci": [round(low, 4), round(high, 4)] if curve is not None else None}
    if scratch in points and best_transfer in points and len(sizes) >= 2:
        target = points[best_transfer][sizes.index(largest)]
        curve = fit_power_law(sizes, [to_error(v, greater) for v in points[scratch]])
        needed = curve.rows_for(to_error(target, greater)) if curve else math.inf
        samples = []
        for k in range(rounds):
            fitted = fit_power_law(sizes, [to_error(replicates[scratch][i][k], greater) for i in range(len(sizes))])
            goal = to_error(replicates[best_transfer][sizes.index(largest)][k], greater)
            samples.append(fitted.rows_for(goal) if fitted else math.inf)
        low, high = percentile_interval(samples)
        out[scratch]["rows_to_match"] = {
            "target_arm": best_transfer, "target_metric": round(target, 4), "at_rows": largest,
            "rows": None if math.isinf(needed) else round(needed),
            "ci": [None if math.isinf(low) else round(low), None if math.isinf(high) else round(high)],
            "extrapolated": math.isinf(needed) or needed > EXTRAPOLATION_LIMIT * largest}
    return out

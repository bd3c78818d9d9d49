"""Learning curves: the power-law fit and the two questions it answers, against known curves."""
from __future__ import annotations

import math

import pytest

from adaptkit.judge.curves import PowerLaw, curve_questions, fit_power_law


def test_fit_recovers_a_known_power_law():
    sizes = [100, 300, 1000, 3000]
    curve = fit_power_law(sizes, [2.0 * n ** -0.3 for n in sizes])
    assert curve.slope == pytest.approx(-0.3) and math.exp(curve.intercept) == pytest.approx(2.0)
    assert curve.rows_for(2.0 * 10_000 ** -0.3) == pytest.approx(10_000, rel=1e-6)
    assert PowerLaw(0.0, 0.05).rows_for(0.1) == math.inf  # a curve that does not fall never gets there
    assert PowerLaw(-0.6, -1e-4).rows_for(0.2) == math.inf  # nearly flat: more rows than a float holds
    assert fit_power_law([100, 100], [0.3, 0.2]) is None


def test_rows_scratch_needs_and_the_gain_from_doubling():
    sizes = [100, 300, 1000]
    transfer = [1 - 0.4 * n ** -0.1 for n in sizes]   # accuracy, slowly rising
    scratch = [1 - 0.9 * n ** -0.1 for n in sizes]
    replicates = {"lora": [[v] * 50 for v in transfer], "scratch": [[v] * 50 for v in scratch]}
    answers = curve_questions(sizes, {"lora": transfer, "scratch": scratch}, replicates, True, "scratch", "lora")
    match = answers["scratch"]["rows_to_match"]
    # scratch's error 0.9 n^-0.1 equals lora's 0.4 * 1000^-0.1 at n = 1000 * (0.9/0.4)^10
    assert match["rows"] == pytest.approx(1000 * (0.9 / 0.4) ** 10, rel=1e-6) and match["extrapolated"]
    expected_gain = 0.4 * 1000 ** -0.1 - 0.4 * 2000 ** -0.1
    assert answers["lora"]["doubling_gain"] == pytest.approx(expected_gain, abs=1e-4)
    assert answers["lora"]["doubling_gain_ci"] == [pytest.approx(expected_gain, abs=1e-4)] * 2


def test_a_flat_scratch_curve_needs_unbounded_data():
    sizes = [100, 300, 1000]
    flat = [0.5, 0.5, 0.5]
    rising = [0.6, 0.7, 0.8]
    replicates = {"scratch": [[v] * 20 for v in flat], "full": [[v] * 20 for v in rising]}
    match = curve_questions(sizes, {"full": rising, "scratch": flat}, replicates, True, "scratch",
                            "full")["scratch"]["rows_to_match"]
    assert match["rows"] is None and match["ci"] == [None, None]

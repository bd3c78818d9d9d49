"""LogME and H-score against direct computations of what they claim to compute."""
from __future__ import annotations

import numpy as np
import pytest

from adaptkit.judge.logme import h_score, logme, logme_single


def _direct_log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, beta^-1 I + alpha^-1 F F^T): the marginal likelihood, with no SVD and no shortcut."""
    n = len(y)
    covariance = np.eye(n) / beta + features @ features.T / alpha
    sign, logdet = np.linalg.slogdet(covariance)
    assert sign > 0
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(covariance, y)))


@pytest.fixture
def regression_problem():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6))
    y = features @ rng.normal(size=6) * 0.5 + rng.normal(scale=0.3, size=40)
    return features, y


def test_logme_equals_the_marginal_likelihood_at_its_fixed_point(regression_problem):
    features, y = regression_problem
    result = logme_single(features, y)
    direct = _direct_log_evidence(features, y, result.alpha, result.beta) / len(y)
    assert result.logme == pytest.approx(direct, abs=1e-8)


def test_logme_fixed_point_is_the_maximum_of_a_brute_force_grid(regression_problem):
    features, y = regression_problem
    result = logme_single(features, y)
    grid = [(a, b) for a in np.logspace(-3, 3, 61) for b in np.logspace(-3, 3, 61)]
    best = max(_direct_log_evidence(features, y, a, b) for a, b in grid) / len(y)
    assert best <= result.logme + 1e-9  # nothing on the grid beats the fixed point
    assert best == pytest.approx(result.logme, abs=5e-3)  # and the grid gets close to it


def test_more_examples_than_dimensions_and_the_reverse_both_work():
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(10, 30))  # n < d: 20 eigenvalues of F^T F are zero
    y = rng.normal(size=10)
    result = logme_single(wide, y)
    assert result.logme == pytest.approx(_direct_log_evidence(wide, y, result.alpha, result.beta) / 10, abs=1e-8)


def test_informative_features_score_higher_than_noise():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=300)
    informative = np.eye(3)[labels] * 2 + rng.normal(scale=0.5, size=(300, 3))
    informative = np.hstack([informative, rng.normal(size=(300, 13))])
    noise = rng.normal(size=(300, 16))
    assert logme(informative, labels) > logme(noise, labels) + 0.1
    assert h_score(informative, labels) > 10 * h_score(noise, labels)


def test_logme_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        logme(np.ones((5, 2)), np.zeros(5, dtype=int))

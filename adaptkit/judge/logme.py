"""Transferability scores computed from features alone, before any training.

LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning") asks how well a Bayesian linear model on a model's features explains the labels:
the log of the maximum marginal likelihood (evidence) of ``y = F w + noise`` with the prior
``w ~ N(0, alpha^-1 I)`` and noise ``N(0, beta^-1)``, maximised over ``alpha`` and ``beta`` by
the paper's fixed-point iteration, divided by the number of examples. For classification each
class is a one-vs-rest 0/1 target and the per-class values are averaged. Higher is better;
the value is only comparable between feature sets of the same examples and labels, which is
exactly the pretrained-versus-random comparison ``adaptkit advise`` makes.

The H-score (Bao et al. 2019) is ``tr(cov(f)^-1 cov(E[f | y]))``: how much of the feature
variance lies between the class means, here with a shrunk covariance (see ``h_score``).

numpy (and scikit-learn for the shrinkage amount) only: no torch, so these are testable in
milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Evidence:
    """LogME of one target: the evidence per example at the fixed point and where it is."""

    logme: float
    alpha: float
    beta: float
    iterations: int


def _evidence(n: int, d: int, alpha: float, beta: float, sigma: np.ndarray, residual: float,
              m_norm: float) -> float:
    """Log evidence of the Bayesian linear model at (alpha, beta), given the posterior mean.

    ``sigma`` holds all ``d`` eigenvalues of ``F^T F`` (zeros included), ``residual`` is
    ``||F m - y||^2`` and ``m_norm`` is ``||m||^2`` for the posterior mean ``m``.
    """
    return (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * residual - alpha / 2 * m_norm - 0.5 * np.sum(np.log(alpha + beta * sigma)))


def logme_single(features: np.ndarray, target: np.ndarray, max_iterations: int = 100,
                 tolerance: float = 1e-6) -> Evidence:
    """LogME of one real-valued target ``target`` (n,) on ``features`` (n, d).

    The SVD ``F = U S V^T`` makes each iteration O(n k): with ``z = U^T y`` the posterior mean
    is ``m = V diag(beta s / (alpha + beta s^2)) z``, the effective number of parameters is
    ``gamma = sum(beta s^2 / (alpha + beta s^2))``, and the updates are
    ``alpha = gamma / ||m||^2``, ``beta = (n - gamma) / ||F m - y||^2`` (MacKay's fixed point).
    The evidence is evaluated at the converged values with ``m`` recomputed there.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    k = s.shape[0]
    sigma = np.zeros(d)
    sigma[:k] = s ** 2
    z = u.T @ y  # coordinates of y in the column space of F
    y_norm = float(y @ y)
    eps = 1e-12

    def posterior(alpha: float, beta: float) -> tuple[float, float, float]:
        shrink = beta * s / (alpha + beta * s ** 2)  # m = V (shrink * z)
        m_norm = float(np.sum((shrink * z) ** 2))
        fitted = s * shrink * z  # U^T F m
        residual = max(y_norm - float(z @ z) + float(np.sum((z - fitted) ** 2)), eps)
        gamma = float(np.sum(beta * s ** 2 / (alpha + beta * s ** 2)))
        return m_norm, residual, gamma

    alpha, beta = 1.0, 1.0
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        m_norm, residual, gamma = posterior(alpha, beta)
        new_alpha = gamma / max(m_norm, eps)
        new_beta = max(n - gamma, eps) / residual
        converged = (abs(new_alpha - alpha) <= tolerance * alpha and abs(new_beta - beta) <= tolerance * beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    m_norm, residual, _ = posterior(alpha, beta)
    value = _evidence(n, d, alpha, beta, sigma, residual, m_norm) / n
    return Evidence(float(value), float(alpha), float(beta), iterations)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of integer class ``labels`` on ``features``: mean over classes of one-vs-rest LogME."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError("LogME needs at least two classes")
    # Every class, even with two: the model has no intercept, so y and 1 - y score differently
    # and the paper averages over all one-hot columns.
    return float(np.mean([logme_single(features, (labels == c).astype(np.float64)).logme for c in classes]))


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Shrinkage H-score: ``tr(cov(f)^-1 cov(E[f|y]))`` with a Ledoit-Wolf shrunk ``cov(f)``.

    With as many rows as feature dimensions or fewer, the sample covariance is singular and the
    plain H-score reaches (classes - 1) for any features, pure noise included; shrinking the
    covariance toward a scaled identity by the Ledoit-Wolf amount (Ibrahim et al. 2022,
    "Newer is not always better") keeps the score meaningful there. scikit-learn computes the
    shrinkage amount.
    """
    from sklearn.covariance import ledoit_wolf

    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0)
    labels = np.asarray(labels)
    covariance, _ = ledoit_wolf(f, assume_centered=True)
    means = np.zeros_like(f)
    for c in np.unique(labels):
        rows = labels == c
        means[rows] = f[rows].mean(axis=0)
    between = means.T @ means / len(f)
    return float(np.trace(np.linalg.solve(covariance, between)))

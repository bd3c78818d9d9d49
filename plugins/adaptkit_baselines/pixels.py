"""``pixel_linear``: a linear model on the task's own pixels averaged down to 8 x 8, for image classification."""
from __future__ import annotations

from typing import Any

from adaptkit import Baseline, BaselineRows
from adaptkit_baselines.linear import class_count, class_log_probabilities, fit_with_cv

SIDE = 8  # pixels per side after averaging: 8 x 8 x 3 = 192 features, enough for colour and layout


class DownsampledPixels(Baseline):
    """Standardised 8 x 8 average-pooled pixels + logistic regression (C by 5-fold CV)."""

    name = "pixel_linear"
    label = "a linear model on downsampled pixels"
    description = ("the task's preprocessed pixels averaged down to 8 x 8 per channel, standardised, logistic "
                   "regression with C chosen by 5-fold cross-validation (scikit-learn)")
    tasks = ("image_classification",)

    def __init__(self) -> None:
        self.model: Any = None
        self.chosen: dict[str, Any] = {}
        self.classes = 0

    @staticmethod
    def _features(data: BaselineRows) -> Any:
        import numpy
        import torch

        if data.encoded is None or "pixel_values" not in data.encoded.column_names:
            raise ValueError("pixel_linear needs the task's preprocessed pixel_values")
        pixels = torch.from_numpy(numpy.asarray(data.encoded.with_format("numpy")["pixel_values"], dtype=numpy.float32))
        pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, SIDE)
        return pooled.flatten(1).numpy()

    def fit(self, task: Any, data: BaselineRows, metric: str, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        targets = [int(t) for t in data.targets or []]
        self.classes = class_count(task, targets)
        pipeline = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000, random_state=seed))])
        self.model, self.chosen = fit_with_cv(pipeline, "model__C", self._features(data), targets, False, metric,
                                              seed)
        self.chosen["features"] = SIDE * SIDE * 3

    def scores(self, task: Any, data: BaselineRows) -> Any:
        return class_log_probabilities(self.model, self._features(data), self.classes)

    def summary(self) -> dict[str, Any]:
        return dict(self.chosen)

"""What both first-party baselines share: a scikit-learn pipeline whose ``C`` is chosen by CV,
and its probabilities turned into the task's logit layout."""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional

# Regularisation strengths tried, log-spaced (strong to weak). On SST-2 the choice fell on 1 to 100;
# 1e-2 and 1e3 were never chosen and cost a third of the search (liblinear is slowest at large C).
C_GRID = [0.1, 1.0, 10.0, 100.0]
FOLDS = 5
FLOOR_LOG_PROBABILITY = -30.0  # a class never seen in training: a finite, hopeless score


def scoring_for(metric: str) -> str:
    """scikit-learn's scorer for the verdict's metric: macro-F1 when it decides, accuracy otherwise."""
    return "f1_macro" if metric == "macro_f1" else "accuracy"


def fit_with_cv(pipeline: Any, parameter: str, inputs: Any, targets: Any, multi_label: bool, metric: str,
                seed: int) -> tuple[Any, dict[str, Any]]:
    """``pipeline`` fitted on all rows with ``parameter`` (its ``C``) chosen by k-fold CV on the same rows.

    Stratified folds for one label per row (k is lowered to the smallest class's count); plain
    shuffled folds for multi-label. With fewer than two rows of some class no CV is possible:
    ``C = 1`` and the summary says so.
    """
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    if multi_label:
        folds = min(FOLDS, len(targets))
        splitter: Any = KFold(n_splits=folds, shuffle=True, random_state=seed) if folds >= 2 else None
    else:
        folds = min(FOLDS, min(Counter(targets).values()))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed) if folds >= 2 else None
    if splitter is None:
        pipeline.set_params(**{parameter: 1.0})
        pipeline.fit(inputs, targets)
        return pipeline, {"C": 1.0, "folds": 0, "note": "too few rows of a class to cross-validate: C = 1"}
    search = GridSearchCV(pipeline, {parameter: C_GRID}, cv=splitter, scoring=scoring_for(metric), n_jobs=1,
                          error_score=0.0)
    search.fit(inputs, targets)
    return search.best_estimator_, {"C": float(search.best_params_[parameter]), "folds": folds,
                                    "cv_" + metric: round(float(search.best_score_), 5)}


def class_log_probabilities(model: Any, inputs: Any, classes: int) -> Any:
    """[rows, classes] log-probabilities in the task's class order; classes absent in training get a floor."""
    import numpy
    import torch

    probabilities = model.predict_proba(inputs)
    out = numpy.full((probabilities.shape[0], classes), FLOOR_LOG_PROBABILITY, dtype=numpy.float32)
    for column, label in enumerate(model.classes_):
        out[:, int(label)] = numpy.log(numpy.clip(probabilities[:, column], 1e-12, 1.0))
    return torch.from_numpy(out)


def label_log_odds(model: Any, inputs: Any) -> Any:
    """[rows, labels] log-odds of a one-vs-rest multi-label model (the task applies a sigmoid)."""
    import numpy
    import torch

    probabilities = numpy.clip(model.predict_proba(inputs), 1e-6, 1 - 1e-6)
    return torch.from_numpy(numpy.log(probabilities / (1 - probabilities)).astype(numpy.float32))


def is_multi_label(targets: list[Any]) -> bool:
    return bool(targets) and isinstance(targets[0], (list, tuple))


def class_count(task: Any, targets: list[Any]) -> int:
    """How many classes the task's logits have: its label set, else the largest index seen + 1."""
    labels: Optional[list[Any]] = getattr(task, "labels", None)
    return len(labels) if labels else max(int(t) for t in targets) + 1

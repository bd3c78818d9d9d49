"""``ngram_ridge``: the same word and character n-gram TF-IDF as ``ngram_linear``, with ridge regression,
for the regression task: what a practitioner ships for a score when a transformer does not clearly beat it."""
from __future__ import annotations

from typing import Any

from adaptkit import BaselineRows
from adaptkit_baselines.ngrams import TextNgramBaseline

# Ridge strengths tried, log-spaced (weak to strong).
ALPHA_GRID = [0.01, 0.1, 1.0, 10.0, 100.0]
FOLDS = 5
LOWER_IS_BETTER = {"mse", "rmse", "mae", "loss"}


def scorer_for(metric: str) -> Any:
    """scikit-learn's scorer for the verdict's metric: negated errors where lower is better, a rank
    correlation (scipy's, zero for a constant fold) where the verdict ranks."""
    from scipy import stats
    from sklearn.metrics import make_scorer

    if metric in LOWER_IS_BETTER:
        return {"mae": "neg_mean_absolute_error"}.get(metric, "neg_mean_squared_error")

    def correlation(actual: Any, predicted: Any) -> float:
        function = stats.pearsonr if metric == "pearson" else stats.spearmanr
        value = float(function(actual, predicted)[0]) if len(set(predicted)) > 1 and len(set(actual)) > 1 else 0.0
        return value if value == value else 0.0

    return make_scorer(correlation)


class NgramRidge(TextNgramBaseline):
    """TF-IDF of word 1-2-grams and character 2-5-grams + ridge regression (alpha by 5-fold CV)."""

    name = "ngram_ridge"
    label = "a bag-of-words ridge regression"
    description = ("TF-IDF of word 1-2-grams and character 2-5-grams per text column, ridge regression with "
                   "alpha chosen by 5-fold cross-validation on the verdict's metric (scikit-learn)")
    tasks = ("regression",)

    def __init__(self) -> None:
        self.model: Any = None
        self.columns: list[str] = []
        self.chosen: dict[str, Any] = {}

    def fit(self, task: Any, data: BaselineRows, metric: str, seed: int) -> None:
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import GridSearchCV, KFold
        from sklearn.pipeline import Pipeline

        targets = [float(t) for t in (data.targets or [])]
        pipeline = Pipeline([("features", self.features(task)), ("model", Ridge(random_state=seed))])
        frame = self._frame(data.rows)
        folds = min(FOLDS, len(targets) // 2)
        if folds < 2:
            pipeline.set_params(model__alpha=1.0)
            self.model = pipeline.fit(frame, targets)
            self.chosen = {"alpha": 1.0, "folds": 0, "note": "too few rows to cross-validate: alpha = 1"}
            return
        search = GridSearchCV(pipeline, {"model__alpha": ALPHA_GRID}, cv=KFold(folds, shuffle=True, random_state=seed),
                              scoring=scorer_for(metric), n_jobs=1, error_score=0.0)
        search.fit(frame, targets)
        self.model = search.best_estimator_
        best = float(search.best_score_)
        self.chosen = {"alpha": float(search.best_params_["model__alpha"]), "folds": folds,
                       "cv_" + metric: round(-best if metric in LOWER_IS_BETTER else best, 5)}

    def scores(self, task: Any, data: BaselineRows) -> Any:
        import torch

        predicted = self.model.predict(self._frame(data.rows))
        return torch.tensor(predicted, dtype=torch.float32).reshape(-1, 1)

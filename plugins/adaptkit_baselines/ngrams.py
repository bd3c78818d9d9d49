"""``ngram_linear``: word and character n-gram TF-IDF with logistic regression, for text classification."""
from __future__ import annotations

from typing import Any, Optional

from adaptkit import Baseline, BaselineRows
from adaptkit_baselines.linear import (class_count, class_log_probabilities, fit_with_cv, is_multi_label,
                                       label_log_odds)


def _text_features(column: str) -> Any:
    """Word 1-2-grams and character 2-5-grams (within word boundaries) of one text column, TF-IDF weighted."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        (f"{column}-words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=1, sublinear_tf=True,
                                            lowercase=True)),
        (f"{column}-chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=1, sublinear_tf=True,
                                            lowercase=True)),
    ])


class TextNgramBaseline(Baseline):
    """What every n-gram baseline shares: it serves a task with text columns, reads those columns as
    a frame, and turns each into word and character n-gram TF-IDF (``features``). A subclass adds its
    estimator (``ngram_linear``: logistic regression; ``ngram_ridge``: ridge regression)."""

    columns: list[str]

    def serves(self, task: Any) -> Optional[str]:
        refusal = super().serves(task)
        if refusal is None and not task.text_columns():
            return f"task {task.name!r} names no text column"
        return refusal

    def _frame(self, rows: Any) -> Any:
        import pandas

        return pandas.DataFrame({column: ["" if value is None else str(value) for value in rows[column]]
                                 for column in self.columns})

    def features(self, task: Any) -> Any:
        """The task's text columns (remembered for ``_frame``), each as n-gram TF-IDF, side by side."""
        from sklearn.compose import ColumnTransformer

        self.columns = list(task.text_columns())
        return ColumnTransformer([(column, _text_features(column), column) for column in self.columns])

    def summary(self) -> dict[str, Any]:
        return dict(self.chosen)


class BagOfNgrams(TextNgramBaseline):
    """TF-IDF of word 1-2-grams and character 2-5-grams + logistic regression (C by 5-fold CV)."""

    name = "ngram_linear"
    label = "a bag-of-words model"
    description = ("TF-IDF of word 1-2-grams and character 2-5-grams per text column, logistic regression "
                   "(one-vs-rest for multi-label) with C chosen by 5-fold cross-validation (scikit-learn)")
    tasks = ("sequence_classification",)

    def __init__(self) -> None:
        self.model: Any = None
        self.columns: list[str] = []
        self.multi_label = False
        self.chosen: dict[str, Any] = {}

    def fit(self, task: Any, data: BaselineRows, metric: str, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import Pipeline

        targets = list(data.targets or [])
        self.multi_label = is_multi_label(targets)
        features = self.features(task)
        linear = LogisticRegression(solver="liblinear", max_iter=1000, random_state=seed)
        estimator = OneVsRestClassifier(linear) if self.multi_label else linear
        parameter = "model__estimator__C" if self.multi_label else "model__C"
        y: Any = [[int(v) for v in t] for t in targets] if self.multi_label else [int(t) for t in targets]
        if self.multi_label:
            import numpy

            y = numpy.asarray(y)
        self.classes = class_count(task, targets) if not self.multi_label else len(targets[0])
        self.model, self.chosen = fit_with_cv(Pipeline([("features", features), ("model", estimator)]), parameter,
                                              self._frame(data.rows), y, self.multi_label, metric, seed)
        vocabulary = sum(len(v.vocabulary_) for _, union, _ in self.model.named_steps["features"].transformers_
                         if hasattr(union, "transformer_list") for _, v in union.transformer_list)
        self.chosen["features"] = vocabulary

    def scores(self, task: Any, data: BaselineRows) -> Any:
        frame = self._frame(data.rows)
        if self.multi_label:
            return label_log_odds(self.model, frame)
        return class_log_probabilities(self.model, frame, self.classes)

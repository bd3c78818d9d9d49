"""Regression: one number per text (or text pair), e.g. a similarity or a rating (STS-B).

The model is the sequence classifier with one output (``num_labels: 1``, ``problem_type:
regression``: transformers then trains it with mean squared error), so the head, its pooling and
the export are sequence classification's. What differs is the label: a number, never a class, so
it goes through none of the class-label checks; a cell that is not a finite number is refused
with its file and line (``row_problem``) before any model is built.

Metrics: mse, rmse, mae, pearson and spearman (scipy). The primary metric is ``mse`` (lower is
better) by default: it is what the model minimises and it is defined for every prediction, while
a correlation is undefined for a constant prediction (an untrained model's); ``task.metric:
spearman`` (higher is better) makes the ranking decide the best epoch and the judge's verdicts.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import Field, PositiveInt

from adaptkit import LabelRules, Task, TaskOptions, write_label_maps
from adaptkit_tasks.sequence_classification import SequenceClassification

# metric -> whether higher is better; every one ``compute_metrics`` reports
REGRESSION_METRICS = {"mse": False, "rmse": False, "mae": False, "pearson": True, "spearman": True}


class RegressionOptions(TaskOptions):
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: Optional[str] = Field(None, description="Second text of a pair (STS-B's sentence2).")
    label_column: str = Field("label", description="Column holding the number to predict.")
    max_length: PositiveInt = Field(128, description="Tokens kept per example; longer texts are truncated.")
    pooling: Literal["auto", "cls", "mean", "last", "pooler"] = Field(
        "auto", description="The vector the head reads, as for sequence_classification (auto: what the "
                            "checkpoint declares, else the architecture's own head).")
    metric: Literal["mse", "rmse", "mae", "pearson", "spearman"] = Field(
        "mse", description="The metric that chooses the best epoch and decides compare's verdicts: mse, rmse, "
                           "mae (lower is better) or pearson, spearman (higher is better).")


def as_number(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None when it is not one (empty, text, NaN, infinite, a bool)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def regression_scores(predicted: Any, actual: Any) -> dict[str, float]:
    """mse, rmse, mae, pearson and spearman of two 1-D float tensors.

    A correlation is undefined when either side is constant (an untrained model predicts one
    value): it is reported as 0.0, no ranking information, so the best-epoch choice and the
    bootstrap never meet a NaN.
    """
    import numpy
    from scipy import stats

    p = predicted.double().cpu().numpy()
    a = actual.double().cpu().numpy()
    error = p - a
    mse = float(numpy.mean(error ** 2)) if len(a) else 0.0
    scores = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(numpy.mean(numpy.abs(error))) if len(a) else 0.0}
    constant = len(a) < 2 or numpy.ptp(p) == 0 or numpy.ptp(a) == 0
    scores["pearson"] = 0.0 if constant else float(stats.pearsonr(p, a)[0])
    scores["spearman"] = 0.0 if constant else float(stats.spearmanr(p, a)[0])
    return {k: (v if math.isfinite(v) else 0.0) for k, v in scores.items()}


class Regression(SequenceClassification):
    """Predict one number per text (or text pair) with a one-output head trained by mean squared error."""

    name = "regression"
    description = "One number per text or text pair (a rating, a similarity): MSE loss; Pearson, Spearman, MSE."
    Options = RegressionOptions
    is_default = False
    primary_metric = "mse"
    greater_is_better = False
    metric_names = ("loss", *REGRESSION_METRICS)

    def __init__(self, options=None):
        Task.__init__(self, options)  # sequence classification's own reads class-label options
        self.pooling: Optional[str] = None
        self.pooling_reason = ""
        self.head_reads_pooler = False
        self.labels = [self.options.label_column]  # the one output, named for the export's id2label
        self.primary_metric = self.options.metric
        self.greater_is_better = REGRESSION_METRICS[self.options.metric]
        self.target_mean: Optional[float] = None  # the training rows' mean: what a constant predictor says

    # ------------------------------------------------------------------ data
    def label_column(self) -> Optional[str]:
        return None  # no classes: nothing to stratify on, no class-label checks

    def declared_labels(self) -> Optional[list[str]]:
        return None

    def label_rules(self) -> Optional[LabelRules]:
        return None

    def target_columns(self) -> list[str]:
        return [self.options.label_column]

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        column = self.options.label_column
        if column in row and as_number(row[column]) is None:
            return f"column {column!r} holds {row[column]!r}, not a number (regression needs a finite number per row)"
        return None

    def setup(self, train) -> None:
        from adaptkit import DataError

        values = [as_number(v) for v in train[self.options.label_column]]
        bad = next((i for i, v in enumerate(values) if v is None), None)
        if bad is not None:
            raise DataError(f"row {bad + 2}: column {self.options.label_column!r} holds "
                            f"{train[self.options.label_column][bad]!r}, not a number")
        if len(set(values)) < 2:
            raise DataError(f"column {self.options.label_column!r} holds {len(set(values))} distinct value(s); "
                            f"regression needs the target to vary")
        self.target_mean = sum(values) / len(values)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "target_mean": self.target_mean}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.labels = [self.options.label_column]
        self.target_mean = state.get("target_mean")

    def preprocess(self, dataset, tokenizer):
        from adaptkit import DataError

        opts = self.options
        has_labels = opts.label_column in dataset.column_names

        def encode(batch, indices):
            encoded = self.encode_texts(batch, tokenizer)
            if has_labels:
                labels = []
                for row, value in zip(indices, batch[opts.label_column]):
                    number = as_number(value)
                    if number is None:
                        raise DataError(f"row {row + 2}: column {opts.label_column!r} holds {value!r}, not a number")
                    labels.append(number)
                encoded["labels"] = labels
            return encoded

        return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           desc="tokenizing")

    def collate(self, tokenizer):
        from transformers import DataCollatorWithPadding

        padder = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)

        def collate(rows):
            batch = padder([{k: v for k, v in row.items() if k != "length"} for row in rows])
            if "labels" in batch:
                batch["labels"] = batch["labels"].float()
            return batch

        return collate

    # ------------------------------------------------------------------ model
    def configure_model(self, config: Any) -> None:
        write_label_maps(config, [self.options.label_column], "regression")

    # ------------------------------------------------------------------ metrics
    def compute_metrics(self, logits, labels) -> dict[str, float]:
        predicted = logits.float().reshape(len(labels), -1)[:, 0]
        scores = regression_scores(predicted, labels.float())
        return {"loss": scores["mse"], **scores}

    def predict_rows(self, logits) -> list[Any]:
        return [{"value": round(float(v), 6)} for v in logits.float().reshape(logits.shape[0], -1)[:, 0]]

"""Sequence classification: one label (or several) per text or text pair."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import Field, PositiveInt

from adaptkit import LabelRules, Task, TaskOptions
from adaptkit_tasks.shared import macro_f1


class SequenceClassificationOptions(TaskOptions):
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: Optional[str] = Field(None, description="Second text of a pair (NLI, paraphrase).")
    label_column: str = Field("label", description="Column holding the label (or labels, multi-label).")
    labels: Optional[list[Union[str, int]]] = Field(
        None, description="The label set, in order; inferred (sorted) from the training data when absent.")
    multi_label: bool = Field(False, description="Each row has several labels, separated by label_separator.")
    label_separator: str = ","
    max_length: PositiveInt = Field(128, description="Tokens kept per example; longer texts are truncated.")


class SequenceClassification(Task):
    """Classify each text (or text pair) into one of the labels, or several for multi-label."""

    name = "sequence_classification"
    Options = SequenceClassificationOptions
    peft_task_type = "SEQ_CLS"
    pipeline_tag = "text-classification"
    primary_metric = "accuracy"
    greater_is_better = True
    metric_names = ("loss", "accuracy", "macro_f1")
    is_default = True  # a recipe without a task section classifies text

    def __init__(self, options=None):
        super().__init__(options)
        self.labels: list[str] = [str(label) for label in self.options.labels] if self.options.labels else []
        if self.options.multi_label:
            self.primary_metric = "macro_f1"
            self.metric_names = ("loss", "exact_match", "micro_f1", "macro_f1")

    # ------------------------------------------------------------------ data
    def label_column(self) -> Optional[str]:
        return self.options.label_column

    def declared_labels(self) -> Optional[list[str]]:
        return [str(label) for label in self.options.labels] if self.options.labels else None

    def label_rules(self) -> Optional[LabelRules]:
        labels = self.declared_labels()
        return LabelRules(self.options.label_column, tuple(labels) if labels is not None else None,
                          multi=self.options.multi_label, separator=self.options.label_separator)

    def text_columns(self) -> list[str]:
        return [c for c in (self.options.text_column, self.options.text_pair_column) if c]

    def sequence_length(self) -> Optional[int]:
        return self.options.max_length

    def required_columns(self) -> list[str]:
        columns = [self.options.text_column, self.options.label_column]
        if self.options.text_pair_column:
            columns.append(self.options.text_pair_column)
        return columns

    def _row_labels(self, value: Any) -> list[str]:
        if self.options.multi_label:
            if isinstance(value, (list, tuple)):
                return [str(v).strip() for v in value]
            return [part.strip() for part in str(value).split(self.options.label_separator) if part.strip()]
        return [str(value)]

    def setup(self, train) -> None:
        from adaptkit import DataError

        if self.labels:
            return
        seen: set[str] = set()
        for value in train[self.options.label_column]:
            if value is None:
                continue
            seen.update(self._row_labels(value))
        if len(seen) < 2 and not self.options.multi_label:
            raise DataError(f"column {self.options.label_column!r} has {len(seen)} distinct label(s) "
                            f"({', '.join(sorted(seen)) or 'none'}); classification needs at least two")
        self.labels = sorted(seen, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    def preprocess(self, dataset, tokenizer):
        from adaptkit import DataError

        opts = self.options
        index = {label: i for i, label in enumerate(self.labels)}
        has_labels = opts.label_column in dataset.column_names

        def encode(batch, indices):
            texts = [("" if t is None else str(t)) for t in batch[opts.text_column]]
            pairs = None
            if opts.text_pair_column:
                pairs = [("" if t is None else str(t)) for t in batch[opts.text_pair_column]]
            encoded = tokenizer(texts, pairs, truncation=True, max_length=opts.max_length)
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            if has_labels:
                labels = []
                for row, value in zip(indices, batch[opts.label_column]):
                    names = self._row_labels(value) if value is not None else []
                    unknown = [n for n in names if n not in index]
                    if unknown or (not names and not opts.multi_label):
                        raise DataError(f"row {row + 2}: label {unknown[0] if unknown else value!r} is not in "
                                        f"the label set {self.labels}")
                    if opts.multi_label:
                        vector = [0.0] * len(self.labels)
                        for n in names:
                            vector[index[n]] = 1.0
                        labels.append(vector)
                    else:
                        labels.append(index[names[0]])
                encoded["labels"] = labels
            return encoded

        return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           desc="tokenizing")

    def collate(self, tokenizer):
        from transformers import DataCollatorWithPadding

        padder = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)

        def collate(rows):
            rows = [{k: v for k, v in row.items() if k != "length"} for row in rows]
            batch = padder(rows)
            if self.options.multi_label and "labels" in batch:
                batch["labels"] = batch["labels"].float()
            return batch

        return collate

    # ------------------------------------------------------------------ model
    def build_model(self, source: str, config: Any, from_config: bool, **kwargs: Any):
        from transformers import AutoModelForSequenceClassification

        settings = {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: i for i, label in enumerate(self.labels)},
            "problem_type": "multi_label_classification" if self.options.multi_label else "single_label_classification",
        }
        for key, value in settings.items():
            setattr(config, key, value)
        if from_config:
            return AutoModelForSequenceClassification.from_config(config, **{k: v for k, v in kwargs.items()
                                                                              if k == "trust_remote_code"})
        return AutoModelForSequenceClassification.from_pretrained(source, config=config, **kwargs)

    def head_modules(self, model) -> list[str]:
        names = [name for name, _ in model.named_modules()]
        candidates = ("classifier", "score", "classification_head", "logits_proj")
        return [name for name in names if name.split(".")[-1] in candidates and name.count(".") <= 1]

    # ------------------------------------------------------------------ metrics
    def compute_metrics(self, logits, labels) -> dict[str, float]:
        import torch

        if self.options.multi_label:
            predicted = (torch.sigmoid(logits) > 0.5).long()
            actual = labels.long()
            tp = (predicted & actual).sum().item()
            fp = (predicted & (1 - actual)).sum().item()
            fn = ((1 - predicted) & actual).sum().item()
            per_label = []
            for j in range(actual.shape[1]):
                p, a = predicted[:, j], actual[:, j]
                t = (p & a).sum().item()
                d = (2 * t + (p & (1 - a)).sum().item() + ((1 - p) & a).sum().item())
                if d:
                    per_label.append(2 * t / d)
            return {
                "loss": float(torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), actual.float())),
                "exact_match": float((predicted == actual).all(dim=1).float().mean()),
                "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                "macro_f1": float(sum(per_label) / len(per_label)) if per_label else 0.0,
            }
        predicted = logits.argmax(dim=-1)
        return {
            # from the gathered rows themselves: exact under many processes and uneven last batches
            "loss": float(torch.nn.functional.cross_entropy(logits.float(), labels.long())),
            "accuracy": float((predicted == labels).float().mean()),
            "macro_f1": macro_f1(predicted, labels, len(self.labels)),
        }

    def predict_rows(self, logits) -> list[Any]:
        import torch

        if self.options.multi_label:
            chosen = torch.sigmoid(logits) > 0.5
            return [self.options.label_separator.join(self.labels[j] for j in row.nonzero().flatten().tolist())
                    for row in chosen]
        probabilities = torch.softmax(logits, dim=-1)
        return [{"label": self.labels[i], "score": round(float(probabilities[r, i]), 6)}
                for r, i in enumerate(logits.argmax(dim=-1).tolist())]

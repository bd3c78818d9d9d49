"""Token classification (NER, chunking, POS): one BIO tag per word of a pre-split sentence.

Words are split into sub-tokens by the tokenizer; each word's label sits on its first
sub-token and the rest are labelled -100, so a word counts once in loss and metrics.
Entity-level precision/recall/F1 are seqeval's (default conlleval span rules).
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import Field, PositiveInt

from adaptkit import Task, TaskOptions, write_label_maps
from adaptkit_tasks.padding import IGNORE


class TokenClassificationOptions(TaskOptions):
    tokens_column: str = Field("tokens", description="Column holding the words of each row (a list of strings).")
    tags_column: str = Field("tags", description="Column holding one tag per word (a list, e.g. B-PER, I-PER, O).")
    labels: Optional[list[str]] = Field(
        None, description="The tag set, in order; inferred from the training data when absent ('O' first).")
    max_length: PositiveInt = Field(128, description="Sub-tokens kept per row; words past it get no label.")


def _as_list(value: Union[list, str, None]) -> list[str]:
    """A list column as it is; a string (a CSV cell) split on whitespace."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of every entity in a BIO sequence, as seqeval's default mode reads it.

    An entity starts at B-X, or at I-X after O or after another type (a lenient IOB1 reading);
    it continues through I-X of the same type. A tag without a prefix counts as its own type.
    """
    spans: set[tuple[str, int, int]] = set()
    kind: Optional[str] = None
    start = 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, rest = tag.partition("-") if "-" in tag else ("B" if tag != "O" else "O", "", tag)
        prefix = prefix.upper()
        continues = prefix in ("I", "E") and kind == rest
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if prefix in ("B", "S") or (prefix in ("I", "E") and not continues):
            kind, start = rest, i
        if prefix in ("E", "S") and kind is not None:
            spans.add((kind, start, i + 1))
            kind = None
    return spans


def _seqeval_tag(tag: str) -> str:
    """A tag as seqeval reads it the way ``entity_spans`` does: prefix upper-cased, and a tag without
    one (a POS tag such as NN) its own one-word entity (seqeval would split NN into N + N)."""
    if tag == "O":
        return tag
    prefix, dash, rest = tag.partition("-")
    if not dash:
        return f"B-{tag}"
    return f"{prefix.upper()}-{rest}" if prefix.upper() in ("B", "I", "E", "S") else "O"  # X-Y: no entity


def span_scores(actual: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 over entities (seqeval, default conlleval mode): a prediction counts
    only if type and span match; 0 where nothing was predicted or nothing was there to find."""
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        [[_seqeval_tag(t) for t in row] for row in actual], [[_seqeval_tag(t) for t in row] for row in predicted],
        average="micro", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}



class TokenClassification(Task):
    """Tag every word of a pre-split sentence (BIO named entities, chunks, parts of speech)."""

    name = "token_classification"
    model_class = "AutoModelForTokenClassification"
    head_names = ("classifier", "score")
    Options = TokenClassificationOptions
    peft_task_type = "TOKEN_CLS"
    pipeline_tag = "token-classification"
    primary_metric = "f1"
    metric_names = ("precision", "recall", "f1", "accuracy", "loss")
    greater_is_better = True

    def __init__(self, options=None):
        super().__init__(options)
        self.labels: list[str] = list(self.options.labels) if self.options.labels else []

    # ------------------------------------------------------------------ data
    def declared_labels(self) -> Optional[list[str]]:
        return [str(label) for label in self.options.labels] if self.options.labels else None

    def target_columns(self) -> list[str]:
        return [self.options.tags_column]

    def sequence_length(self) -> Optional[int]:
        return self.options.max_length

    def required_columns(self) -> list[str]:
        return [self.options.tokens_column, self.options.tags_column]

    def setup(self, train) -> None:
        from adaptkit import DataError

        if self.labels:
            return
        seen: set[str] = set()
        for value in train[self.options.tags_column]:
            seen.update(_as_list(value))
        if len(seen) < 2:
            raise DataError(f"column {self.options.tags_column!r} has {len(seen)} distinct tag(s); "
                            f"token classification needs at least two")
        self.labels = (["O"] if "O" in seen else []) + sorted(seen - {"O"})

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    def preprocess(self, dataset, tokenizer):
        """Sub-tokens, and labels on each word's first sub-token.

        Rows without tags (prediction) get label 0 on first sub-tokens, so ``predict_batch``
        still knows where each word starts.
        """
        from adaptkit import DataError

        if not getattr(tokenizer, "is_fast", False):
            raise DataError("token classification needs a fast tokenizer (it maps sub-tokens back to words)")
        opts = self.options
        index = {label: i for i, label in enumerate(self.labels)}
        has_tags = opts.tags_column in dataset.column_names

        def encode(batch, indices):
            words = [_as_list(value) for value in batch[opts.tokens_column]]
            encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=opts.max_length)
            all_labels = []
            for position, row in enumerate(indices):
                tags = _as_list(batch[opts.tags_column][position]) if has_tags else None
                if tags is not None and len(tags) != len(words[position]):
                    raise DataError(f"row {row + 1}: {len(words[position])} words but {len(tags)} tags")
                labels, previous = [], None
                for word in encoded.word_ids(position):
                    if word is None or word == previous:
                        labels.append(IGNORE)
                    elif tags is None:
                        labels.append(0)
                    else:
                        if tags[word] not in index:
                            raise DataError(f"row {row + 1}: tag {tags[word]!r} is not in the tag set {self.labels}")
                        labels.append(index[tags[word]])
                    previous = word
                all_labels.append(labels)
            encoded["labels"] = all_labels
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           desc="tokenizing")

    def collate(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        padder = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

        def collate(rows):
            return padder([{k: v for k, v in row.items() if k != "length"} for row in rows])

        return collate

    # ------------------------------------------------------------------ model
    def configure_model(self, config: Any) -> None:
        write_label_maps(config, self.labels)

    # ------------------------------------------------------------------ metrics
    def batch_outputs(self, outputs, batch):
        """Predicted tag ids, not logits: evaluation keeps [rows, tokens] instead of x tags.

        Also each row's summed token loss and its labelled-token count, so the eval loss is the
        mean over every labelled token of every process, whatever the batch split.
        """
        import torch

        logits = outputs.logits.float()
        labels = batch["labels"]
        token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                       reduction="none")
        return {"predictions": logits.argmax(dim=-1), "labels": labels,
                "loss_sum": token_loss.sum(dim=1), "tokens": (labels != IGNORE).sum(dim=1)}

    def _tag_rows(self, predictions, labels) -> tuple[list[list[str]], list[list[str]]]:
        actual, predicted = [], []
        for guess_row, gold_row in zip(predictions.tolist(), labels.tolist()):
            kept = [(g, a) for g, a in zip(guess_row, gold_row) if a != IGNORE]
            predicted.append([self.labels[g] if 0 <= g < len(self.labels) else "O" for g, _ in kept])
            actual.append([self.labels[a] for _, a in kept])
        return actual, predicted

    def compute_metrics(self, predictions, labels, loss_sum=None, tokens=None) -> dict[str, float]:
        actual, predicted = self._tag_rows(predictions, labels)
        exact_loss = ({"loss": float(loss_sum.double().sum() / tokens.sum())}
                      if loss_sum is not None and int(tokens.sum()) else {})
        words = sum(len(row) for row in actual)
        correct = sum(a == p for gold, guess in zip(actual, predicted) for a, p in zip(gold, guess))
        return {**span_scores(actual, predicted), "accuracy": correct / words if words else 0.0, **exact_loss}

    def predict_batch(self, model, batch) -> list[list[str]]:
        """One tag per word (words cut off by max_length get none)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        predictions = model(**inputs).logits.argmax(dim=-1)
        return self._tag_rows(predictions, batch["labels"])[1]

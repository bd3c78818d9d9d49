"""Sequence classification: one label (or several) per text or text pair."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, PositiveInt

from adaptkit import LabelRules, Task, TaskOptions, apply_pooling, declared_pooling, write_label_maps
from adaptkit_tasks.metrics import macro_f1


class SequenceClassificationOptions(TaskOptions):
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: Optional[str] = Field(None, description="Second text of a pair (NLI, paraphrase).")
    label_column: str = Field("label", description="Column holding the label (or labels, multi-label).")
    labels: Optional[list[Union[str, int]]] = Field(
        None, description="The label set, in order; inferred (sorted) from the training data when absent.")
    multi_label: bool = Field(False, description="Each row has several labels, separated by label_separator.")
    label_separator: str = ","
    max_length: PositiveInt = Field(128, description="Tokens kept per example; longer texts are truncated.")
    pooling: Literal["auto", "cls", "mean", "last", "pooler"] = Field(
        "auto", description="The vector the head reads: mean (of the last hidden states over real tokens), cls "
                            "(the first token's state), last (the last real token's), pooler (the architecture's "
                            "own head: BERT's pooler, RoBERTa's head, a decoder's last token). auto: the pooling "
                            "the checkpoint declares (sentence-transformers' 1_Pooling/config.json: "
                            "all-MiniLM-L6-v2 is mean), else pooler. A plain from_pretrained of the export reads "
                            "pooler; the model card says how to apply the rest.")


class SequenceClassification(Task):
    """Classify each text (or text pair) into one of the labels, or several for multi-label."""

    name = "sequence_classification"
    model_class = "AutoModelForSequenceClassification"
    head_names = ("classifier", "score", "classification_head", "logits_proj")
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
        # the resolved pooling (never "auto") and why; set by the first build_model that can resolve it,
        # or by load_state (a run saved before pooling existed read the architecture's head)
        self.pooling: Optional[str] = None
        self.pooling_reason: str = ""
        self.head_reads_pooler = False  # the backbone has a pooler whose output the head reads (BERT)
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
        return {"labels": self.labels, "pooling": self.pooling or "pooler",
                "pooling_reason": self.pooling_reason or "the architecture's own head"}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.pooling = state.get("pooling", "pooler")  # older runs: the architecture's head
        self.pooling_reason = state.get("pooling_reason", "recorded with the run")

    def encode_texts(self, batch: dict[str, list[Any]], tokenizer: Any) -> Any:
        """A batch's text (and text pair) tokenized and truncated, with each row's token count in
        ``length`` (for length-grouped batches); regression encodes its rows the same way."""
        opts = self.options
        texts = [("" if t is None else str(t)) for t in batch[opts.text_column]]
        pairs = None
        if opts.text_pair_column:
            pairs = [("" if t is None else str(t)) for t in batch[opts.text_pair_column]]
        encoded = tokenizer(texts, pairs, truncation=True, max_length=opts.max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    def preprocess(self, dataset, tokenizer):
        from adaptkit import DataError

        opts = self.options
        index = {label: i for i, label in enumerate(self.labels)}
        has_labels = opts.label_column in dataset.column_names

        def encode(batch, indices):
            encoded = self.encode_texts(batch, tokenizer)
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
    def configure_model(self, config: Any) -> None:
        write_label_maps(config, self.labels, "multi_label_classification" if self.options.multi_label
                         else "single_label_classification")

    def finish_model(self, model, source: str, load_kwargs: dict[str, Any]):
        """The pooling the recipe or checkpoint asks for, installed over the architecture's head."""
        self._resolve_pooling(source, load_kwargs)
        backbone = getattr(model, "base_model", None)
        self.head_reads_pooler = backbone is not model and getattr(backbone, "pooler", None) is not None
        return apply_pooling(model, self.pooling or "pooler")

    # ------------------------------------------------------------------ pooling
    def _resolve_pooling(self, source: str, kwargs: dict[str, Any]) -> None:
        """Fix ``self.pooling`` once: the recipe's choice, else what the checkpoint declares, else the
        architecture's head. A build without a checkpoint folder (a weightless meta copy, a model
        from ``model.config``) resolves ``auto`` only for itself, so a later build from the
        checkpoint still reads its declaration."""
        if self.pooling is not None:
            return
        choice = self.options.pooling
        if choice != "auto":
            self.pooling, self.pooling_reason = choice, "task.pooling in the recipe"
            return
        declared, reason = declared_pooling(source, kwargs.get("revision"), bool(kwargs.get("local_files_only", True)))
        if declared is not None:
            self.pooling, self.pooling_reason = declared, f"task.pooling auto: {reason}"
        elif source:
            self.pooling, self.pooling_reason = "pooler", f"task.pooling auto: {reason}; the architecture's own head"

    def prepare_loaded(self, model):
        return apply_pooling(model, self.pooling or "pooler")

    def reload_step(self) -> Optional[str]:
        if (self.pooling or "pooler") == "pooler":
            return None
        return f"adaptkit.apply_pooling(model, {self.pooling!r})"

    def describe_features(self) -> Optional[str]:
        pooling = self.pooling or "pooler"
        what = {"mean": "mean of the last hidden states over real tokens", "cls": "first token's last hidden state",
                "last": "last real token's last hidden state",
                "pooler": "what the architecture's own head reads (BERT: its pooler output)"}[pooling]
        return f"the head's input: {what} (pooling {pooling}: {self.pooling_reason or 'the architecture default'})"

    def card_notes(self) -> list[str]:
        pooling = self.pooling or "pooler"
        if pooling == "pooler":
            return ["The head reads what the architecture's own head reads (`task.pooling` resolved to `pooler`: "
                    f"{self.pooling_reason or 'the architecture default'}); a plain `from_pretrained` reproduces it."]
        words = {"mean": "the mean of the last hidden states over the real tokens (padding ignored)",
                 "cls": "the first token's last hidden state", "last": "the last real token's last hidden state"}
        lines = [
            "## How the head pools",
            "",
            f"The classifier reads **{words[pooling]}** (`task.pooling: {self.options.pooling}` resolved to "
            f"`{pooling}`: {self.pooling_reason}), not the vector the architecture's own head reads. transformers "
            "cannot express this in the architecture's class and adaptkit keeps that class (no remote code), so "
            "**a plain `from_pretrained` of this folder predicts differently**. Apply the pooling after loading:",
            "",
            "```python",
            "import adaptkit",
            f"adaptkit.apply_pooling(model, {pooling!r})  # hooks only: no weight or module changes",
            "```",
            "",
        ]
        if self.head_reads_pooler:
            pool = {"mean": ["mask = inputs['attention_mask'].unsqueeze(-1).to(hidden.dtype)",
                             "pooled = (hidden * mask).sum(1) / mask.sum(1)"],
                    "cls": ["pooled = hidden[:, 0]"],
                    "last": ["last = (torch.arange(hidden.shape[1]) * inputs['attention_mask']).argmax(-1)",
                             "pooled = hidden[torch.arange(hidden.shape[0]), last]"]}[pooling]
            lines += ["or, with transformers alone (`model.eval()` first):", "", "```python",
                      "import torch", "with torch.no_grad():",
                      "    hidden = model.base_model(**inputs).last_hidden_state",
                      *[f"    {line}" for line in pool],
                      "    logits = model.classifier(pooled)", "```", ""]
        lines.append("`adaptkit predict` and `adaptkit.load` apply it from the run's recorded pooling "
                     "(`task_state.pooling` in metrics.json).")
        return lines

    def head_features(self, model, batch):
        """The head module's input, captured in one forward pass: with a pooling installed every
        position holds the pooled vector; with the architecture's head, the position it reads."""
        import torch

        from adaptkit import pool_hidden

        inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        heads = [h for h in self.head_modules(inner) if h]
        if len(heads) != 1:
            return None
        head = inner.get_submodule(heads[0])
        seen: dict[str, Any] = {}

        def before(module, args):
            seen.setdefault("input", args[0])

        def after(module, args, output):
            seen.setdefault("output", output)

        hooks = [head.register_forward_pre_hook(before), head.register_forward_hook(after)]
        try:
            with torch.no_grad():
                model(**batch)
        finally:
            for hook in hooks:
                hook.remove()
        x, y = seen.get("input"), seen.get("output")
        if not isinstance(x, torch.Tensor):
            return None
        if x.ndim == 2:
            return x
        if x.ndim != 3:
            return None
        if (self.pooling or "pooler") != "pooler":
            return x[:, 0]  # every position holds the pooled vector
        if isinstance(y, torch.Tensor) and y.ndim == 3:  # a decoder's score: it reads the last real token
            return pool_hidden(x, batch.get("attention_mask"), "last")
        return x[:, 0]  # a head that reads the first token (RoBERTa's)

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

"""Text-to-text (seq2seq): an encoder-decoder (T5, mT5, BART) learns to write a target text from a
source text: summarisation, translation, rewriting.

Each row is a source (``prefix`` + the source column, as T5's "summarize: ") and a target. The
target's token ids are the labels, padded with -100 so padding is never learnt; the model builds
its decoder inputs from them (shifted right after ``decoder_start_token_id``).

Evaluation reports the token loss of every eval batch and, since a low loss need not mean good
text, generates each eval row's text with the recipe's settings (greedy, beams or sampling) and
scores it against the target with BLEU, chrF, ROUGE-L (and CIDEr-D on request:
``adaptkit_tasks.generation_metrics``). Generation happens in ``compute_loss`` when the model is
in eval mode, the one hook of evaluation that holds the model; ``batch_outputs`` keeps the
generated ids, and ``compute_metrics`` decodes and scores them. ``predict`` generates the same way.

A seq2seq language model has no task head: its ``lm_head`` follows the vocabulary, not the task,
so ``frozen_head`` is refused (``preflight``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import Field, PositiveInt, field_validator, model_validator

from adaptkit import DataError, RecipeError, Task, TaskOptions
from adaptkit_tasks.padding import IGNORE, padded_ids, right_padded
from adaptkit_tasks.special_tokens import end_token

# Below it, logits / temperature overflow float32 and sampling fails (as in ``instruct``).
MIN_TEMPERATURE = 1e-3
TEXT_METRICS = ("rougeL", "chrf", "bleu", "cider")
TextMetric = Literal["rougeL", "chrf", "bleu", "cider"]


class Seq2SeqOptions(TaskOptions):
    source_column: str = Field("source", description="Column of the input text.")
    target_column: str = Field("target", description="Column of the text to learn to write.")
    prefix: str = Field("", description="Put before every source, as T5 was trained ('summarize: ', "
                                        "'translate English to German: ').")
    max_source_length: PositiveInt = Field(256, description="Source tokens kept per row; the rest is cut.")
    max_target_length: PositiveInt = Field(64, description="Target tokens learnt per row; the rest is cut.")
    max_new_tokens: Optional[PositiveInt] = Field(
        None, description="Tokens generated per row at most (evaluation and predict); default max_target_length.")
    num_beams: PositiveInt = Field(1, description="Beam search width; 1 decodes greedily (or samples).")
    do_sample: bool = Field(False, description="Sample instead of taking the most likely tokens.")
    temperature: float = Field(1.0, ge=MIN_TEMPERATURE, description="With do_sample: softmax temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="With do_sample: nucleus sampling share.")
    seed: int = Field(0, description="With do_sample: the sampling seed, so evaluation and predict repeat.")
    metrics: list[TextMetric] = Field(
        default_factory=lambda: ["rougeL", "chrf", "bleu"],
        description="Scores of the generated text at evaluation: rougeL, chrf, bleu, cider (all in [0, 1] "
                    "but cider, on the COCO scale).")
    metric: str = Field("rougeL", description="The metric that decides the best epoch and the judge's verdicts: "
                                              "one of metrics, or token_loss.")

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"metrics lists a name twice: {value}")
        return value

    @model_validator(mode="after")
    def _metric_is_reported(self) -> "Seq2SeqOptions":
        if self.metric != "token_loss" and self.metric not in self.metrics:
            raise ValueError(f"metric {self.metric!r} is not computed: choose token_loss or one of metrics "
                             f"{self.metrics}")
        if self.source_column == self.target_column:
            raise ValueError(f"source_column and target_column are both {self.source_column!r}")
        return self


@dataclass
class GeneratedOutputs:
    """What ``compute_loss`` returns at evaluation: the forward pass's loss and logits, and the
    ids ``generate`` wrote for each row (rows x tokens)."""

    loss: Any
    logits: Any
    generated: Any


class Seq2Seq(Task):
    """Fine-tune an encoder-decoder to write target texts from source texts."""

    name = "seq2seq"
    description = "Text-to-text (T5, BART, mT5): source -> target, generated and scored with ROUGE-L/chrF/BLEU."
    Options = Seq2SeqOptions
    model_class = "AutoModelForSeq2SeqLM"
    # No head_names: lm_head's shape follows the vocabulary, not the task, and is tied to the
    # embeddings in T5 and BART; declaring it a head would make peft copy (and untie) it.
    peft_task_type = "SEQ_2_SEQ_LM"
    pipeline_tag = "text2text-generation"
    # The conformance kit builds this task's model from an encoder-decoder family only.
    families = ("t5",)

    def __init__(self, options: Any = None):
        super().__init__(options)
        opts = self.options
        self.metric_names = ("token_loss", *opts.metrics)
        self.primary_metric = opts.metric
        self.greater_is_better = opts.metric != "token_loss"
        self._tokenizer: Any = None
        self._decoded: dict[tuple, str] = {}

    # ------------------------------------------------------------------ data
    def required_columns(self) -> list[str]:
        return [self.options.source_column, self.options.target_column]

    def target_columns(self) -> list[str]:
        return [self.options.target_column]

    def text_columns(self) -> list[str]:
        return [self.options.source_column]

    def sequence_length(self) -> Optional[int]:
        return self.options.max_source_length

    def new_tokens(self) -> int:
        return self.options.max_new_tokens or self.options.max_target_length

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        """A source or target cell that is empty: the row teaches nothing (or asks nothing)."""
        for column in (self.options.source_column, self.options.target_column):
            if column in row and (row[column] is None or not str(row[column]).strip()):
                return f"column {column!r} is empty"
        return None

    def setup(self, train) -> None:
        if self.options.target_column not in train.column_names:
            raise DataError(f"the training data lacks the target column {self.options.target_column!r} "
                            f"(columns: {', '.join(train.column_names)}); set task.target_column")

    def preflight(self, recipe: Any, source: Any) -> list[str]:
        """``frozen_head`` trains a task head, and a seq2seq LM has none: refused before any work."""
        if getattr(recipe.strategy, "name", None) == "frozen_head":
            raise RecipeError("strategy.name: frozen_head trains only a task head, and a seq2seq model has none "
                              "(its lm_head maps to the vocabulary and is tied to the embeddings); choose lora, "
                              "ia3, adapters, partial_freeze, prompt_tuning or full")
        return []

    def encode_row(self, tokenizer: Any, source: Any, target: Any) -> dict[str, list[int]]:
        """Source ids (with the tokenizer's own special tokens), and the target's ids as labels,
        ending with the end token (eos / [SEP]) so the model learns where to stop. ``length`` (source
        tokens) lets training group rows by length and ``advise`` scale one timed step to an epoch."""
        opts = self.options
        ids = tokenizer(opts.prefix + str(source), truncation=True, max_length=opts.max_source_length)["input_ids"]
        if target is None:
            return {"input_ids": ids, "labels": [], "length": len(ids)}
        labels = tokenizer(text_target=str(target), truncation=True, max_length=opts.max_target_length)["input_ids"]
        end = end_token(tokenizer)
        if end is not None and (not labels or labels[-1] != end):
            labels = labels[:opts.max_target_length - 1] + [end]
        return {"input_ids": ids, "labels": labels, "length": len(ids)}

    def preprocess(self, dataset, tokenizer):
        opts = self.options
        has_target = opts.target_column in dataset.column_names
        return dataset.map(
            lambda row: self.encode_row(tokenizer, row[opts.source_column],
                                        row[opts.target_column] if has_target else None),
            remove_columns=dataset.column_names, desc="tokenizing")

    def collate(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def collate(rows):
            batch = padded_ids(rows, pad)
            if any(row["labels"] for row in rows):
                batch["labels"] = right_padded([row["labels"] for row in rows], IGNORE)
            return batch

        return collate

    # ------------------------------------------------------------------ model
    def load_processor(self, recipe, source):
        """The tokenizer, remembered to decode what the model generates."""
        self._tokenizer = super().load_processor(recipe, source)
        return self._tokenizer

    def configure_model(self, config: Any) -> None:
        """Refuse a config whose special ids disagree with the tokenizer: a decoder that starts from
        nothing, or an eos the labels never end with, trains without error and never stops writing."""
        if getattr(config, "decoder_start_token_id", None) is None:
            raise RecipeError(f"model config: a {getattr(config, 'model_type', 'seq2seq')} model needs "
                              f"decoder_start_token_id (T5: the pad id; BART: the eos id); set model.config."
                              f"decoder_start_token_id")
        tokenizer = self._tokenizer
        end = end_token(tokenizer) if tokenizer is not None else None
        eos = getattr(config, "eos_token_id", None)
        if end is not None and eos is not None and end not in (eos if isinstance(eos, list) else [eos]):
            name = tokenizer.convert_ids_to_tokens(end)
            raise RecipeError(f"model config: eos_token_id is {eos} but the tokenizer ends texts with {name!r} "
                              f"(id {end}), so generation would never stop where the targets end; set "
                              f"model.config.eos_token_id: {end}")

    def finish_model(self, model, source, load_kwargs):
        """Write the recipe's generation settings into the model's generation config, so the export's
        ``generate(**inputs)`` with no arguments writes what ``adaptkit predict`` writes."""
        settings = self._generation_settings()
        for key, value in settings.items():
            setattr(model.generation_config, key, value)
        return model

    def card_notes(self) -> list[str]:
        settings = ", ".join(f"{k}={v}" for k, v in self._generation_settings().items() if v is not None)
        return [f"Generation settings ({settings}) are saved in `generation_config.json`: "
                f"`model.generate(**tokenizer(texts, return_tensors='pt', padding=True))` reproduces "
                f"`adaptkit predict`" + (f"; prefix each source with {self.options.prefix!r}."
                                         if self.options.prefix else ".")]

    def _generation_settings(self) -> dict[str, Any]:
        opts = self.options
        sampling = {"temperature": opts.temperature, "top_p": opts.top_p} if opts.do_sample else \
            {"temperature": None, "top_p": None, "top_k": None}
        return {"max_new_tokens": self.new_tokens(), "num_beams": opts.num_beams, "do_sample": opts.do_sample,
                **sampling}

    def generate(self, model: Any, batch: dict[str, Any]) -> Any:
        """Generated ids (rows x tokens, decoder start first) of a batch's sources, with the recipe's
        settings; sampling is seeded (``task.seed``) without disturbing the training RNG."""
        import torch

        from adaptkit_tasks.captions import generator

        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        device = batch["input_ids"].device
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.options.seed)
            return generator(model).generate(**inputs, **self._generation_settings())

    def compute_loss(self, model, batch):
        """The forward pass's loss; at evaluation (the model in eval mode, labelled rows), the
        generated ids too, which ``batch_outputs`` keeps (none when ``metrics`` is empty)."""
        outputs = model(**batch)
        if model.training or "labels" not in batch or not self.options.metrics:
            return outputs.loss, outputs
        return outputs.loss, GeneratedOutputs(outputs.loss, outputs.logits, self.generate(model, batch))

    # ------------------------------------------------------------------ metrics
    def batch_outputs(self, outputs, batch):
        """Per row: the summed token loss and token count (not [rows, tokens, vocabulary] logits),
        the generated ids and the labels they are scored against."""
        import torch

        generated = getattr(outputs, "generated", None)
        if generated is None and self.options.metrics:
            raise DataError("seq2seq evaluation scores generated text: its outputs come from "
                            "task.compute_loss(model, batch) with the model in eval mode, not model(**batch)")
        labels = batch["labels"]
        logits = outputs.logits[:, -labels.shape[1]:, :].float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                   reduction="none")
        kept = {"loss_sum": losses.sum(dim=1), "tokens": (labels != IGNORE).sum(dim=1)}
        return kept if generated is None else {**kept, "generated": generated, "labels": labels}

    def decode(self, ids: Any) -> list[str]:
        """Texts of rows of ids (-100 and special tokens dropped), each row decoded once per task."""
        texts = []
        for row in ids.tolist():
            key = tuple(t for t in row if t >= 0)
            text = self._decoded.get(key)
            if text is None:
                text = self._tokenizer.decode(list(key), skip_special_tokens=True).strip()
                if len(self._decoded) < 200_000:
                    self._decoded[key] = text
            texts.append(text)
        return texts

    def compute_metrics(self, loss_sum, tokens, generated=None, labels=None) -> dict[str, float]:
        from adaptkit_tasks.generation_metrics import text_scores

        count = int(tokens.sum())
        if not count:
            raise DataError("the evaluation data has no target token to score (every eval row's target is empty)")
        scores = {} if generated is None else \
            text_scores(self.decode(generated), [[r] for r in self.decode(labels)], self.options.metrics)
        return {"token_loss": float(loss_sum.double().sum()) / count, **scores}

    # ------------------------------------------------------------------ predict
    def predict_batch(self, model, batch) -> list[str]:
        """Each row's generated text, decoded without special tokens."""
        return self.decode(self.generate(model, batch))

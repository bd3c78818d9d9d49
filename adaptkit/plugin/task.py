"""The base class every task type subclasses (sequence classification, causal LM, ...).

A task knows how to load a model with the right head, turn raw rows into model inputs,
batch them, and score predictions. Like strategies, tasks arrive through plugins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

from adaptkit.plugin.sources import load_tokenizer

if TYPE_CHECKING:
    import datasets
    import torch


# Models whose position ids start after the padding index (fairseq's convention), so that
# ``max_position_embeddings - pad_token_id - 1`` tokens fit, not ``max_position_embeddings``.
_PADDING_OFFSET_MODELS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text",
                          "roberta-prelayernorm", "ibert", "mpnet", "esm", "bart", "mbart", "xmod"}


def position_limit(config: Any) -> int | None:
    """The most tokens a model's position table holds, from its config (an object or config.json's dict).

    None where positions are not a fixed table (rotary or relative positions, an image model):
    there a longer input does not index past an embedding. Past a learned or sinusoidal table,
    the forward pass fails mid-run with a tensor-size error instead.
    """
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("rope_theta") is not None or get("rope_scaling") is not None:
        return None
    for key in ("n_positions", "max_position_embeddings"):
        value = get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if get("model_type") in _PADDING_OFFSET_MODELS:
                pad = get("pad_token_id")
                value -= (pad if isinstance(pad, int) else 1) + 1
            return value
    return None


@dataclass(frozen=True)
class LabelRules:
    """What a classification task says about its label column, for checks that read every row
    (``adaptkit validate``, data loading) without knowing the task: the column, the allowed labels
    (None: learnt from the data, then at least two classes are needed), and whether a row holds
    several labels joined by ``separator``."""

    column: str
    labels: Optional[tuple[str, ...]] = None
    multi: bool = False
    separator: str = ","


def write_label_maps(config: Any, labels: list[str], problem_type: Optional[str] = None) -> None:
    """Give ``config`` a classifier's label count and maps (and its ``problem_type`` when given), so the
    head is built to size and the export names its classes."""
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    if problem_type is not None:
        config.problem_type = problem_type


class TaskOptions(BaseModel):
    """Base for a task's recipe section; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Task:
    """Subclass me, set ``name`` and ``Options``, and implement the methods below."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    peft_task_type: ClassVar[str | None] = None
    # The metric that decides "better" by default, and whether higher is better.
    primary_metric: ClassVar[str] = "loss"
    greater_is_better: ClassVar[bool] = False
    # Every metric ``compute_metrics`` reports (the loop adds "loss"), so ``adaptkit validate`` can
    # refuse a misspelt ``training.metric_for_best`` instead of the run stopping after an epoch.
    # Empty: not declared, checked only at the first evaluation. A task whose metrics depend on its
    # options sets ``self.metric_names`` in ``__init__``.
    metric_names: ClassVar[tuple[str, ...]] = ()
    # Whether the inputs are text: a model built from ``model.config`` then needs ``model.tokenizer``.
    needs_tokenizer: ClassVar[bool] = True
    # The Hugging Face pipeline tag of what the task trains ("text-classification"): the model card's
    # ``pipeline_tag`` and eval task type. None: the card leaves it out.
    pipeline_tag: ClassVar[str | None] = None
    # The task a recipe without a ``task`` section means; at most one installed task declares it.
    is_default: ClassVar[bool] = False
    # The transformers class (its name: transformers is imported only when a model is built) that
    # ``build_model`` uses, e.g. "AutoModelForSequenceClassification".
    model_class: ClassVar[str] = ""
    # Last names of the modules whose shape follows the task ("classifier", "score"); ``head_modules``
    # finds them. Empty: no head (a language model's lm_head follows the vocabulary, not the task).
    head_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: TaskOptions | dict[str, Any] | None = None):
        if options is None:
            options = self.Options()
        elif isinstance(options, dict):
            options = self.Options.model_validate(options)
        self.options = options

    def required_columns(self) -> list[str]:
        """Columns the data files must have; checked before anything is tokenized."""
        return []

    # What the core asks of a task instead of reading its options by name (a task's options are its own).

    def label_column(self) -> Optional[str]:
        """The column holding one class per row, if the task has one: splits are stratified on it."""
        return None

    def declared_labels(self) -> Optional[list[str]]:
        """The label set the recipe gives (``task.labels``), as text; None when it is learnt from the data."""
        return None

    def label_rules(self) -> Optional[LabelRules]:
        """How every row's label is checked before training; None: the task checks its targets itself."""
        column = self.label_column()
        if column is None:
            return None
        labels = self.declared_labels()
        return LabelRules(column, tuple(labels) if labels is not None else None)

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        """Why one data row (its column -> value, as read from a CSV/TSV/JSONL file) cannot be
        used, or None. ``adaptkit validate`` and the start of a run call it on every row of those
        files, so a row the task would refuse mid-run (an unknown chat role) is reported with its
        file and line before any model is built. Default: every row is fine."""
        return None

    def target_columns(self) -> list[str]:
        """Columns the task learns to predict, which new rows given to ``predict`` lack."""
        column = self.label_column()
        return [column] if column else []

    def text_columns(self) -> list[str]:
        """Columns of input text, for ``advise``'s duplicate and train/eval overlap counts."""
        return []

    def sequence_length(self) -> Optional[int]:
        """Tokens kept per row, if the task truncates: the plan's memory estimate and ``advise`` use it,
        and a run refuses one longer than the model's position table."""
        return None

    def setup(self, train: "datasets.Dataset") -> None:
        """Learn what the data implies (e.g. the label set) before the model is built."""

    def preflight(self, recipe: Any, source: Any) -> list[str]:
        """Refuse at ``adaptkit plan`` what would stop a run later (raise an ``AdaptkitError``), and
        return notes the plan shows (e.g. a causal LM's packing that cannot isolate examples)."""
        return []

    # ------------------------------------------------------------------ the model
    # A task states what differs (``model_class``, ``configure_model``, ``load_arguments``,
    # ``finish_model``, ``head_names``); ``build_model`` and ``head_modules`` are shared. A task whose
    # model is not one transformers class may still override ``build_model`` whole.

    def configure_model(self, config: Any) -> None:
        """Write what the task decides into the model config before it is built (a classifier's label
        maps: ``write_label_maps``). Called on every build, from a checkpoint or from the config."""

    def load_arguments(self) -> dict[str, Any]:
        """More ``from_pretrained`` arguments this task needs (an image classifier: a fresh head where
        the checkpoint's label count differs, ``ignore_mismatched_sizes``)."""
        return {}

    def finish_model(self, model: "torch.nn.Module", source: str, load_kwargs: dict[str, Any]) -> "torch.nn.Module":
        """Change the built model where the class alone does not (a pooling other than the head's);
        ``source`` is the checkpoint ('' when built from a config), ``load_kwargs`` what it was loaded with."""
        return model

    def build_model(self, source: str, config: Any, from_config: bool, **kwargs: Any) -> "torch.nn.Module":
        """The task model, from the checkpoint ``source`` or freshly initialised from ``config``:
        ``configure_model``, then ``model_class`` built, then ``finish_model``. A build from a config takes
        only ``trust_remote_code`` of ``kwargs``: the rest are loading arguments."""
        import transformers

        if not self.model_class:
            raise NotImplementedError(f"task {self.name!r} names no model_class and does not override build_model")
        model_class = getattr(transformers, self.model_class)
        self.configure_model(config)
        if from_config:
            model = model_class.from_config(config, trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
        else:
            model = model_class.from_pretrained(source, config=config, **{**self.load_arguments(), **kwargs})
        return self.finish_model(model, source, kwargs)

    def head_modules(self, model: "torch.nn.Module") -> list[str]:
        """Qualified module names of the task head (their shape follows the task): the modules named
        one of ``head_names`` at the top level or one below it (``classifier``, ``roberta.pooler`` is not)."""
        if not self.head_names:
            return []
        return [name for name, _ in model.named_modules()
                if name.split(".")[-1] in self.head_names and name.count(".") <= 1]

    def prepare_loaded(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """Re-apply to a model loaded from an export what ``build_model`` installs and
        ``save_pretrained`` does not keep (sequence classification: a pooling other than the
        architecture's head, ``adaptkit.apply_pooling``). The export check and ``adaptkit predict``
        call it on what they load; it must be idempotent. Default: the model unchanged."""
        return model

    def reload_step(self) -> Optional[str]:
        """The one step ``prepare_loaded`` adds after a plain ``from_pretrained``, as code a user can
        run (``adaptkit.apply_pooling(model, 'mean')``); None when it adds nothing. The contract's
        export line and the model card name it."""
        return None

    def card_notes(self) -> list[str]:
        """Markdown lines for the model card about how the exported model computes its output
        (how the head pools, and what a plain ``from_pretrained`` then reads); recorded in
        ``metrics.json`` as ``task_notes``."""
        return []

    def head_features(self, model: "torch.nn.Module", batch: dict[str, "torch.Tensor"]) -> Optional["torch.Tensor"]:
        """One feature vector per row of ``batch`` (no labels in it): what the task's head reads from
        the backbone, for ``advise``'s probe, so the probe judges the features the head trains on.
        None: ``advise`` mean-pools the last hidden state over the attention mask."""
        return None

    def describe_features(self) -> Optional[str]:
        """What ``head_features`` returns, in words, for the advise report; None with the default."""
        return None

    def load_processor(self, recipe: Any, source: Any) -> Any:
        """What turns raw rows into model inputs, handed to ``preprocess`` and ``collate``.

        A tokenizer by default; a vision task returns an image processor instead. It is saved
        beside the run (``save_pretrained``) and reloaded from ``recipe.model.tokenizer`` by
        ``adaptkit predict``, so whatever is returned must round-trip through that folder.
        """
        return load_tokenizer(recipe, source)

    def preprocess(self, dataset: "datasets.Dataset", tokenizer: Any) -> "datasets.Dataset":
        raise NotImplementedError

    def collate(self, tokenizer: Any):
        raise NotImplementedError

    def compute_loss(self, model: "torch.nn.Module", batch: dict[str, "torch.Tensor"]) -> tuple["torch.Tensor", Any]:
        """The loss of one collated batch and the outputs ``batch_outputs`` reads, for training and
        evaluation alike (evaluation calls it under ``torch.no_grad``).

        The default is one forward pass and the model's own loss. A task whose loss is not the
        model's (a preference objective comparing the policy's and a reference's log-probs of two
        answers) runs its own forward passes here; ``model`` is what the loop holds (possibly
        wrapped by accelerate: ``getattr(model, "module", model)`` is the model itself). The loss
        may be None on unlabelled data; ``outputs`` may be any object ``batch_outputs`` reads.
        """
        outputs = model(**batch)
        return outputs.loss, outputs

    def training_metrics(self, outputs: Any, batch: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """Named scalars of one training batch, from what ``compute_loss`` returned, that the training
        log shows beside the loss (a preference task's reward accuracy and margin).

        Return 0-dim tensors left on the device, detached: the loop sums them there and reads them
        back to the host only at its log steps (every ``LOG_EVERY`` optimizer steps), as it does the
        loss, so no step waits on the device. It logs each one's mean over the batches of the
        interval as ``train/<name>`` to the trackers, in the ``loss_curve`` of ``metrics.json``, on
        the progress line, and per epoch as ``train_<name>`` in the history and summary table. A
        value that is NaN for a batch (a rate with nothing to count) is left out of that mean. The
        loop calls this only when a task overrides it: the default costs nothing.
        """
        return {}

    def training_state(self) -> dict[str, "torch.Tensor"]:
        """Tensors the task computed during training that a resumed run must read back rather than
        compute again (a preference task's reference log-probs, computed before the first step from
        the untrained model: recomputed after a resume they would come from the trained one).

        Saved from the main process in every checkpoint (``task-state.safetensors``, checked with the
        checkpoint's other files) and in the run's output folder; plain tensors only (safetensors:
        nothing is unpickled on load). Default: nothing, and no file is written.
        """
        return {}

    def load_training_state(self, state: dict[str, "torch.Tensor"]) -> None:
        """Take back what ``training_state`` returned, on ``--resume``, on every process, before the
        first step (``state`` is empty when the checkpoint holds none)."""

    def memory_estimate(self, model: "torch.nn.Module", parts: dict[str, int]) -> dict[str, int]:
        """The plan's peak training memory of ``model`` (wrapped by the strategy, possibly on the meta
        device), by part in bytes (weights, gradients, optimizer, step, activations, logits), as the
        core estimates it for one sequence per example; return it adjusted for what the task adds (a
        preference task runs two answers per example, and may keep a frozen reference copy: a part of
        its own). The plan sums the parts into ``total`` after. Default: unchanged."""
        return parts

    def batch_outputs(self, outputs: Any, batch: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """Per-example tensors that evaluation keeps from one batch (first dimension: the rows).

        The loop gathers them across processes and batches and calls ``compute_metrics`` with
        them as keywords. The default keeps logits and labels; a task whose logits are large
        (a language model's [rows, tokens, vocabulary]) reduces them here, batch by batch.
        """
        kept = {"logits": outputs.logits}
        if "labels" in batch:
            kept["labels"] = batch["labels"]
        return kept

    def compute_metrics(self, logits: "torch.Tensor", labels: "torch.Tensor") -> dict[str, float]:
        """Scores from the gathered ``batch_outputs`` (passed as keywords), on labelled data."""
        raise NotImplementedError

    def predict_batch(self, model: "torch.nn.Module", batch: dict[str, "torch.Tensor"]) -> list[Any]:
        """One prediction per row of a collated batch; ``labels`` may be present and are not inputs.

        The default runs the model once and hands the logits to ``predict_rows``; a task that
        generates, or needs what ``preprocess`` put in ``labels`` (word positions), overrides it.
        """
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.predict_rows(model(**inputs).logits.float())

    def predict_rows(self, logits: "torch.Tensor") -> list[Any]:
        """Turn model outputs into one prediction per input row (for ``adaptkit predict``)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What ``setup`` learned, saved with the run so ``predict`` reproduces it."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

"""The base class every task type subclasses (sequence classification, causal LM, ...).

A task knows how to load a model with the right head, turn raw rows into model inputs,
batch them, and score predictions. Like strategies, tasks arrive through plugins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import datasets
    import torch


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

    def __init__(self, options: TaskOptions | dict[str, Any] | None = None):
        if options is None:
            options = self.Options()
        elif isinstance(options, dict):
            options = self.Options.model_validate(options)
        self.options = options

    def required_columns(self) -> list[str]:
        """Columns the data files must have; checked before anything is tokenized."""
        return []

    def setup(self, train: "datasets.Dataset") -> None:
        """Learn what the data implies (e.g. the label set) before the model is built."""

    def build_model(self, source: str, config: Any, from_config: bool, **kwargs: Any) -> "torch.nn.Module":
        raise NotImplementedError

    def head_modules(self, model: "torch.nn.Module") -> list[str]:
        """Qualified module names of the task head (their shape follows the task)."""
        return []

    def preprocess(self, dataset: "datasets.Dataset", tokenizer: Any) -> "datasets.Dataset":
        raise NotImplementedError

    def collate(self, tokenizer: Any):
        raise NotImplementedError

    def compute_metrics(self, logits: "torch.Tensor", labels: "torch.Tensor") -> dict[str, float]:
        raise NotImplementedError

    def predict_rows(self, logits: "torch.Tensor") -> list[Any]:
        """Turn model outputs into one prediction per input row (for ``adaptkit predict``)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What ``setup`` learned, saved with the run so ``predict`` reproduces it."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

"""The base class of a baseline: a model trained on the user's rows *without* pretraining.

"Does transfer pay?" has two reference points. The same architecture from random weights
(``scratch``) answers whether pretraining helps at all (negative transfer, as the literature
defines it). A practitioner's real alternative is cheaper still: whatever they could ship
without any pretrained model — a bag-of-words linear model for text, a pixel-level linear model
for images, a third party's gradient boosting. A baseline plugin supplies such a model; ``compare``
trains it on exactly the rows each transfer arm gets and scores it on the same eval rows, so the
verdict against it is paired like every other; ``advise`` cross-validates it on the training rows.

A baseline is registered with the ``adaptkit_register_baselines`` hook, like strategies and tasks.
It never sees a pretrained weight: it gets the rows as the data files hold them, the same rows as
the task preprocessed them (an image task's resized pixels, say) and the targets the task learns.
Its scores come back in the layout of the task model's logits (rows x outputs), so the task's
own ``compute_metrics`` scores both alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

if TYPE_CHECKING:
    import datasets
    import torch

    from adaptkit.plugin.task import Task


@dataclass(frozen=True)
class BaselineRows:
    """The rows a baseline trains on or scores, aligned row for row.

    ``rows``: as the data files hold them (text columns, image paths). ``encoded``: the same rows
    after the task's ``preprocess`` (token ids, pixel values; None where nothing was encoded).
    ``targets``: what the task learns per row (a class index, a multi-hot list), None for rows to
    score only.
    """

    rows: "datasets.Dataset"
    encoded: "Optional[datasets.Dataset]" = None
    targets: Optional[list[Any]] = None


class Baseline:
    """Subclass me, set ``name``, ``label``, ``tasks``, and implement ``fit`` and ``scores``."""

    name: ClassVar[str] = ""
    # How a verdict names it in a sentence: "LoRA beats {label} by +0.08".
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # The task types (``task.type``) it can train on; ``serves`` may refuse more finely.
    tasks: ClassVar[tuple[str, ...]] = ()

    def serves(self, task: "Task") -> Optional[str]:
        """None when this baseline can train on ``task``; otherwise the reason, shown in reports."""
        if task.name not in self.tasks:
            return f"{self.name} serves {', '.join(self.tasks) or 'no task'}, not {task.name}"
        return None

    def fit(self, task: "Task", data: BaselineRows, metric: str, seed: int) -> None:
        """Train on ``data`` (its ``targets`` are set), choosing any hyper-parameter by cross-validation
        on these rows alone, by ``metric`` (the task's metric name the verdict uses, e.g. ``macro_f1``)."""
        raise NotImplementedError

    def scores(self, task: "Task", data: BaselineRows) -> "torch.Tensor":
        """Per-row scores in the layout of the task model's logits: [rows, outputs], float.

        For single-label classification, log-probabilities per class serve (argmax and cross-entropy
        read them as logits); for multi-label, per-label log-odds.
        """
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """What ``fit`` chose (regularisation, feature counts, folds), for the report."""
        return {}

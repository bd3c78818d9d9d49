"""Train the installed baselines (models without pretraining) on the rows an arm gets, for the judge.

``compare`` and ``advise`` both ask the same two things of a baseline plugin: which installed
ones serve this task, and what one scores when trained on some rows and asked about others. Both
live here, so the two commands cannot drift apart; the measuring (wall time, CPU time, energy)
is the same ``EnergyMeter`` every transfer arm is measured with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from adaptkit.errors import AdaptkitError
from adaptkit.plugin.baseline import BaselineRows


@dataclass
class BaselineResult:
    """One baseline trained once: its eval outputs (the task's ``batch_outputs`` layout) and its cost."""

    name: str
    outputs: dict[str, Any] = field(repr=False)
    summary: dict[str, Any]
    seconds: float
    cpu_seconds: float
    energy_wh: float


def installed_for(task: Any, names: Optional[list[str]] = None) -> tuple[dict[str, type], list[str]]:
    """(baselines that serve ``task`` by name, notes on those that do not).

    ``names`` None: every installed baseline that serves the task. A name that is not installed is
    an error naming the installed ones; a named baseline that cannot serve the task is refused
    with its own reason.
    """
    from adaptkit.plugin.registry import get_registry

    installed = dict(get_registry().baselines)
    notes: list[str] = []
    if names is not None:
        unknown = [n for n in names if n not in installed]
        if unknown:
            raise AdaptkitError(f"unknown baseline {unknown[0]!r} (installed: {', '.join(sorted(installed)) or 'none'})")
        chosen = {n: installed[n] for n in names}
    else:
        chosen = installed
    serving = {}
    for name, cls in sorted(chosen.items()):
        reason = cls().serves(task)
        if reason is None:
            serving[name] = cls
        elif names is not None:
            raise AdaptkitError(f"baseline {name!r} cannot train on this task: {reason}")
    if not serving:
        notes.append(f"no baseline for task {task.name!r}: no installed baseline serves it (a baseline plugin "
                     f"registers one with adaptkit_register_baselines)")
    return serving, notes


def aligned(raw: Any, encoded: Any) -> bool:
    """Whether the task's preprocessing kept the rows one for one (a baseline needs the raw row of each)."""
    return raw is not None and encoded is not None and len(raw) == len(encoded)


def targets_of(encoded: Any) -> list[Any]:
    """What the task learns per row, from its preprocessed ``labels`` column."""
    return list(encoded["labels"])


def train_baseline(cls: type, task: Any, metric: str, seed: int, train: Any, evaluate: Any,
                   eval_labels: Any, power_watts: Optional[float] = None) -> BaselineResult:
    """Fit ``cls`` on ``train`` (``BaselineRows`` with targets), score ``evaluate``, measure the cost.

    The eval outputs carry the eval rows' ``labels`` beside the baseline's scores, exactly as a
    transfer arm's do, so the task's ``compute_metrics`` and the paired bootstrap treat both alike.
    A baseline that raises is an ``AdaptkitError`` naming it.
    """
    from adaptkit.judge.energy import EnergyMeter

    baseline = cls()
    with EnergyMeter(power_watts=power_watts, device="cpu") as meter:
        try:
            baseline.fit(task, train, metric, seed)
            scores = baseline.scores(task, evaluate)
        except AdaptkitError:
            raise
        except Exception as exc:
            raise AdaptkitError(f"baseline {cls.name!r} failed: {type(exc).__name__}: {exc}") from exc
    if scores.shape[0] != len(eval_labels):
        raise AdaptkitError(f"baseline {cls.name!r} returned {scores.shape[0]} scores for {len(eval_labels)} eval rows")
    return BaselineResult(name=cls.name, outputs={"logits": scores.float(), "labels": eval_labels},
                          summary=baseline.summary(), seconds=round(meter.seconds, 3),
                          cpu_seconds=round(meter.cpu_seconds, 3), energy_wh=round(meter.result.wh, 6))


def cross_validated(cls: type, task: Any, data: Any, metric: str, seed: int, folds: int = 5) -> dict[str, Any]:
    """``cls`` scored by k-fold cross-validation on ``data`` (``BaselineRows`` with targets): what
    ``advise`` shows beside its probes, before anything is fine-tuned.

    Each fold trains a fresh baseline on the other folds (which choose its own regularisation by
    their own cross-validation) and scores the held-out fold with the task's ``compute_metrics``;
    folds are stratified for one class per row (plain shuffled folds for numbers and multi-label
    rows). Returns the mean and each fold's score of every metric the task reports, and the
    seconds it took.
    """
    import numpy
    import torch
    from sklearn.model_selection import KFold, StratifiedKFold

    targets = list(data.targets or [])
    single = bool(targets) and isinstance(targets[0], int) and not isinstance(targets[0], bool)  # one class a row
    smallest = min(numpy.unique(numpy.asarray(targets), return_counts=True)[1]) if single else len(targets) // 2
    folds = min(folds, int(smallest))
    if folds < 2:
        return {"skipped": "too few rows of a class to cross-validate"}
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if single
                else KFold(folds, shuffle=True, random_state=seed))
    started = time.perf_counter()
    per_fold: dict[str, list[float]] = {}
    for train_index, test_index in splitter.split(numpy.zeros(len(targets)), targets if single else None):

        def part(index: Any) -> Any:
            rows = [int(i) for i in index]
            return BaselineRows(rows=data.rows.select(rows),
                                encoded=data.encoded.select(rows) if data.encoded is not None else None,
                                targets=[targets[i] for i in rows])

        train, test = part(train_index), part(test_index)
        baseline = cls()
        baseline.fit(task, train, metric, seed)
        labels = torch.tensor(test.targets)
        scores = {k: float(v) for k, v in task.compute_metrics(logits=baseline.scores(task, test).float(),
                                                                labels=labels).items()}
        for key, value in scores.items():
            per_fold.setdefault(key, []).append(value)
    return {"folds": folds, "rows": len(targets), "seconds": round(time.perf_counter() - started, 2),
            **{key: round(sum(values) / len(values), 4) for key, values in per_fold.items()},
            "fold_scores": {key: [round(v, 4) for v in values] for key, values in per_fold.items()}}

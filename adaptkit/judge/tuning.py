"""Train one arm of a comparison to its potential: a small learning-rate search with Optuna.

An arm is a strategy (or ``scratch``: the same architecture from random weights) on one
training-set size and seed. Judging transfer with one guessed learning rate judges the guess:
full fine-tuning at 3e-5 on 300 rows, or scratch at a rate too small to move random weights,
looks like "no transfer" when it is under-training. So every arm gets the same search:

- ``trials`` learning rates, log-spaced around the arm's suggestion (a factor of 3 either
  side), enqueued in an Optuna study so the grid is the same for every arm and reproducible.
  With ``storage`` (an Optuna storage URL, e.g. ``sqlite:///sweep.db`` or a PostgreSQL URL)
  several ``adaptkit compare`` processes on several machines pull trials from one study; the
  compare output folder must then be shared too (trial outputs are saved there).
- Each trial trains on the arm's rows minus a validation split carved from them (never the
  eval rows the verdict is computed on), evaluates the validation split after every epoch,
  keeps the best epoch's weights, and is stopped early by a successive-halving pruner when its
  validation score trails the trials before it at a third of the budget.
- The trial with the best validation score (ties: lower validation loss) is the arm's result;
  its predictions on the eval rows are what ``compare`` bootstraps.

The model is built and wrapped once per arm and seed (``ArmModel``); a trial restores its
initial trainable tensors instead of building again. That is exact (same seed, same initial
values) and keeps what a strategy caches across trials and sizes, e.g. frozen_head's features.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from adaptkit.errors import AdaptkitError

SCRATCH = "scratch"
DEFAULT_TRIALS = 3  # a third of, equal to and three times the suggestion
GRID_SPAN = 3.0  # the grid runs from suggestion / GRID_SPAN to suggestion * GRID_SPAN
VALIDATION_FRACTION = 0.2
PRUNER_REDUCTION = 3


@dataclass
class Arm:
    """One column of a comparison: a strategy name (or ``scratch``) and how to build it."""

    name: str
    strategy: str  # the registered strategy that trains it
    random_init: bool
    options: Any  # the strategy's options model
    learning_rate: Optional[float]  # an explicit rate: no search around another one


@dataclass
class TrialRecord:
    """One trial: its learning rate, how it ended, and what it cost."""

    number: int
    learning_rate: float
    state: str  # complete | pruned | failed
    validation: Optional[float] = None
    validation_loss: Optional[float] = None
    best_epoch: Optional[int] = None
    steps: int = 0
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0
    energy_wh: float = 0.0
    error: Optional[str] = None


@dataclass
class ArmResult:
    """The tuned arm at one size and seed."""

    arm: str
    size: Optional[int]
    seed: int
    train_rows: int
    validation_rows: int
    learning_rate: float
    trials: list[TrialRecord]
    eval_outputs: dict[str, Any] = field(repr=False)
    chosen_trial: int = 0
    trainable: int = 0
    peak_memory_bytes: int = 0

    @property
    def search_energy_wh(self) -> float:
        return sum(t.energy_wh for t in self.trials)

    @property
    def chosen(self) -> TrialRecord:
        return next(t for t in self.trials if t.number == self.chosen_trial)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "eval_outputs"}
        data["search_energy_wh"] = round(self.search_energy_wh, 6)
        return data


def learning_rate_grid(suggestion: float, trials: int) -> list[float]:
    """``trials`` rates log-spaced from suggestion / 3 to suggestion * 3 (the suggestion alone for one)."""
    if trials <= 1:
        return [suggestion]
    return [float(f"{suggestion * GRID_SPAN ** (-1 + 2 * i / (trials - 1)):.3g}") for i in range(trials)]


def middle_out(grid: list[float]) -> list[float]:
    """The grid from its middle outwards: [a, b, c, d] -> [b, c, a, d]."""
    centre = (len(grid) - 1) / 2
    return sorted(grid, key=lambda rate: (abs(grid.index(rate) - centre), grid.index(rate)))


class ArmModel:
    """An arm's model, built and wrapped once; ``reset()`` puts back its initial trainable tensors."""

    def __init__(self, session: Any, arm: Arm, seed: int, scratch_learning_rate: float):
        from adaptkit.engine.checkpoint import trainable_state

        self.strategy = session.strategy(arm.strategy, arm.options)
        # the arm's strategy loads its own base (a 4-bit one for a quantizing strategy), as a run does
        base = session.build_base(self.strategy, seed=seed, random_init=arm.random_init)
        context = session.context(base)
        self.suggestion = arm.learning_rate or (scratch_learning_rate if arm.random_init
                                                else self.strategy.suggest_learning_rate(context))
        self.model = session.wrap(self.strategy, base, context)
        self.initial = trainable_state(self.model)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if not self.trainable:
            raise AdaptkitError(f"strategy {arm.strategy!r} left no parameter trainable on this model")

    def reset(self) -> None:
        from adaptkit.engine.checkpoint import load_trainable_state

        load_trainable_state(self.model, self.initial, Path("the initial weights"))


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_records(study: Any) -> list[TrialRecord]:
    """Every trial's record as the objective stored it (the study may be shared with other processes)."""
    return [TrialRecord(**t.user_attrs["record"]) for t in study.get_trials(deepcopy=False) if "record" in t.user_attrs]


def tune_arm(session: Any, arm: Arm, workbench: ArmModel, size: Optional[int], seed: int, train_data: Any,
             validation_data: Any, trials: int, study_name: str, storage: Optional[str], trial_dir: Path,
             on_trial: Callable[[TrialRecord], None] = lambda _: None, power_watts: Optional[float] = None
             ) -> ArmResult:
    """Search the learning rate of one arm at one size and seed; the best trial's eval predictions."""
    import optuna
    import torch

    from adaptkit.engine.budget import budget_for
    from adaptkit.judge.energy import EnergyMeter
    from adaptkit.errors import TrainingDiverged
    from adaptkit.engine.train import best_metric, eval_loader, fit, gather_outputs, make_accelerator

    _quiet_optuna()
    task, recipe = session.task, session.recipe
    metric, greater = best_metric(recipe.training, task)
    grid = learning_rate_grid(workbench.suggestion, trials)
    # Judged first at a third of the budget (in epochs, where validation is scored): earlier, on
    # small data every trial is still at chance and pruning would be a coin toss.
    epochs = budget_for(len(train_data), recipe.training).epochs
    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=True,
        direction="maximize" if greater else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=len(grid)),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, math.ceil(epochs / 3)),
                                                      reduction_factor=PRUNER_REDUCTION))
    if not study.trials:  # the first process to reach the study enqueues the grid; others share it
        for rate in middle_out(grid):  # the likeliest rates first: the extremes then meet a good bar
            study.enqueue_trial({"learning_rate": rate})
    low, high = min(grid) / GRID_SPAN, max(grid) * GRID_SPAN
    sign = 1.0 if greater else -1.0

    def choice_key(record: TrialRecord) -> tuple[float, float]:
        """The chosen trial is the best validation score, ties broken by the lower validation loss."""
        loss = record.validation_loss
        return sign * record.validation, -(loss if loss is not None and math.isfinite(loss) else math.inf)

    training = recipe.training.model_copy(update={"load_best_at_end": True, "report_to": [],
                                                  "checkpoint_every_steps": None, "seed": seed})
    trial_dir.mkdir(parents=True, exist_ok=True)
    collate = task.collate(session.tokenizer)

    def objective(trial: "optuna.Trial") -> float:
        rate = trial.suggest_float("learning_rate", low, high, log=True)
        workbench.reset()
        torch.manual_seed(seed)
        accelerator = make_accelerator(training.model_copy(update={"learning_rate": rate}), log=lambda _: None)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[metric], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        record = TrialRecord(number=trial.number, learning_rate=rate, state="failed")
        with EnergyMeter(power_watts=power_watts, device=str(accelerator.device)) as meter:
            try:
                result = fit(workbench.model, workbench.strategy, task, train_data, validation_data,
                             session.tokenizer, training, accelerator, rate, progress=False, on_epoch_end=report,
                             eval_every=1)  # the validation split is small: score every epoch for the pruner
            except optuna.TrialPruned:
                record.state = "pruned"
            except TrainingDiverged as exc:
                record.error = str(exc).split(";")[0]
        record.train_seconds, record.cpu_seconds = round(meter.seconds, 3), round(meter.cpu_seconds, 3)
        record.energy_wh = round(meter.result.wh, 6)
        if record.state == "pruned" or record.error:
            trial.set_user_attr("record", asdict(record))
            on_trial(record)
            if record.state == "pruned":
                raise optuna.TrialPruned()
            raise _Diverged(record.error)
        record.state = "complete"
        record.validation = float(result.best["value"])
        record.validation_loss = float(result.best["metrics"].get("loss", math.nan))
        record.best_epoch, record.steps = result.best["epoch"], result.steps
        finished = [r for r in trial_records(study) if r.state == "complete"]
        if not finished or choice_key(record) > max(choice_key(r) for r in finished):
            # only a trial that could be chosen scores the eval rows (the chosen one is always such a trial)
            model = accelerator.unwrap_model(workbench.model)
            loader = eval_loader(session.eval_data, recipe.training.eval_batch_size, collate)
            outputs, _, _ = gather_outputs(model, loader, None, task.batch_outputs)
            torch.save({k: v.cpu() for k, v in outputs.items()}, trial_dir / f"trial-{trial.number}.pt")
        trial.set_user_attr("record", asdict(record))
        on_trial(record)
        return record.validation

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL,
              optuna.trial.TrialState.RUNNING)
    remaining = trials - len(study.get_trials(deepcopy=False, states=states))
    if remaining > 0:  # a study already finished (a rerun on the same storage) trains nothing again
        study.optimize(objective, n_trials=remaining, catch=(_Diverged,),
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=states)])
    while any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        time.sleep(2.0)  # another process sharing the study is still training one of its trials
    records = trial_records(study)
    done = [r for r in records if r.state == "complete"]
    if not done:
        reasons = "; ".join(f"lr {r.learning_rate:g}: {r.error or r.state}" for r in records)
        raise AdaptkitError(f"arm {arm.name!r} at {size or 'all'} rows, seed {seed}: no trial finished ({reasons})")
    best = max(done, key=choice_key)
    outputs = torch.load(trial_dir / f"trial-{best.number}.pt", weights_only=True)
    return ArmResult(arm=arm.name, size=size, seed=seed, train_rows=len(train_data),
                     validation_rows=len(validation_data), learning_rate=best.learning_rate,
                     trials=sorted(records, key=lambda r: r.number), eval_outputs=outputs,
                     chosen_trial=best.number, trainable=workbench.trainable)


class _Diverged(Exception):
    """A trial whose loss became NaN: recorded as failed, the search goes on."""

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
- A grid whose best rate is one of its two ends has not found the arm's rate, only a bound on it:
  every peft method on MiniLM/SST-2 chose the top of its 3-rate grid (benchmarks/results/strategies.md).
  So the search steps past that end, one grid step at a time (up to ``EDGE_EXTENSIONS`` rates), until
  the best rate has a worse (pruned, diverged or lower-scoring) neighbour on both sides. An arm still
  best at an end after that is flagged in the report (``ArmResult.search["at_edge"]``). Not with
  ``compare --max-minutes``, whose estimate counts the grid only.

The model is built and wrapped once per arm and seed (``ArmModel``); a trial restores its
initial trainable tensors instead of building again. That is exact (same seed, same initial
values) and keeps what a strategy caches across trials and sizes, e.g. frozen_head's features.

Random weights get a search range of their own (``search_range``): a rule on ``Arm.random_init``,
not on the arm's name. A transformer from random weights sits at chance with a fine-tune's small
steps (SST-2, MiniLM's architecture: 0.49-0.51 at 80-800 rows with rates 3.3e-5..3e-4), so its
grid is centred higher and spans wider, it warms up over a tenth of its steps, and it always gets
the small-data floor of optimizer steps. The grid each arm tried is recorded (``ArmResult.search``).

A search survives its process. A trial records its owner (host, PID, process start time) and,
on a database storage, beats a heartbeat; a RUNNING trial whose owner is gone (same host) or
whose heartbeat stopped (any host) is failed, and a grid rate with no finished (complete,
pruned or diverged), running or waiting trial is enqueued again, so an interrupted trial is
retried at the same rate and an arm is only ever judged on its whole grid. The chosen trial's
eval predictions are read from this compare's ``trial_dir``; when they are not there (another
output folder trained it) the chosen rate is trained again, not a crash.
"""
from __future__ import annotations

import functools
import math
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from adaptkit.errors import AdaptkitError, TrainingDiverged

SCRATCH = "scratch"
DEFAULT_TRIALS = 3  # a third of, equal to and three times the suggestion
GRID_SPAN = 3.0  # the grid runs from suggestion / GRID_SPAN to suggestion * GRID_SPAN
VALIDATION_FRACTION = 0.2
PRUNER_REDUCTION = 3
# Random weights (``Arm.random_init``): the centre of the search, its span, and the warm-up. Small
# transformers from random weights want larger steps than a fine-tune and a warm-up before them;
# measured on 240 SST-2 rows with MiniLM's architecture (benchmarks/results/scratch_range.md).
RANDOM_INIT_LEARNING_RATE = 5e-4
RANDOM_INIT_SPAN = 6.0  # three trials: 8.3e-5, 5e-4, 3e-3
RANDOM_INIT_WARMUP = 0.1  # a tenth of the steps (the recipe's own, when larger)
EDGE_EXTENSIONS = 2  # rates tried past a grid end where the best rate lies, one grid step at a time
EDGE_FLAG = "best at an end of its learning-rate search"  # a report's flag: a bound on its rate, not the rate
# A RUNNING trial on a database storage beats every HEARTBEAT seconds; one silent for GRACE seconds
# belongs to a process that died (SIGKILL, a lost machine) and is failed, then retried.
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 90
POLL_SECONDS = 2.0


@dataclass
class Arm:
    """One column of a comparison: a strategy name (or ``scratch``) and how to build it."""

    name: str
    strategy: str  # the registered strategy that trains it
    random_init: bool
    options: Any  # the strategy's options model
    learning_rate: Optional[float]  # an explicit centre for its search (compare's learning_rates), else None


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
    past_grid: bool = False  # a rate tried past an end of the grid (``beyond_edge``)


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
    search: dict[str, Any] = field(default_factory=dict)  # the range tried: SearchRange.to_dict()
    retrained: bool = False  # the chosen trial's predictions were not in trial_dir: its rate was trained again

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


def learning_rate_grid(suggestion: float, trials: int, span: float = GRID_SPAN) -> list[float]:
    """``trials`` rates log-spaced from suggestion / span to suggestion * span (the suggestion alone for one)."""
    if trials <= 1:
        return [suggestion]
    return [float(f"{suggestion * span ** (-1 + 2 * i / (trials - 1)):.3g}") for i in range(trials)]


def beyond_edge(tried: list[float], best: float, step: float) -> Optional[float]:
    """The next rate past the end of ``tried`` where ``best`` lies (one ``step`` beyond it), or None
    when the best rate has a tried rate on both sides (or only one rate was tried: no search, no edge)."""
    if len(tried) < 2:
        return None
    low, high = min(tried), max(tried)
    if _key(best) == _key(high):
        return float(f"{high * step:.3g}")
    if _key(best) == _key(low):
        return float(f"{low / step:.3g}")
    return None


def edge_to_follow(finished: list["TrialRecord"], tried: list[float], key: Callable[["TrialRecord"], Any],
                   step: float) -> Optional[float]:
    """The rate to try past an end of ``tried``: when the best finished trial (by ``key``) is at that end
    and strictly the best on the validation score. A tie is a plateau (a tiny validation split, an arm
    that did not learn), not a slope, and following it would only spend trials."""
    if not finished:
        return None
    best = max(finished, key=key)
    if sum(1 for r in finished if r.validation == best.validation) > 1:
        return None
    return beyond_edge(tried, best.learning_rate, step)


def middle_out(grid: list[float]) -> list[float]:
    """The grid from its middle outwards: [a, b, c, d] -> [b, c, a, d]."""
    centre = (len(grid) - 1) / 2
    return sorted(grid, key=lambda rate: (abs(grid.index(rate) - centre), grid.index(rate)))


@dataclass(frozen=True)
class SearchRange:
    """What one arm's search tries: the grid (centre, span, trials) and how each trial trains."""

    centre: float
    span: float
    trials: int
    warmup_ratio: float
    min_steps: int
    random_init: bool
    reason: str
    limit: Optional[int] = None  # fewer rates than trials (compare --max-minutes): the grid's extremes go first

    @property
    def full_grid(self) -> list[float]:
        return learning_rate_grid(self.centre, self.trials, self.span)

    @property
    def step(self) -> float:
        """The factor between neighbouring rates of the full grid (what an extension past an end steps by)."""
        return self.span ** (2 / (self.trials - 1)) if self.trials > 1 else self.span

    @property
    def grid(self) -> list[float]:
        """The rates tried: the full grid, or its ``limit`` rates nearest the centre."""
        full = self.full_grid
        if self.limit is None or self.limit >= len(full):
            return full
        return sorted(middle_out(full)[:max(1, self.limit)])

    def training(self, training: Any) -> Any:
        """The recipe's training section as every trial of this range runs it."""
        return training.model_copy(update={"warmup_ratio": self.warmup_ratio, "min_steps": self.min_steps})

    def describe(self) -> str:
        """``lr 8.3e-05..0.003 (3 rates), warm-up 10%, at least 100 steps``: the range tried, in words."""
        grid = self.grid
        rates = f"{grid[0]:.2g}..{grid[-1]:.2g}" if len(grid) > 1 else f"{grid[0]:.2g}"
        return (f"lr {rates} ({len(grid)} rate{'s' if len(grid) != 1 else ''}), warm-up {self.warmup_ratio:.0%}, "
                f"at least {self.min_steps} steps")

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "centre": self.centre, "span": self.span, "warmup_ratio": self.warmup_ratio,
                "min_steps": self.min_steps, "random_init": self.random_init, "reason": self.reason,
                "described": self.describe(), **({"full_grid": self.full_grid} if self.grid != self.full_grid else {})}


def search_range(arm: Arm, suggestion: float, trials: int, training: Any, limit: Optional[int] = None) -> SearchRange:
    """The range an arm is searched over: one rule for pretrained weights, one for random weights.

    Pretrained: ``trials`` rates a factor of ``GRID_SPAN`` either side of the suggestion, with the
    recipe's warm-up and step floor. Random weights (``arm.random_init``, whatever the arm is
    called): centred on the suggestion (``RANDOM_INIT_LEARNING_RATE`` unless a rate was given), a
    factor of ``RANDOM_INIT_SPAN`` either side, at least ``RANDOM_INIT_WARMUP`` of the steps as
    warm-up and never fewer optimizer steps than the default small-data floor (a recipe's
    ``training.max_steps`` still sets an exact count). Deterministic: the same arm, suggestion and
    trials give the same grid on every machine.
    """
    from adaptkit.recipe.schema import DEFAULT_MIN_STEPS

    if not arm.random_init:
        return SearchRange(centre=suggestion, span=GRID_SPAN, trials=trials, warmup_ratio=training.warmup_ratio,
                           min_steps=training.min_steps, random_init=False, limit=limit,
                           reason=f"pretrained weights: the suggestion, a factor of {GRID_SPAN:g} either side")
    return SearchRange(centre=suggestion, span=RANDOM_INIT_SPAN, trials=trials,
                       warmup_ratio=max(training.warmup_ratio, RANDOM_INIT_WARMUP),
                       min_steps=max(training.min_steps, DEFAULT_MIN_STEPS), random_init=True, limit=limit,
                       reason=f"random weights: larger steps, a factor of {RANDOM_INIT_SPAN:g} either side, "
                              f"a warm-up and the small-data step floor")


def arm_learning_rate(session: Any, arm: Arm, strategy: Any, context: Any,
                      scratch_learning_rate: Optional[float] = None) -> float:
    """The rate an arm's search is centred on; compare's plan and the search both ask here. An explicit
    rate (``learning_rates[name]``) wins; random weights take their own (larger) rate; otherwise what a run
    of this strategy would use (``Session.learning_rate``: the recipe's rate for its own strategy, else the
    strategy's suggestion for this model)."""
    if arm.learning_rate:
        return arm.learning_rate
    if arm.random_init:
        return scratch_learning_rate or RANDOM_INIT_LEARNING_RATE
    return session.learning_rate(strategy, context)


class ArmModel:
    """An arm's model, built and wrapped once; ``reset()`` puts back its initial trainable tensors."""

    def __init__(self, session: Any, arm: Arm, seed: int, scratch_learning_rate: Optional[float] = None,
                 total_steps: Optional[int] = None):
        """``total_steps``: the optimizer steps every trial of this model takes, when they are the same for
        all (one training-set size); the strategy is told them (``WrapContext.total_steps``)."""
        from adaptkit.engine.checkpoint import trainable_state

        self.strategy = session.strategy(arm.strategy, arm.options)
        # the arm's strategy loads its own base (a 4-bit one for a quantizing strategy), as a run does
        base = session.build_base(self.strategy, seed=seed, random_init=arm.random_init)
        context = session.context(base, total_steps=total_steps)
        self.suggestion = arm_learning_rate(session, arm, self.strategy, context, scratch_learning_rate)
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


@functools.lru_cache(maxsize=8)
def open_storage(url: str) -> Any:
    """An Optuna database storage whose running trials beat a heartbeat (so a dead one can be told)."""
    import warnings

    import optuna

    if url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "oracle", "mssql"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    return url


def _owner() -> dict[str, Any]:
    """This process, as a trial records its owner: host, PID and start time (a reused PID is not us)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def owner_gone(owner: Any) -> bool:
    """True when ``owner`` (what ``_owner()`` recorded) is a process of this host that no longer runs."""
    import psutil

    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False  # another machine's: its heartbeat tells
    try:
        process = psutil.Process(int(owner["pid"]))
        return (abs(process.create_time() - float(owner.get("started", 0.0))) > 1.0
                or process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def fail_dead_trials(study: Any) -> list[int]:
    """Fail this study's RUNNING trials whose process died: a stopped heartbeat (any host, database
    storages) or an owner that is gone from this host. Returns the trial numbers failed here."""
    import warnings

    import optuna

    state = optuna.trial.TrialState
    before = {t.number for t in study.get_trials(deepcopy=False, states=(state.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if owner_gone(trial.user_attrs.get("owner")):
            try:
                study.tell(trial.number, state=state.FAIL)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # another process failed it first
    after = {t.number for t in study.get_trials(deepcopy=False, states=(state.RUNNING,))}
    return sorted(before - after - {t.number for t in study.get_trials(deepcopy=False, states=(state.COMPLETE,
                                                                                                  state.PRUNED))})


def _rate_of(trial: Any) -> Optional[float]:
    """A trial's learning rate: its parameter, or the one it was enqueued with while it waits."""
    if "learning_rate" in trial.params:
        return float(trial.params["learning_rate"])
    fixed = trial.system_attrs.get("fixed_params") or {}
    return float(fixed["learning_rate"]) if "learning_rate" in fixed else None


def _key(rate: float) -> str:
    return f"{rate:.6g}"


def _covering(study: Any) -> dict[str, list[Any]]:
    """Per grid key, the trials that settle or will settle that rate: finished with a record
    (complete, pruned or diverged), running, or waiting. An interrupted trial (failed without a
    record) and a skipped duplicate (pruned without a record) settle nothing."""
    import optuna

    state = optuna.trial.TrialState
    out: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        rate = _rate_of(trial)
        if rate is None:
            continue
        if trial.state in (state.RUNNING, state.WAITING) or "record" in trial.user_attrs:
            out.setdefault(_key(rate), []).append(trial)
    return out


def requeue_missing(study: Any, grid: list[float]) -> list[float]:
    """Enqueue every grid rate that no trial settles (never tried, or interrupted): the rates enqueued."""
    covering = _covering(study)
    missing = [rate for rate in middle_out(grid) if _key(rate) not in covering]
    for rate in missing:  # the likeliest rates first: the extremes then meet a good bar
        study.enqueue_trial({"learning_rate": rate})
    return missing


def tune_arm(session: Any, arm: Arm, arm_model: ArmModel, size: Optional[int], seed: int, train_data: Any,
             validation_data: Any, trials: int, study_name: str, storage: Optional[str], trial_dir: Path,
             on_trial: Callable[[TrialRecord], None] = lambda _: None, power_watts: Optional[float] = None,
             log: Callable[[str], None] = lambda _: None, limit: Optional[int] = None,
             extend: int = EDGE_EXTENSIONS) -> ArmResult:
    """Search the learning rate of one arm at one size and seed; the best trial's eval predictions.

    Resumable: with ``storage`` the study's finished trials are reused, a dead process's running
    trial is failed and its rate trained again, and the chosen trial's predictions are read from
    ``trial_dir`` or, when missing there, recomputed by training that rate once more. ``limit``
    tries only that many of the ``trials`` rates, those nearest the centre. ``extend``: at most that many
    rates past a grid end where the best rate lies (none when ``limit`` trimmed the grid).
    """
    import optuna
    import torch

    from adaptkit.engine.budget import budget_for
    from adaptkit.judge.energy import EnergyMeter
    from adaptkit.engine.train import best_metric, eval_loader, fit, gather_outputs, make_accelerator

    _quiet_optuna()
    task, recipe = session.task, session.recipe
    metric, greater = best_metric(recipe.training, task)
    searched = search_range(arm, arm_model.suggestion, trials, recipe.training, limit)
    grid = searched.grid
    grid_keys = {_key(rate) for rate in grid}
    on_grid = set(grid_keys)  # grows with the rates tried past an end (``extended``)
    extended: list[float] = []
    if len(grid) < len(searched.full_grid):
        extend = 0  # a grid trimmed to fit a time budget is not widened past it
    training = searched.training(recipe.training).model_copy(update={
        "load_best_at_end": True, "report_to": [], "checkpoint_every_steps": None, "seed": seed})
    # Judged first at a third of the budget (in epochs, where validation is scored): earlier, on
    # small data every trial is still at chance and pruning would be a coin toss.
    epochs = budget_for(len(train_data), training).epochs
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage) if storage else None, load_if_exists=True,
        direction="maximize" if greater else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=len(grid)),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, math.ceil(epochs / 3)),
                                                      reduction_factor=PRUNER_REDUCTION))
    reach = searched.span * searched.step ** extend  # the sampler's range holds every rate an extension may try
    low, high = min(searched.full_grid) / reach, max(searched.full_grid) * reach
    sign = 1.0 if greater else -1.0
    state = optuna.trial.TrialState

    def choice_key(record: TrialRecord) -> tuple[float, float]:
        """The chosen trial is the best validation score, ties broken by the lower validation loss."""
        loss = record.validation_loss
        return sign * record.validation, -(loss if loss is not None and math.isfinite(loss) else math.inf)

    def grid_records() -> list[TrialRecord]:
        """The records of this grid's rates (a study shared with a wider grid holds others too)."""
        return [r for r in trial_records(study) if _key(r.learning_rate) in on_grid]

    collate = task.collate(session.tokenizer)

    def accelerator_for(rate: float) -> Any:
        return make_accelerator(training, log=lambda _: None)  # the rate goes to fit, which builds the optimizer

    def train(rate: float, report: Optional[Callable[[int, dict[str, float]], None]], accelerator: Any) -> Any:
        arm_model.reset()
        torch.manual_seed(seed)
        return fit(arm_model.model, arm_model.strategy, task, train_data, validation_data, session.tokenizer,
                   training, accelerator, rate, progress=False, on_epoch_end=report,
                   eval_every=1)  # the validation split is small: score every epoch for the pruner

    def save_eval_outputs(accelerator: Any, number: int) -> dict[str, Any]:
        model = accelerator.unwrap_model(arm_model.model)
        loader = eval_loader(session.eval_data, recipe.training.eval_batch_size, collate)
        outputs, _, _ = gather_outputs(model, loader, None, task.batch_outputs, task.compute_loss)  # as evaluate runs it
        outputs = {k: v.cpu() for k, v in outputs.items()}
        trial_dir.mkdir(parents=True, exist_ok=True)
        # a kill mid-write leaves no half file under the real name, only a temporary file named as
        # adaptkit names those (adaptkit.engine.outputs: ".adaptkit-tmp-<name>-<8 random>")
        handle, partial = tempfile.mkstemp(prefix=f".adaptkit-tmp-trial-{number}.pt-", dir=trial_dir)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(outputs, stream)
            os.replace(partial, trial_dir / f"trial-{number}.pt")
        finally:
            Path(partial).unlink(missing_ok=True)
        return outputs

    def objective(trial: "optuna.Trial") -> float:
        rate = trial.suggest_float("learning_rate", low, high, log=True)
        others = [t for t in _covering(study).get(_key(rate), []) if t.number != trial.number
                  and (t.state != state.RUNNING or t.number < trial.number) and t.state != state.WAITING]
        if _key(rate) not in on_grid or others:
            # the sampler's own rate (another process took the last queued one), or a rate another
            # process already settles: stopped before any training, recorded nowhere
            raise optuna.TrialPruned("not needed")
        trial.set_user_attr("owner", _owner())

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[metric], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        record = TrialRecord(number=trial.number, learning_rate=rate, state="failed",
                             past_grid=_key(rate) not in grid_keys)
        accelerator = accelerator_for(rate)
        with EnergyMeter(power_watts=power_watts, device=str(accelerator.device)) as meter:
            try:
                result = train(rate, report, accelerator)
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
        finished = [r for r in grid_records() if r.state == "complete"]
        if not finished or choice_key(record) > max(choice_key(r) for r in finished):
            # only a trial that could be chosen scores the eval rows (the chosen one is always such a trial)
            save_eval_outputs(accelerator, trial.number)
        trial.set_user_attr("record", asdict(record))
        on_trial(record)
        return record.validation

    while True:
        failed = fail_dead_trials(study)
        if failed:
            log(f"compare: {arm.name}: trial(s) {', '.join(str(n + 1) for n in failed)} of a process that died "
                f"were failed; their rates are trained again")
        requeue_missing(study, grid + extended)
        if study.get_trials(deepcopy=False, states=(state.WAITING,)):
            study.optimize(objective, n_trials=1, catch=(_Diverged,))
        elif study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            time.sleep(POLL_SECONDS)  # another process sharing the study is still training one of its trials
        else:
            past = (edge_to_follow([r for r in grid_records() if r.state == "complete"], grid + extended,
                                   choice_key, searched.step) if len(extended) < extend else None)
            if past is None:
                break
            # the same decision in every process sharing the study: it reads only the settled trials
            extended.append(past)
            on_grid.add(_key(past))
            log(f"compare: {arm.name}: the best rate so far is an end of the rates tried "
                f"({_rates(grid + extended[:-1])}); trying lr {past:.3g} past it")
    records = grid_records()
    done = [r for r in records if r.state == "complete"]
    if not done:
        reasons = "; ".join(f"lr {r.learning_rate:g}: {r.error or r.state}" for r in records)
        raise AdaptkitError(f"arm {arm.name!r} at {size or 'all'} rows, seed {seed}: no trial finished ({reasons})")
    best = max(done, key=choice_key)
    at_edge = edge_to_follow(done, grid + extended, choice_key, searched.step) is not None
    search = {**searched.to_dict(), "extended": extended, "extension_limit": extend, "at_edge": at_edge}
    if extended or at_edge:
        search["described"] += (f"; past the grid's end: {_rates(extended)}" if extended else "") + (
            f"; best at an end of the rates tried ({best.learning_rate:.2g}): it may train better beyond"
            if at_edge else "")
    path = trial_dir / f"trial-{best.number}.pt"
    retrained = False
    try:
        outputs = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:  # missing (another output folder trained it) or unreadable
        log(f"compare: {arm.name} at {size if size is not None else 'all'} rows, seed {seed}: the chosen trial's "
            f"eval predictions are not in {trial_dir} ({type(exc).__name__}); training lr {best.learning_rate:.3g} "
            f"again to recompute them")
        accelerator = accelerator_for(best.learning_rate)
        train(best.learning_rate, None, accelerator)
        outputs = save_eval_outputs(accelerator, best.number)
        retrained = True
    return ArmResult(arm=arm.name, size=size, seed=seed, train_rows=len(train_data),
                     validation_rows=len(validation_data), learning_rate=best.learning_rate,
                     trials=sorted(records, key=lambda r: r.number), eval_outputs=outputs,
                     chosen_trial=best.number, trainable=arm_model.trainable, search=search,
                     retrained=retrained)


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{rate:.2g}" for rate in sorted(rates))


class _Diverged(Exception):
    """A trial whose loss became NaN: recorded as failed, the search goes on."""

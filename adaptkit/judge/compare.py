"""``adaptkit compare``: transfer against training from scratch, every arm trained to its potential.

Arms are the named strategies plus ``scratch``, a compare-level pseudo-strategy: the same
architecture from random weights (``model.init: random``) trained by ``scratch_strategy``
(default: the installed strategy that declares ``trains_every_weight``). For every
seed and training-set size, each arm gets the same learning-rate search (``adaptkit.judge.tuning``:
a log-spaced grid around the arm's suggestion, chosen on a validation split carved from the
arm's rows, poor trials pruned), and the budget gets the small-data floor of optimizer steps
(``adaptkit.engine.budget``), so a verdict measures transfer, not under-training.

What is reported, per arm and size: the eval metric of the chosen trial (every metric the task
computes, so macro-F1 stands beside accuracy), its 95% bootstrap interval over eval rows, the
interval across seeds when there are several, the chosen learning rate, the measured energy of
one training run and of the whole search. An arm that predicts a single class is flagged "did
not learn", and one whose interval does not clear the majority-class score "not above the
majority class": neither is a baseline worth beating.

The verdict at each size compares the best transfer arm with scratch by a *paired* bootstrap
of the metric difference (the same resampled eval rows for both): positive transfer when the
95% interval lies above zero, negative when below, no clear difference otherwise. The report
names the sizes where transfer pays and where it stops, fits a power-law learning curve per
arm (``adaptkit.judge.curves``) and says how many rows scratch would need to match transfer and what
doubling the data is expected to gain. Energy saved is stated only when it is positive.

Outputs in one folder: ``compare.json``, ``table.md``, ``compare.png`` (metric against size
with chance and majority-class lines), ``report.html`` and ``trials/`` (each completed trial's
eval predictions, which processes sharing an Optuna storage read from each other, and the
folder's own Optuna study when no storage is given). compare.json is written after every
finished cell and a rerun of the same command resumes from it; the plan and its estimated
time are printed before the first trial (``adaptkit.judge.compare_state``).

torch and scipy are imported inside the functions that use them, so importing this module (the CLI's
argument checks, ``split_arms``) stays torch-free; every other import is at the top.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import psutil

from adaptkit.engine.budget import budget_for
from adaptkit.engine.checkpoint import identity_hash, recipe_identity
from adaptkit.engine.data import split_validation
from adaptkit.engine.device import training_device
from adaptkit.engine.outputs import safe_join, write_json, write_manifest
from adaptkit.engine.session import Session, as_recipe
from adaptkit.errors import AdaptkitError
from adaptkit.judge import compare_state as state
from adaptkit.judge.baselines import aligned, installed_for, targets_of, train_baseline
from adaptkit.judge.compare_checks import check_compare_arguments, check_pretrained
from adaptkit.judge.energy import describe_power, grid_intensity
from adaptkit.plugin.baseline import BaselineRows
from adaptkit.plugin.registry import get_strategy, list_baselines, list_strategies, recipe_plugins
from adaptkit.recipe.loading import closest
from adaptkit.recipe.schema import Recipe
from adaptkit.judge.compare_report import html_report, markdown_table, plot
from adaptkit.judge.curves import curve_questions, percentile_interval
from adaptkit.judge.tuning import (DEFAULT_TRIALS, EDGE_EXTENSIONS, EDGE_FLAG, RANDOM_INIT_LEARNING_RATE, SCRATCH,
                                   VALIDATION_FRACTION, Arm, ArmModel, arm_learning_rate, search_range, tune_arm)
from adaptkit.judge.verdicts import compute_saved, transfer_range, verdict_metric, verdicts_by_size

SCRATCH_LEARNING_RATE = RANDOM_INIT_LEARNING_RATE  # the centre of scratch's search (tuning.search_range)
SCRATCH_LABEL = "the same model from random weights"
BOOTSTRAP = 1000
SECONDARY_METRIC = "macro_f1"
# The figure shown beside the verdict's metric when the task reports it: the other side of the same
# question (a rank correlation beside an error, an error beside a correlation).
SECONDARY_METRICS = {"mse": "spearman", "rmse": "spearman", "mae": "spearman", "spearman": "mse", "pearson": "mse",
                     "exact_match": "f1", "f1": "exact_match"}
BASELINE_OUTPUTS = "baseline.pt"  # a baseline's eval outputs, in trials/<name>-n<size>-s<seed>/
ROW_INDEX = "__adaptkit_row__"  # a column added while subsets are drawn: which raw row each one is


@dataclass
class RunRecord:
    """One tuned arm at one size and seed: the chosen trial's eval metrics and what the search cost."""

    strategy: str
    size: Optional[int]
    seed: int
    kind: str  # transfer | scratch | baseline
    train_examples: int
    validation_examples: int
    metric: float
    metrics: dict[str, float]
    learning_rate: float
    trials: list[dict[str, Any]]
    trainable: int
    train_seconds: float
    cpu_seconds: float
    energy_wh: float
    search_energy_wh: float
    g_co2e: float
    peak_memory_bytes: int
    predicted_classes: Optional[int]
    details: dict[str, Any] = field(default_factory=dict)  # a baseline's choices (C, folds, features)
    chosen_trial: Optional[int] = None  # its eval predictions: trials/<trial_dir>/trial-<chosen_trial>.pt
    trial_dir: str = ""
    search: dict[str, Any] = field(default_factory=dict)  # the range tried (tuning.SearchRange.to_dict())


@dataclass
class Row:
    """One (arm, size) cell of the table: means over seeds and the intervals."""

    strategy: str
    size: Optional[int]
    train_examples: int
    metric: float
    ci_low: float
    ci_high: float
    trainable: int
    wall_seconds: float
    peak_memory_bytes: int
    energy_wh: float
    g_co2e: float
    seeds: int
    secondary: Optional[float] = None
    learning_rates: list[float] = field(default_factory=list)
    search_energy_wh: float = 0.0
    seed_interval: Optional[list[float]] = None  # 95% t-interval of the mean across seeds (2+ seeds)
    flags: list[str] = field(default_factory=list)  # "did not learn", "not above the majority class"
    kind: str = "transfer"  # transfer | scratch | baseline
    secondary_metric: Optional[str] = None
    search_range: str = ""  # the range tried, in words: "lr 8.3e-05..0.003 (3 rates), warm-up 10%, ..."


@dataclass
class CompareReport:
    """What ``compare`` found; ``to_dict()`` is compare.json."""

    output_dir: Path
    metric: str
    greater_is_better: bool
    strategies: list[str]
    sizes: list[Optional[int]]
    seeds: list[int]
    rows: list[Row]
    runs: list[RunRecord]
    verdict: str
    verdict_detail: str
    per_size: list[dict[str, Any]] = field(default_factory=list)
    compute_saved: list[dict[str, Any]] = field(default_factory=list)
    scratch_strategy: str = ""
    energy_method: str = ""
    trivial_scores: dict[str, float] = field(default_factory=dict)  # chance and majority-class scores
    curves: dict[str, Any] = field(default_factory=dict)
    transfer_range: str = ""
    search: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    practical_verdict: str = ""  # against the best model trained without pretraining
    headline: str = ""  # the answer in one sentence
    metric_reason: str = ""  # why ``metric`` decides (the task's metric, or macro-F1 for imbalanced classes)
    arm_kinds: dict[str, str] = field(default_factory=dict)  # arm -> transfer | scratch | baseline
    arm_labels: dict[str, str] = field(default_factory=dict)  # arm -> how a sentence names it
    baseline_notes: list[str] = field(default_factory=list)  # e.g. "no baseline for task ..."

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        return data


# ---------------------------------------------------------------------------- planning

def default_scratch_strategy() -> str:
    """The strategy that trains the random-weight baseline unless told otherwise: an installed one that
    declares ``trains_every_weight`` (the first by name when several do). The core names none: any
    plugin may provide it, and ``scratch_strategy`` / ``--scratch-strategy`` chooses another."""

    candidates = sorted(name for name, cls in list_strategies().items() if cls.trains_every_weight)
    if not candidates:
        raise AdaptkitError(f"the {SCRATCH!r} arm needs a strategy that trains every weight, and no installed "
                            f"strategy declares trains_every_weight; name one with scratch_strategy "
                            f"(--scratch-strategy) or install one")
    return candidates[0]


def check_strategies(strategies: list[str], scratch_strategy: str) -> None:
    """Every name is installed (or ``scratch``); an unknown one is an error naming the closest."""

    if not strategies:
        raise AdaptkitError("compare needs at least one strategy")
    installed = list(list_strategies())
    for name in strategies:
        if name == SCRATCH:
            continue
        if name not in installed:
            match = closest(name, installed + [SCRATCH])
            hint = f"; did you mean {match!r}?" if match else ""
            raise AdaptkitError(f"unknown strategy {name!r}{hint} (installed: {', '.join(sorted(installed))}, "
                                f"plus {SCRATCH!r}: the same model from random weights)")
    if SCRATCH in strategies:
        get_strategy(scratch_strategy)
    if len(set(strategies)) != len(strategies):
        raise AdaptkitError(f"a strategy is named twice in {','.join(strategies)}")


def split_arms(names: list[str], baselines: Optional[list[str]]) -> tuple[list[str], Optional[list[str]]]:
    """(strategies, baselines) from ``--strategies`` and ``--baselines``.

    A baseline named among the strategies is a baseline, and naming any baseline there (or in
    ``baselines``) chooses exactly those; ``baselines=[]`` drops them all; otherwise every installed
    baseline that serves the task joins (a baseline costs seconds).
    """

    installed, strategy_names = list_baselines(), list_strategies()
    named = [n for n in names if n in installed and n not in strategy_names]
    strategies = [n for n in names if n not in named]
    if named:
        baselines = list(dict.fromkeys([*(baselines or []), *named]))
    return strategies, baselines


def make_arm(recipe: Recipe, name: str, scratch_strategy: str, learning_rates: dict[str, float]) -> Any:
    """The arm for ``name``: an explicit rate from ``learning_rates``; the strategy's options as the session
    gives them (the recipe's own strategy keeps its options, others their defaults); the recipe's own rate
    is the session's rule too (``arm_learning_rate``)."""

    own = name == recipe.strategy.name
    strategy = scratch_strategy if name == SCRATCH else name
    options = recipe.strategy_options if own else get_strategy(strategy).Options()
    return Arm(name=name, strategy=strategy, random_init=name == SCRATCH, options=options,
               learning_rate=learning_rates.get(name))


# ---------------------------------------------------------------------------- measuring

class PeakMemory:
    """Peak memory of one arm inside a longer process: the CUDA allocator peak, else sampled RSS.

    The process's lifetime peak (``ru_maxrss``) only grows from arm to arm; sampling the
    resident set (psutil, so it works on Linux, macOS and Windows alike) every 20 ms while the
    arm trains gives that arm's own peak, the process's baseline (libraries, data) included.
    """

    def __init__(self, device: str):
        self.device = device
        self.bytes = 0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self._stop = threading.Event()
        self._thread = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        process = psutil.Process()
        self.bytes = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.02):
                self.bytes = max(self.bytes, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            import torch

            self.bytes = int(torch.cuda.max_memory_allocated())
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


# ---------------------------------------------------------------------------- evaluation

def _metrics(task: Any, outputs: dict[str, Any], index: Any = slice(None)) -> dict[str, float]:
    return {k: float(v) for k, v in task.compute_metrics(**{k: v[index] for k, v in outputs.items()}).items()}


def class_predictions(outputs: dict[str, Any]) -> Optional[Any]:
    """Predicted class per eval row when the outputs are single-label class logits, else None."""
    logits, labels = outputs.get("logits"), outputs.get("labels")
    if logits is None or labels is None or logits.ndim != 2 or labels.ndim != 1 or labels.is_floating_point():
        return None
    return logits.argmax(dim=-1)


def class_column(table: Any) -> Optional[str]:
    """``labels`` when it holds one class index per row, to stratify on; None otherwise. Stratifying
    encodes the column's values as classes and casts them back: numbers to regress would come back
    as their class indices (a rating of -2.0 as 0.0)."""
    feature = table.features.get("labels") if "labels" in table.column_names else None
    return "labels" if str(getattr(feature, "dtype", "")).startswith(("int", "uint")) else None


def numeric_predictions(outputs: dict[str, Any]) -> Optional[Any]:
    """The predicted number per eval row when the outputs are one regression output per row, else None."""
    logits, labels = outputs.get("logits"), outputs.get("labels")
    if (logits is None or labels is None or labels.ndim != 1 or not labels.is_floating_point()
            or logits.numel() != labels.numel()):
        return None
    return logits.reshape(-1).float()


def distinct_predictions(outputs: dict[str, Any]) -> Optional[int]:
    """How many different answers an arm gave on the eval rows, where that says it learned nothing:
    the classes predicted, or 1 for a regression output that is the same number for every row
    (the constant an untrained head settles on). None where the count says nothing."""
    predicted = class_predictions(outputs)
    if predicted is not None:
        return int(predicted.unique().numel())
    values = numeric_predictions(outputs)
    if values is not None and len(values) > 1:
        spread, scale = float(values.std()), float(outputs["labels"].float().std())
        return 1 if spread <= 1e-3 * max(scale, 1e-12) else None
    return None


def constant_baselines(task: Any, outputs: dict[str, Any], train_targets: list[float], metric: str) -> dict[str, float]:
    """The metric of predicting the training rows' mean for every eval row: a regression's "majority
    class", computed with the task's own metric on the eval rows. Empty for other outputs."""
    import torch

    if numeric_predictions(outputs) is None or not train_targets:
        return {}
    labels = outputs["labels"]
    mean = sum(train_targets) / len(train_targets)
    return {"training_mean": round(_metrics(task, {"logits": torch.full((len(labels), 1), mean),
                                                   "labels": labels})[metric], 5)}


def class_baselines(task: Any, outputs: dict[str, Any], train_labels: list[int], metric: str,
                    seed: int = 0) -> dict[str, float]:
    """The metric of predicting the training set's commonest class, and of uniform random guessing.

    Computed with the task's own metric on the eval rows, so an arm's score can be read against
    them; empty for outputs that are not single-label class logits.
    """
    import torch

    if class_predictions(outputs) is None or not train_labels:
        return {}
    labels, classes = outputs["labels"], outputs["logits"].shape[1]
    majority = max(set(train_labels), key=train_labels.count)
    constant = torch.zeros(len(labels), classes)
    constant[:, majority] = 1.0
    generator = torch.Generator().manual_seed(seed)
    chance = [_metrics(task, {"logits": torch.rand(len(labels), classes, generator=generator),
                              "labels": labels})[metric] for _ in range(20)]
    return {"majority_class": round(_metrics(task, {"logits": constant, "labels": labels})[metric], 5),
            "chance": round(sum(chance) / len(chance), 5)}


def bootstrap(task: Any, metric: str, outputs_by_run: dict[tuple, dict[str, Any]], seeds: list[int],
              eval_sizes: dict[int, int], rounds: int, seed: int = 0) -> dict[tuple, list[float]]:
    """Bootstrap replicates of every run's metric, with the SAME resampled eval rows for all runs of a seed.

    Returns, per (strategy, size), ``rounds`` values of the metric averaged over seeds: sharing
    the resamples across strategies is what makes the difference between two of them paired
    (scipy.stats.bootstrap resamples one statistic at a time and cannot share rows across arms).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    indices = {s: [torch.randint(0, eval_sizes[s], (eval_sizes[s],), generator=generator) for _ in range(rounds)]
               for s in seeds}
    by_cell: dict[tuple, list[list[float]]] = {}
    for (name, size, run_seed), outputs in outputs_by_run.items():
        values = [_metrics(task, outputs, idx)[metric] for idx in indices[run_seed]]
        by_cell.setdefault((name, size), []).append(values)
    return {cell: [sum(v) / len(v) for v in zip(*per_seed)] for cell, per_seed in by_cell.items()}


def seed_interval(values: list[float]) -> Optional[list[float]]:
    """95% t-interval of the mean across seeds (scipy.stats.t); None for one seed."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return [round(mean - half, 5), round(mean + half, 5)]


# ---------------------------------------------------------------------------- entry point

# What compare writes (a folder: all below it), listed in .adaptkit-manifest.json so that --overwrite
# can tell an earlier compare from a folder of the user's (adaptkit.engine.outputs.check_output_dir).
COMPARE_FILES = ("compare.json", "table.md", "compare.png", "report.html", "trials")


class _Progress:
    """Which arm, size and trial runs, and the time left, estimated from optimizer steps done."""

    def __init__(self, work: dict[tuple, int], log: Callable[[str], None]):
        self.work, self.log = work, log
        self.total = sum(work.values())
        self.done = 0.0
        self.started = time.perf_counter()

    def trial(self, arm: str, size: Any, seed: int, trials: int, record: Any) -> None:
        share = self.work[(arm, size, seed)] / trials
        if record.past_grid:  # work the plan did not count: it adds to the total as it is done
            self.total += share
        self.done += share
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else math.nan
        score = f"validation {record.validation:.4f}" if record.validation is not None else (record.error or "")
        which = f"{record.number + 1} (past the grid's end)" if record.past_grid else f"{record.number + 1}/{trials}"
        self.log(f"compare: {arm} at {size if size is not None else 'all'} rows, seed {seed}, trial "
                 f"{which}, lr {record.learning_rate:.3g}: {record.state} {score} "
                 f"[{elapsed / 60:.1f} min elapsed, ~{left / 60:.1f} min left]")


def compare(recipe: Union[Recipe, str, Path, dict], strategies: list[str], seeds: Optional[list[int]] = None,
            sizes: Optional[list[int]] = None, output_dir: Optional[Union[str, Path]] = None,
            overwrite: bool = False, scratch_strategy: Optional[str] = None,
            learning_rates: Optional[dict[str, float]] = None, power_watts: Optional[float] = None,
            grid_g_per_kwh: Optional[float] = None, bootstrap_rounds: int = BOOTSTRAP,
            log: Callable[[str], None] = print, trials: int = DEFAULT_TRIALS,
            validation_fraction: float = VALIDATION_FRACTION, storage: Optional[str] = None,
            study_name: Optional[str] = None, baselines: Optional[list[str]] = None,
            max_minutes: Optional[float] = None, edge_rates: int = EDGE_EXTENSIONS) -> CompareReport:
    """Tune and train every arm at every size and seed, then write the table, plot, HTML and verdict.

    ``output_dir`` defaults to ``<output.dir>-compare``; an existing non-empty folder is refused
    unless ``overwrite``. ``sizes`` are training-set sizes drawn (nested, seeded) from the
    recipe's training rows; none means all of them. ``trials`` learning rates are tried per arm
    (1: the suggestion alone, no search); ``learning_rates[name]`` centres an arm's search on
    another rate. ``storage``/``study_name`` share the search through an Optuna database.
    ``baselines`` names the models trained without pretraining to judge against (None: every
    installed one that serves the task; []: none); baseline names in ``strategies`` count too.
    A rerun with the same arguments resumes the folder (finished cells reloaded, trials kept in
    the storage, the folder's own ``trials/optuna.db`` without one); ``max_minutes`` trims the
    rates each arm tries to fit the estimate printed before the first trial. ``edge_rates``: an arm
    whose best rate is strictly the best and an end of its grid tries up to that many rates past the
    end, one grid step at a time (0: the grid only; none with ``max_minutes``, whose estimate counts
    the grid); an arm still best at an end is flagged.
    """

    check_compare_arguments(seeds=seeds, sizes=sizes, learning_rates=learning_rates or {}, trials=trials,  # before
                            validation_fraction=validation_fraction, bootstrap_rounds=bootstrap_rounds,  # any work
                            storage=storage, strategies=strategies, edge_rates=edge_rates)
    recipe = as_recipe(recipe)
    with recipe_plugins(recipe):  # its plugins: allow-list and the distribution its strategy section names
        if scratch_strategy is None and SCRATCH in strategies:
            scratch_strategy = default_scratch_strategy()
        return _compare(recipe, list(strategies), seeds, sizes, output_dir, overwrite, scratch_strategy,
                        dict(learning_rates or {}), power_watts, grid_g_per_kwh, bootstrap_rounds, log, trials,
                        validation_fraction, storage, study_name, None if baselines is None else list(baselines),
                        max_minutes, edge_rates)


def _compare(recipe: Recipe, strategies: list[str], seeds: Optional[list[int]], sizes: Optional[list[int]],
             output_dir: Optional[Union[str, Path]], overwrite: bool, scratch_strategy: Optional[str],
             learning_rates: dict[str, float], power_watts: Optional[float], grid_g_per_kwh: Optional[float],
             bootstrap_rounds: int, log: Callable[[str], None], trials: int, validation_fraction: float,
             storage: Optional[str], study_name: Optional[str], baseline_names: Optional[list[str]],
             max_minutes: Optional[float] = None, edge_rates: int = EDGE_EXTENSIONS) -> CompareReport:

    started = time.perf_counter()
    strategies, baseline_names = split_arms(strategies, baseline_names)
    check_strategies(strategies, scratch_strategy)
    check_pretrained(recipe)  # no pretrained weights, nothing to judge: refused before any work
    if trials < 1:
        raise AdaptkitError(f"trials must be at least 1, got {trials}")
    state.check_max_minutes(max_minutes)
    extend = edge_rates if max_minutes is None and trials > 1 else 0  # a time budget's estimate counts the grid only
    seeds = list(seeds) if seeds else [recipe.training.seed]
    size_list: list[Optional[int]] = sorted(set(sizes)) if sizes else [None]
    folder = Path(output_dir) if output_dir else Path(str(recipe.output.dir) + "-compare")
    identity = state.compare_identity(recipe, strategies, size_list, seeds, trials, validation_fraction,
                                      scratch_strategy, learning_rates, baseline_names)
    finished = state.open_folder(folder, overwrite, identity, COMPARE_FILES, log)  # a rerun resumes
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    write_manifest(folder, "compare", COMPARE_FILES)  # --overwrite replaces only what adaptkit wrote
    study_storage = storage or state.local_storage(folder)  # trials outlive the process either way
    device = training_device(recipe.training).type
    prefix = study_name or f"adaptkit-{identity_hash(recipe_identity(recipe))[:12]}"
    arms = {name: make_arm(recipe, name, scratch_strategy, learning_rates) for name in strategies}

    runs: list[RunRecord] = []
    outputs_by_run: dict[tuple, dict[str, Any]] = {}
    eval_sizes: dict[int, int] = {}
    trivial: dict[str, float] = {}
    baseline_classes: dict[str, type] = {}
    baseline_notes: list[str] = []
    metric, metric_reason = "", ""
    task = None
    progress: Optional[_Progress] = None
    plan: Optional[Any] = None
    ranges: dict[str, str] = {}
    cells = len(strategies) * len(size_list) * len(seeds)
    for seed in seeds:
        spec = recipe.model_copy(deep=True)
        spec.training.seed = seed
        session = Session(spec, log=lambda _: None)
        task = session.task
        if not metric:
            targets = list(session.train_data["labels"]) if "labels" in session.train_data.column_names else []
            metric, metric_reason = verdict_metric(task.primary_metric, task.metric_names, targets)
            baseline_classes, baseline_notes = installed_for(task, baseline_names)
            if baseline_classes and not (aligned(session.splits.train, session.train_data)
                                         and aligned(session.splits.eval, session.eval_data)):
                baseline_notes.append(f"no baseline: task {task.name!r} drops rows while preprocessing, so a "
                                      f"baseline could not see the same rows")
                baseline_classes = {}
        # nested subsets (100 of 300 of 1000 rows); ROW_INDEX maps each preprocessed row to its raw row
        pool = session.train_data.add_column(ROW_INDEX, list(range(len(session.train_data)))).shuffle(seed=seed)
        for size in size_list:
            if size is not None and size > len(pool):
                raise AdaptkitError(f"size {size} is larger than the {len(pool)} training rows the recipe has")
        parts, raw_rows = {}, {}
        for size in size_list:
            subset = pool.select(range(size)) if size is not None else pool
            train_part, validation_part = split_validation(subset, validation_fraction, seed,
                                                           class_column(subset))
            raw_rows[size] = list(train_part[ROW_INDEX]) + list(validation_part[ROW_INDEX])
            parts[size] = (train_part.remove_columns(ROW_INDEX), validation_part.remove_columns(ROW_INDEX))
        if plan is None:  # before the first trial: what will be trained, and what it will cost here
            plan = _plan(session, spec, arms, strategies, size_list, seeds, parts, trials, finished, max_minutes,
                         log, extend)
            progress = _Progress({(a, s, sd): budget_for(len(parts[s][0]), spec.training).total_steps
                                  for a in strategies for s in size_list for sd in seeds}, log)
        eval_sizes[seed] = len(session.eval_data)
        for name in strategies:
            arm = arms[name]
            searched = search_range(arm, 1.0, trials, spec.training, plan.tried)  # steps and warm-up; no rates
            ranges.setdefault(name, "")
            tags = {size: state.cell_tag(name, size, seed, validation_fraction,
                                         state.trial_meaning(recipe, arm, searched, validation_fraction))
                    for size in size_list}
            reloaded = {size: _reload(finished.get((name, size, seed)), folder, plan.tried, extend)
                        for size in size_list}
            arm_model = None
            with PeakMemory(device) as memory:
                for size in size_list:
                    train_part, validation_part = parts[size]
                    tag = tags[size]
                    if reloaded[size] is not None:  # finished by an earlier process: its record and predictions
                        record, outputs = reloaded[size]
                        runs.append(record)
                        outputs_by_run[(name, size, seed)] = outputs
                        log(f"compare: {tag}: {metric} {record.metric:.4f} at lr {record.learning_rate:.3g} "
                            f"(reloaded from compare.json, not trained again)")
                    else:
                        if arm_model is None:
                            log(f"compare: building {name} (seed {seed})")
                            # one size: every trial takes the same steps, which the strategy may schedule
                            # over (AdaLoRA); several sizes share one model, so no single count is right
                            steps = (budget_for(len(train_part), searched.training(spec.training)).total_steps
                                     if len(size_list) == 1 else None)
                            arm_model = ArmModel(session, arm, seed, total_steps=steps)
                        result = tune_arm(session, arm, arm_model, size, seed, train_part, validation_part, trials,
                                          f"{prefix}:{tag}", study_storage, safe_join(folder / "trials", tag),
                                          on_trial=lambda record, n=name, s=size: progress.trial(
                                              n, s, seed, plan.tried, record),
                                          power_watts=power_watts, log=log, limit=plan.tried,
                                          extend=extend)
                        outputs_by_run[(name, size, seed)] = outputs = result.eval_outputs
                        chosen = result.chosen
                        runs.append(_record(
                            task, metric, name, SCRATCH if name == SCRATCH else "transfer", size, seed,
                            result.eval_outputs, train_examples=result.train_rows,
                            validation_examples=result.validation_rows, learning_rate=result.learning_rate,
                            trials=[asdict(t) for t in result.trials], trainable=result.trainable,
                            train_seconds=chosen.train_seconds, cpu_seconds=chosen.cpu_seconds,
                            energy_wh=chosen.energy_wh, search_energy_wh=round(result.search_energy_wh, 6),
                            g_co2e=round(chosen.energy_wh / 1000 * grid_intensity(grid_g_per_kwh), 5),
                            peak_memory_bytes=memory.bytes, chosen_trial=result.chosen_trial, trial_dir=tag,
                            search=result.search))
                        log(f"compare: {tag}: {metric} {runs[-1].metric:.4f} at lr "
                            f"{result.learning_rate:.3g} (chosen on {result.validation_rows} validation rows)")
                    ranges[name] = runs[-1].search.get("described", ranges[name])
                    if not trivial and "labels" in train_part.column_names:
                        trivial = class_baselines(task, outputs,
                                                  [int(v) for v in train_part["labels"] if isinstance(v, int)],
                                                  metric, seed) or constant_baselines(
                            task, outputs, [v for v in train_part["labels"] if isinstance(v, float)], metric)
                    write_manifest(folder, "compare")  # the trial files written so far are adaptkit's
                    state.save_progress(folder, identity, [asdict(r) for r in runs if r.kind != "baseline"], cells)
            del arm_model
        for name, cls in baseline_classes.items():
            for size in size_list:
                tag = f"{name}-n{size if size is not None else 'all'}-s{seed}"
                runs.append(_baseline_run(session, task, metric, name, cls, size, seed, raw_rows[size],
                                          outputs_by_run, grid_g_per_kwh, power_watts, log,
                                          safe_join(folder / "trials", tag)))

    greater = task.greater_is_better if metric == task.primary_metric else True
    names = strategies + list(baseline_classes)
    kinds = {name: next(r.kind for r in runs if r.strategy == name) for name in names}
    labels = {name: baseline_classes[name].label or name if name in baseline_classes else name for name in names}
    labels[SCRATCH] = SCRATCH_LABEL
    replicates = bootstrap(task, metric, outputs_by_run, seeds, eval_sizes, bootstrap_rounds)
    rows = [_row(name, kinds[name], size, [r for r in runs if r.strategy == name and r.size == size],
                 replicates[(name, size)], trivial, metric, greater, task.primary_metric)
            for size in size_list for name in names]
    for row in rows:
        row.search_range = next((r.search.get("described", "") for r in runs
                                 if r.strategy == row.strategy and r.size == row.size and r.search), "")
    judged = verdicts_by_size(rows, replicates, greater, metric, kinds, labels)
    per_size = judged["per_size"]
    best_without = _best_reference(per_size)
    transfer_names = [n for n in names if kinds[n] == "transfer"]
    curves = {}
    if len([s for s in size_list if s is not None]) >= 2:
        best = per_size[-1]["best_transfer"] if per_size else None
        numeric = [s for s in size_list if s is not None]
        train_sizes = [max(r.train_examples for r in rows if r.size == s and r.kind != "baseline") for s in numeric]
        # A curve through the points of an arm that did not learn (one class predicted) predicts nothing:
        # such an arm gets no curve, and no "rows needed" sentence is read off it.
        untrained = {n: [s for s in numeric if any(r.strategy == n and r.size == s and "did not learn" in r.flags
                                                   for r in rows)] for n in names}
        fitted = [n for n in names if not untrained[n]]
        points = {n: [next(r.metric for r in rows if r.strategy == n and r.size == s) for s in numeric] for n in fitted}
        samples = {n: [replicates[(n, s)] for s in numeric] for n in fitted}
        curves = curve_questions(train_sizes, points, samples, greater, SCRATCH if SCRATCH in fitted else None, best)
        if best_without and best_without != SCRATCH and best_without in fitted:
            extra = curve_questions(train_sizes, points, samples, greater, best_without, best)
            curves[best_without]["rows_to_match"] = extra[best_without].get("rows_to_match")
        for n in names:
            if untrained[n]:
                curves[n] = {"skipped": f"did not learn at {', '.join(f'{s:,}' for s in untrained[n])} rows"}
    saved = compute_saved(rows, greater, SCRATCH, transfer_names) if SCRATCH in strategies else []
    if best_without and best_without != SCRATCH:
        saved += compute_saved(rows, greater, best_without, transfer_names)
    report = CompareReport(
        output_dir=folder, metric=metric, greater_is_better=greater, strategies=names, sizes=size_list,
        seeds=seeds, rows=rows, runs=runs, verdict=judged["verdict"], verdict_detail=judged["detail"],
        per_size=per_size, compute_saved=saved, scratch_strategy=scratch_strategy or "",
        energy_method=describe_power(power_watts, device), trivial_scores=trivial, curves=curves,
        transfer_range=transfer_range(per_size), practical_verdict=judged["practical_verdict"],
        headline=judged["headline"], metric_reason=metric_reason, arm_kinds=kinds, arm_labels=labels,
        baseline_notes=baseline_notes,
        search={"trials": trials, "tried": plan.tried if plan else trials,
                "grid": "log-spaced around each arm's suggestion: a factor of 3 either side from pretrained "
                        "weights, of 6 from random weights (tuning.search_range)"
                        + (f"; up to {extend} rate(s) past an end of the grid where the best rate lies, one grid "
                           f"step at a time" if extend else "; not widened past its ends (--max-minutes)"),
                "extension_limit": extend,
                "ranges": ranges, "validation_fraction": validation_fraction,
                "storage": storage or "trials/optuna.db (this folder's own)", "study_prefix": prefix,
                "pruner": "successive halving (reduction factor 3) on the validation metric after each epoch",
                "plan": plan.to_dict() if plan else None},
        seconds=round(time.perf_counter() - started, 2),
        notes=_notes(scratch_strategy, learning_rates, metric, bootstrap_rounds, seeds, trials, validation_fraction,
                     baseline_classes, ranges, plan.tried if plan else trials, extend))
    write_json(folder / "compare.json", report.to_dict() | {"identity": identity, "complete": True})
    (folder / "table.md").write_text(markdown_table(report))
    plot(report, folder / "compare.png")
    (folder / "report.html").write_text(html_report(report, folder / "compare.png"))
    write_manifest(folder, "compare", COMPARE_FILES)
    return report


def _plan(session: Any, spec: Recipe, arms: dict[str, Any], strategies: list[str], size_list: list[Optional[int]],
          seeds: list[int], parts: dict[Any, tuple], trials: int, finished: dict[tuple, dict[str, Any]],
          max_minutes: Optional[float], log: Callable[[str], None], extend: int) -> Any:
    """The cells to train, their optimizer steps and estimated time (one timed step per strategy), trimmed
    to ``max_minutes``; printed before the first trial."""

    training = spec.training

    def padded(data: Any) -> int:
        """Padded tokens the loop feeds for ``data`` in one pass (rows when the task has no lengths)."""
        if "length" not in data.column_names:
            return len(data)
        return state.padded_tokens(list(data["length"]), training.batch_size, training.group_by_length)

    eval_tokens = padded(session.eval_data)
    todo, reused = [], 0
    for name in strategies:
        searched = search_range(arms[name], 1.0, trials, training)
        for size in size_list:
            train_part, validation_part = parts[size]
            budget = budget_for(len(train_part), searched.training(training))
            step_tokens = padded(train_part) / budget.updates_per_epoch  # an average step's padded tokens
            forward = budget.epochs * padded(validation_part) + eval_tokens
            for seed in seeds:
                if (name, size, seed) in finished:
                    reused += 1
                else:
                    todo.append([arms[name], size, seed, None, budget.total_steps, step_tokens, forward])
    base = session.build_base() if todo else None
    for cell in todo:  # the grid each arm will try: its suggestion as ArmModel asks for it
        arm = cell[0]
        centre = arm_learning_rate(session, arm, session.strategy(arm.strategy, arm.options), session.context(base))
        cell[3] = search_range(arm, centre, trials, training)
    timed = state.time_steps(session, base, {cell[0].strategy for cell in todo}, log)
    del base
    plan = state.make_plan(todo, trials, timed, reused)
    plan.lines = state.describe(plan, [n for n in strategies if any(a.name == n for a, *_ in todo)], size_list,
                                seeds, {n: arms[n].strategy for n in strategies}, extend)
    for line in plan.lines:
        log(line)
    said = state.trim(plan, max_minutes)  # may refuse: the plan was said first
    for line in said:
        log(line)
    plan.lines += said
    return plan


def _reload(run: Optional[dict[str, Any]], folder: Path, tried: int,
            extend: int) -> Optional[tuple[RunRecord, dict[str, Any]]]:
    """A finished cell's record and eval predictions from an earlier process, or None to train it
    (not finished, tried fewer rates or fewer past an end than this run would, or its predictions are
    not in this folder). Retrained, it reuses the study's settled trials and trains only the new rates."""
    import torch

    search = (run or {}).get("search", {})
    if not run or len(search.get("grid", [])) < tried or search.get("extension_limit", 0) < extend:
        return None
    try:
        outputs = torch.load(folder / "trials" / run["trial_dir"] / f"trial-{run['chosen_trial']}.pt",
                             weights_only=True)
        known = {f.name for f in dataclasses.fields(RunRecord)}
        return RunRecord(**{k: v for k, v in run.items() if k in known}), outputs
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError):
        return None


def _best_reference(per_size: list[dict[str, Any]]) -> Optional[str]:
    """The arm the largest judged size measured transfer against, among those without pretraining."""
    sides = [p["versus_best_without_pretraining"] for p in per_size if "versus_best_without_pretraining" in p]
    return sides[-1]["reference"] if sides else None


def _record(task: Any, metric: str, name: str, kind: str, size: Optional[int], seed: int,
            outputs: dict[str, Any], **measured: Any) -> RunRecord:
    """A RunRecord from an arm's eval outputs: every metric the task computes, the verdict's as ``metric``."""
    metrics = _metrics(task, outputs)
    return RunRecord(strategy=name, kind=kind, size=size, seed=seed, metric=metrics[metric],
                     metrics={k: round(v, 5) for k, v in metrics.items()},
                     predicted_classes=distinct_predictions(outputs), **measured)


def _baseline_run(session: Any, task: Any, metric: str, name: str, cls: type, size: Optional[int], seed: int,
                  rows: list[int], outputs_by_run: dict[tuple, dict[str, Any]], grid_g_per_kwh: Optional[float],
                  power_watts: Optional[float], log: Callable[[str], None], folder: Path) -> RunRecord:
    """Train baseline ``name`` on exactly the rows the transfer arms got at ``size`` (their training and
    validation rows together: the baseline chooses its regularisation by cross-validation on them)."""
    import torch


    encoded = session.train_data.select(rows)
    train = BaselineRows(rows=session.splits.train.select(rows), encoded=encoded, targets=targets_of(encoded))
    evaluate = BaselineRows(rows=session.splits.eval, encoded=session.eval_data)
    labels = torch.tensor(session.eval_data["labels"])
    result = train_baseline(cls, task, metric, seed, train, evaluate, labels, power_watts)
    outputs_by_run[(name, size, seed)] = result.outputs
    folder.mkdir(parents=True, exist_ok=True)  # its eval outputs beside the arms' chosen trials, for later reading
    torch.save({k: v.cpu() for k, v in result.outputs.items()}, folder / BASELINE_OUTPUTS)
    record = _record(task, metric, name, "baseline", size, seed, result.outputs, train_examples=len(rows),
                     validation_examples=0, learning_rate=0.0, trials=[], trainable=0,
                     train_seconds=result.seconds, cpu_seconds=result.cpu_seconds, energy_wh=result.energy_wh,
                     search_energy_wh=result.energy_wh,
                     g_co2e=round(result.energy_wh / 1000 * grid_intensity(grid_g_per_kwh), 5),
                     peak_memory_bytes=0, details=result.summary)
    log(f"compare: {name}-n{size if size is not None else 'all'}-s{seed}: {metric} {record.metric:.4f} "
        f"({', '.join(f'{k} {v}' for k, v in result.summary.items())}; {result.seconds:.1f} s)")
    return record


def _row(name: str, kind: str, size: Optional[int], cell: list[RunRecord], replicates: list[float],
         baselines: dict[str, float], metric: str, greater: bool, primary: str) -> Row:
    low, high = percentile_interval(replicates)
    values = [r.metric for r in cell]
    mean = sum(values) / len(values)
    # the other one beside the verdict's
    second = SECONDARY_METRICS.get(metric) or (SECONDARY_METRIC if metric != SECONDARY_METRIC else primary)
    secondary = [r.metrics[second] for r in cell if second in r.metrics and second != metric]
    flags = []
    if all(r.predicted_classes == 1 for r in cell):
        flags.append("did not learn")
    if any(r.search.get("at_edge") for r in cell):  # its search found a bound on its rate, not the rate
        flags.append(EDGE_FLAG)
    for key, words in (("majority_class", "the majority class"), ("training_mean", "predicting the training mean")):
        constant = baselines.get(key)
        if constant is not None and (high <= constant if greater else low >= constant):
            flags.append(f"not above {words}")
    return Row(strategy=name, size=size, train_examples=cell[0].train_examples, metric=round(mean, 5),
               ci_low=round(low, 5), ci_high=round(high, 5), trainable=cell[0].trainable,
               wall_seconds=round(sum(r.train_seconds for r in cell) / len(cell), 2),
               peak_memory_bytes=max(r.peak_memory_bytes for r in cell),
               energy_wh=round(sum(r.energy_wh for r in cell) / len(cell), 6),
               g_co2e=round(sum(r.g_co2e for r in cell) / len(cell), 5), seeds=len(cell),
               secondary=round(sum(secondary) / len(secondary), 5) if secondary else None,
               learning_rates=[r.learning_rate for r in cell],
               search_energy_wh=round(sum(r.search_energy_wh for r in cell) / len(cell), 6),
               seed_interval=seed_interval(values), flags=flags, kind=kind,
               secondary_metric=second if secondary else None)


def _notes(scratch_strategy: Optional[str], learning_rates: dict[str, float], metric: str, rounds: int, seeds: list[int],
           trials: int, validation_fraction: float, baselines: dict[str, type], ranges: Optional[dict[str, str]] = None,
           tried: Optional[int] = None, extend: int = 0) -> list[str]:
    ranges = ranges or {}
    return [
        *([f"{SCRATCH}: the same architecture from random weights (model.init: random), trained with strategy "
           f"{scratch_strategy!r}; random weights get a search range of their own, centred on "
           f"{learning_rates.get(SCRATCH, SCRATCH_LEARNING_RATE):g} (larger steps, a wider grid, warm-up and the "
           f"small-data step floor)"] if scratch_strategy else []),
        *[f"{name}: range tried: {described}" for name, described in ranges.items() if described],
        *([f"--max-minutes: {tried} of {trials} learning rates per arm (the grid's extremes dropped first)"]
          if tried is not None and tried < trials else []),
        *[f"{name}: {cls.description or cls.label}; trained on the same rows as the transfer arms at each size "
          f"(their training and validation rows together), never on a pretrained weight"
          for name, cls in baselines.items()],
        f"every arm: {trials} learning rate(s) log-spaced around its suggestion (the recipe's rate for its own "
        f"strategy, else the strategy's default), chosen on {validation_fraction:.0%} of the arm's rows held out "
        f"as validation; train examples in the table exclude them; the best epoch's weights are kept"
        + (f"; a best rate at an end of the grid is followed past it (up to {extend} more rate(s)), and an arm "
           f"still best at an end is flagged \"{EDGE_FLAG}\"" if extend else ""),
        "budget: the recipe's epochs, raised to at least training.min_steps optimizer steps on small data",
        f"metric: {metric} on the eval rows (never used to choose); 95% CI from {rounds} bootstrap "
        f"resamples of the eval rows (averaged over seeds)",
        "verdicts: paired bootstrap of (best transfer arm - scratch) and of (best transfer arm - the best arm "
        "without pretraining: scratch or a baseline) on the same resampled rows, per size",
        *(["one seed: the intervals cover which eval rows were drawn, not training randomness; pass several "
           "seeds (--seeds 1,2,3) for an interval across seeds too"] if len(seeds) == 1 else []),
        "energy: the chosen trial's training, measured (see energy method); the whole search costs the "
        "search_energy_wh figure; a baseline's is its whole fit, cross-validation included",
        "peak memory: the CUDA allocator peak on a GPU; on a CPU the process's resident memory sampled every "
        "20 ms while the arm trained (its baseline included)",
    ]


def parse_list(text: Optional[str], kind: type = str) -> Optional[list]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` for the CLI; empty or None -> None."""
    if not text:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AdaptkitError(f"expected a comma-separated list of {kind.__name__} values, got {text!r}") from None


def load_report(folder: Union[str, Path]) -> dict[str, Any]:
    """compare.json of a finished comparison, as a dict."""
    return json.loads((Path(folder) / "compare.json").read_text())

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
eval predictions, which processes sharing an Optuna storage read from each other).
"""
from __future__ import annotations

import base64
import functools
import html
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from adaptkit.errors import AdaptkitError
from adaptkit.recipe.schema import Recipe
from adaptkit.judge.curves import percentile_interval
from adaptkit.judge.tuning import DEFAULT_TRIALS, SCRATCH, VALIDATION_FRACTION

SCRATCH_LEARNING_RATE = 1e-4
BOOTSTRAP = 1000
VERDICTS = ("positive transfer", "no clear difference", "negative transfer")
SECONDARY_METRIC = "macro_f1"


@dataclass
class RunRecord:
    """One tuned arm at one size and seed: the chosen trial's eval metrics and what the search cost."""

    strategy: str
    size: Optional[int]
    seed: int
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
    baselines: dict[str, float] = field(default_factory=dict)  # chance and majority-class scores
    curves: dict[str, Any] = field(default_factory=dict)
    transfer_range: str = ""
    search: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        return data


# ---------------------------------------------------------------------------- planning

def default_scratch_strategy() -> str:
    """The strategy that trains the random-weight baseline unless told otherwise: an installed one that
    declares ``trains_every_weight`` (the first by name when several do). The core names none: any
    plugin may provide it, and ``scratch_strategy`` / ``--scratch-strategy`` chooses another."""
    from adaptkit import list_strategies

    candidates = sorted(name for name, cls in list_strategies().items() if cls.trains_every_weight)
    if not candidates:
        raise AdaptkitError(f"the {SCRATCH!r} arm needs a strategy that trains every weight, and no installed "
                            f"strategy declares trains_every_weight; name one with scratch_strategy "
                            f"(--scratch-strategy) or install one")
    return candidates[0]


def check_strategies(strategies: list[str], scratch_strategy: str) -> None:
    """Every name is installed (or ``scratch``); an unknown one is an error naming the closest."""
    from adaptkit import get_strategy, list_strategies
    from adaptkit.recipe.loading import closest

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


def make_arm(recipe: Recipe, name: str, scratch_strategy: str, learning_rates: dict[str, float]) -> Any:
    """The arm for ``name``: the recipe's own strategy keeps its options and rate; others their defaults."""
    from adaptkit import get_strategy
    from adaptkit.judge.tuning import Arm

    own = name == recipe.strategy.name
    strategy = scratch_strategy if name == SCRATCH else name
    options = recipe.strategy_options if own else get_strategy(strategy).Options()
    rate = learning_rates.get(name) or (recipe.training.learning_rate if own else None)
    return Arm(name=name, strategy=strategy, random_init=name == SCRATCH, options=options, learning_rate=rate)


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
        import gc
        import threading

        import psutil

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


def judge(rows: list[Row], replicates: dict[tuple, list[float]], greater: bool, metric: str
          ) -> tuple[str, str, list[dict[str, Any]]]:
    """Per size: best transfer arm minus scratch, paired-bootstrap 95% CI; the verdict at the largest size.

    An arm flagged "did not learn" is never the best transfer arm; when scratch did not learn the
    size's entry says so, since beating an untrained baseline shows little.
    """
    per_size = []
    sizes = sorted({r.size for r in rows}, key=lambda s: (s is None, s or 0))
    for size in sizes:
        cells = {r.strategy: r for r in rows if r.size == size}
        transfer = [r for name, r in cells.items() if name != SCRATCH]
        if SCRATCH not in cells or not transfer:
            continue
        learned = [r for r in transfer if "did not learn" not in r.flags] or transfer
        best = max(learned, key=lambda r: r.metric if greater else -r.metric)
        sign = 1.0 if greater else -1.0
        diffs = [sign * (a - b) for a, b in zip(replicates[(best.strategy, size)], replicates[(SCRATCH, size)])]
        low, high = percentile_interval(diffs)
        point = sign * (best.metric - cells[SCRATCH].metric)
        verdict = VERDICTS[0] if low > 0 else VERDICTS[2] if high < 0 else VERDICTS[1]
        per_size.append({"size": size, "train_examples": best.train_examples, "best_transfer": best.strategy,
                         "best_metric": best.metric, "scratch_metric": cells[SCRATCH].metric,
                         "difference": round(point, 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
                         "verdict": verdict, "scratch_flags": list(cells[SCRATCH].flags),
                         "best_flags": list(best.flags)})
    if not per_size:
        return "not judged", "compare needs 'scratch' and at least one transfer strategy for a verdict", per_size
    last = per_size[-1]
    better = "higher" if greater else "lower"
    detail = (f"At {last['train_examples']} training examples the best transfer arm, {last['best_transfer']}, "
              f"scores {metric} {last['best_metric']:.4f} against {last['scratch_metric']:.4f} from scratch: "
              f"a difference of {last['difference']:+.4f} ({better} is better), paired-bootstrap 95% CI "
              f"[{last['ci_low']:+.4f}, {last['ci_high']:+.4f}]. ")
    detail += {"positive transfer": "The whole interval is above zero: the pretrained weights help.",
               "negative transfer": "The whole interval is below zero: the pretrained weights hurt; training "
                                    "from scratch is better on this data.",
               "no clear difference": "The interval contains zero: on this evidence the pretrained weights neither "
                                      "clearly help nor clearly hurt."}[last["verdict"]]
    if last["scratch_flags"]:
        detail += (f" Note: scratch {' and '.join(last['scratch_flags'])} at this size, so the comparison is "
                   f"against a baseline that did not train.")
    if last["best_flags"]:
        detail += f" Note: {last['best_transfer']} {' and '.join(last['best_flags'])}."
    return last["verdict"], detail, per_size


def transfer_range(per_size: list[dict[str, Any]]) -> str:
    """One sentence naming the sizes where transfer paid and where it stopped paying."""
    if not per_size:
        return ""
    paying = [p["train_examples"] for p in per_size if p["verdict"] == VERDICTS[0]]
    hurting = [p["train_examples"] for p in per_size if p["verdict"] == VERDICTS[2]]
    sizes = [p["train_examples"] for p in per_size]
    if len(paying) == len(sizes):
        return f"Transfer pays at every size tried ({sizes[0]:,} to {sizes[-1]:,} training rows)."
    parts = []
    if paying:
        parts.append("Transfer pays at " + ", ".join(f"{n:,}" for n in paying) + " training rows")
        after = [n for n in sizes if n > max(paying)]
        if after and not any(n > after[0] for n in paying):
            parts.append(f"it stops paying from {after[0]:,} rows (no clear difference from scratch there)")
    else:
        parts.append("Transfer does not clearly pay at any size tried")
    if hurting:
        parts.append("it hurts at " + ", ".join(f"{n:,}" for n in hurting) + " rows")
    return "; ".join(parts) + "."


def compute_saved(rows: list[Row], greater: bool) -> list[dict[str, Any]]:
    """Energy and rows saved against training from scratch to the same score, stated only when positive.

    For each transfer arm: the smallest size at which it matches scratch's best score, and the
    measured energy of that one training run against scratch's run that reached its best.
    When the arm matches scratch already at the smallest size tried, the rows saved are a lower
    bound. A "saving" that is not positive is reported as no saving, never as a negative one.
    """
    scratch = [r for r in rows if r.strategy == SCRATCH]
    if not scratch:
        return []
    best_scratch = max(scratch, key=lambda r: r.metric if greater else -r.metric)
    out = []
    for name in sorted({r.strategy for r in rows} - {SCRATCH}):
        curve = sorted((r for r in rows if r.strategy == name), key=lambda r: r.train_examples)
        reaching = [r for r in curve if (r.metric >= best_scratch.metric if greater else r.metric <= best_scratch.metric)]
        if not reaching:
            out.append({"strategy": name, "matches_scratch": False,
                        "note": f"never reached scratch's best {best_scratch.metric:.4f} at the sizes tried"})
            continue
        first = reaching[0]
        saved = best_scratch.energy_wh - first.energy_wh
        out.append({"strategy": name, "matches_scratch": True, "scratch_best_metric": best_scratch.metric,
                    "scratch_examples": best_scratch.train_examples, "scratch_energy_wh": best_scratch.energy_wh,
                    "examples_needed": first.train_examples, "energy_wh": first.energy_wh,
                    "energy_saved_wh": round(saved, 5) if saved > 0 else None,
                    "energy_ratio": round(first.energy_wh / best_scratch.energy_wh, 4) if best_scratch.energy_wh else None,
                    "examples_saved": max(best_scratch.train_examples - first.train_examples, 0),
                    "lower_bound": first.train_examples == curve[0].train_examples})
    return out


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
        self.done += self.work[(arm, size, seed)] / trials
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else math.nan
        score = f"validation {record.validation:.4f}" if record.validation is not None else (record.error or "")
        self.log(f"compare: {arm} at {size if size is not None else 'all'} rows, seed {seed}, trial "
                 f"{record.number + 1}/{trials}, lr {record.learning_rate:.3g}: {record.state} {score} "
                 f"[{elapsed / 60:.1f} min elapsed, ~{left / 60:.1f} min left]")


def compare(recipe: Union[Recipe, str, Path, dict], strategies: list[str], seeds: Optional[list[int]] = None,
            sizes: Optional[list[int]] = None, output_dir: Optional[Union[str, Path]] = None,
            overwrite: bool = False, scratch_strategy: Optional[str] = None,
            learning_rates: Optional[dict[str, float]] = None, power_watts: Optional[float] = None,
            grid_g_per_kwh: Optional[float] = None, bootstrap_rounds: int = BOOTSTRAP,
            log: Callable[[str], None] = print, trials: int = DEFAULT_TRIALS,
            validation_fraction: float = VALIDATION_FRACTION, storage: Optional[str] = None,
            study_name: Optional[str] = None) -> CompareReport:
    """Tune and train every arm at every size and seed, then write the table, plot, HTML and verdict.

    ``output_dir`` defaults to ``<output.dir>-compare``; an existing non-empty folder is refused
    unless ``overwrite``. ``sizes`` are training-set sizes drawn (nested, seeded) from the
    recipe's training rows; none means all of them. ``trials`` learning rates are tried per arm
    (1: the suggestion alone, no search); ``learning_rates[name]`` centres an arm's search on
    another rate. ``storage``/``study_name`` share the search through an Optuna database.
    """
    from adaptkit.engine.session import as_recipe
    from adaptkit.plugin.registry import for_recipe

    recipe = as_recipe(recipe)
    with for_recipe(recipe):  # its plugins: allow-list and the distribution its strategy section names
        if scratch_strategy is None and SCRATCH in strategies:
            scratch_strategy = default_scratch_strategy()
        return _compare(recipe, list(strategies), seeds, sizes, output_dir, overwrite, scratch_strategy,
                        dict(learning_rates or {}), power_watts, grid_g_per_kwh, bootstrap_rounds, log, trials,
                        validation_fraction, storage, study_name)


def _compare(recipe: Recipe, strategies: list[str], seeds: Optional[list[int]], sizes: Optional[list[int]],
             output_dir: Optional[Union[str, Path]], overwrite: bool, scratch_strategy: Optional[str],
             learning_rates: dict[str, float], power_watts: Optional[float], grid_g_per_kwh: Optional[float],
             bootstrap_rounds: int, log: Callable[[str], None], trials: int, validation_fraction: float,
             storage: Optional[str], study_name: Optional[str]) -> CompareReport:
    import torch

    from adaptkit.engine.budget import budget_for
    from adaptkit.engine.checkpoint import identity_hash, recipe_identity
    from adaptkit.engine.data import split_validation
    from adaptkit.judge.energy import describe_power, grid_intensity
    from adaptkit.engine.outputs import check_output_dir, safe_join, write_json, write_manifest
    from adaptkit.engine.session import Session
    from adaptkit.judge.tuning import ArmModel, tune_arm

    started = time.perf_counter()
    check_strategies(strategies, scratch_strategy)
    if trials < 1:
        raise AdaptkitError(f"trials must be at least 1, got {trials}")
    seeds = list(seeds) if seeds else [recipe.training.seed]
    size_list: list[Optional[int]] = sorted(set(sizes)) if sizes else [None]
    folder = Path(output_dir) if output_dir else Path(str(recipe.output.dir) + "-compare")
    check_output_dir(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, "compare", COMPARE_FILES)  # --overwrite replaces only what adaptkit wrote
    device = "cuda" if torch.cuda.is_available() and recipe.training.device != "cpu" else "cpu"
    prefix = study_name or f"adaptkit-{identity_hash(recipe_identity(recipe))[:12]}"
    arms = {name: make_arm(recipe, name, scratch_strategy, learning_rates) for name in strategies}

    runs: list[RunRecord] = []
    outputs_by_run: dict[tuple, dict[str, Any]] = {}
    eval_sizes: dict[int, int] = {}
    baselines: dict[str, float] = {}
    task = None
    progress: Optional[_Progress] = None
    for seed in seeds:
        spec = recipe.model_copy(deep=True)
        spec.training.seed = seed
        session = Session(spec, log=lambda _: None)
        task = session.task
        pool = session.train_data.shuffle(seed=seed)  # nested subsets: 100 of 300 of 1000 rows
        for size in size_list:
            if size is not None and size > len(pool):
                raise AdaptkitError(f"size {size} is larger than the {len(pool)} training rows the recipe has")
        parts = {}
        for size in size_list:
            subset = pool.select(range(size)) if size is not None else pool
            parts[size] = split_validation(subset, validation_fraction, seed,
                                           "labels" if "labels" in subset.column_names else None)
        if progress is None:
            progress = _Progress({(a, s, sd): budget_for(len(parts[s][0]), spec.training).total_steps
                                  for a in strategies for s in size_list for sd in seeds}, log)
        eval_sizes[seed] = len(session.eval_data)
        for name in strategies:
            arm = arms[name]
            log(f"compare: building {name} (seed {seed})")
            with PeakMemory(device) as memory:
                workbench = ArmModel(session, arm, seed, SCRATCH_LEARNING_RATE)
                for size in size_list:
                    train_part, validation_part = parts[size]
                    tag = f"{name}-n{size if size is not None else 'all'}-s{seed}"
                    result = tune_arm(session, arm, workbench, size, seed, train_part, validation_part, trials,
                                      f"{prefix}:{tag}", storage, safe_join(folder / "trials", tag),
                                      on_trial=lambda record, n=name, s=size: progress.trial(n, s, seed, trials,
                                                                                             record),
                                      power_watts=power_watts)
                    if not baselines and "labels" in train_part.column_names:
                        baselines = class_baselines(task, result.eval_outputs,
                                                    [int(v) for v in train_part["labels"]
                                                     if isinstance(v, int)], task.primary_metric, seed)
                    outputs_by_run[(name, size, seed)] = result.eval_outputs
                    metrics = _metrics(task, result.eval_outputs)
                    predicted = class_predictions(result.eval_outputs)
                    chosen = result.chosen
                    runs.append(RunRecord(
                        strategy=name, size=size, seed=seed, train_examples=result.train_rows,
                        validation_examples=result.validation_rows, metric=metrics[task.primary_metric],
                        metrics={k: round(v, 5) for k, v in metrics.items()}, learning_rate=result.learning_rate,
                        trials=[asdict(t) for t in result.trials], trainable=result.trainable,
                        train_seconds=chosen.train_seconds, cpu_seconds=chosen.cpu_seconds,
                        energy_wh=chosen.energy_wh, search_energy_wh=round(result.search_energy_wh, 6),
                        g_co2e=round(chosen.energy_wh / 1000 * grid_intensity(grid_g_per_kwh), 5),
                        peak_memory_bytes=memory.bytes,
                        predicted_classes=None if predicted is None else int(predicted.unique().numel())))
                    log(f"compare: {tag}: {task.primary_metric} {runs[-1].metric:.4f} at lr "
                        f"{result.learning_rate:.3g} (chosen on {result.validation_rows} validation rows)")
                    write_manifest(folder, "compare")  # the trial files written so far are adaptkit's
            del workbench

    metric, greater = task.primary_metric, task.greater_is_better
    replicates = bootstrap(task, metric, outputs_by_run, seeds, eval_sizes, bootstrap_rounds)
    rows = [_row(name, size, [r for r in runs if r.strategy == name and r.size == size], replicates[(name, size)],
                 baselines, metric, greater)
            for size in size_list for name in strategies]
    verdict, detail, per_size = judge(rows, replicates, greater, metric)
    curves = {}
    if len([s for s in size_list if s is not None]) >= 2:
        from adaptkit.judge.curves import curve_questions

        best = per_size[-1]["best_transfer"] if per_size else None
        numeric = [s for s in size_list if s is not None]
        train_sizes = [next(r.train_examples for r in rows if r.size == s) for s in numeric]
        curves = curve_questions(
            train_sizes, {n: [next(r.metric for r in rows if r.strategy == n and r.size == s) for s in numeric]
                          for n in strategies},
            {n: [replicates[(n, s)] for s in numeric] for n in strategies}, greater,
            SCRATCH if SCRATCH in strategies else None, best)
    report = CompareReport(
        output_dir=folder, metric=metric, greater_is_better=greater, strategies=strategies, sizes=size_list,
        seeds=seeds, rows=rows, runs=runs, verdict=verdict, verdict_detail=detail, per_size=per_size,
        compute_saved=compute_saved(rows, greater), scratch_strategy=scratch_strategy or "",
        energy_method=describe_power(power_watts, device), baselines=baselines, curves=curves,
        transfer_range=transfer_range(per_size),
        search={"trials": trials, "grid": "log-spaced from suggestion/3 to suggestion*3",
                "validation_fraction": validation_fraction, "storage": storage, "study_prefix": prefix,
                "pruner": "successive halving (reduction factor 3) on the validation metric after each epoch"},
        seconds=round(time.perf_counter() - started, 2),
        notes=_notes(scratch_strategy, learning_rates, metric, bootstrap_rounds, seeds, trials, validation_fraction))
    write_json(folder / "compare.json", report.to_dict())
    (folder / "table.md").write_text(markdown_table(report))
    plot(report, folder / "compare.png")
    (folder / "report.html").write_text(html_report(report, folder / "compare.png"))
    write_manifest(folder, "compare", COMPARE_FILES)
    return report


def _row(name: str, size: Optional[int], cell: list[RunRecord], replicates: list[float],
         baselines: dict[str, float], metric: str, greater: bool) -> Row:
    low, high = percentile_interval(replicates)
    values = [r.metric for r in cell]
    mean = sum(values) / len(values)
    secondary = [r.metrics[SECONDARY_METRIC] for r in cell if SECONDARY_METRIC in r.metrics and SECONDARY_METRIC != metric]
    flags = []
    if all(r.predicted_classes == 1 for r in cell):
        flags.append("did not learn")
    majority = baselines.get("majority_class")
    if majority is not None and (high <= majority if greater else low >= majority):
        flags.append("not above the majority class")
    return Row(strategy=name, size=size, train_examples=cell[0].train_examples, metric=round(mean, 5),
               ci_low=round(low, 5), ci_high=round(high, 5), trainable=cell[0].trainable,
               wall_seconds=round(sum(r.train_seconds for r in cell) / len(cell), 2),
               peak_memory_bytes=max(r.peak_memory_bytes for r in cell),
               energy_wh=round(sum(r.energy_wh for r in cell) / len(cell), 6),
               g_co2e=round(sum(r.g_co2e for r in cell) / len(cell), 5), seeds=len(cell),
               secondary=round(sum(secondary) / len(secondary), 5) if secondary else None,
               learning_rates=[r.learning_rate for r in cell],
               search_energy_wh=round(sum(r.search_energy_wh for r in cell) / len(cell), 6),
               seed_interval=seed_interval(values), flags=flags)


def _notes(scratch_strategy: Optional[str], learning_rates: dict[str, float], metric: str, rounds: int, seeds: list[int],
           trials: int, validation_fraction: float) -> list[str]:
    return [
        *([f"{SCRATCH}: the same architecture from random weights (model.init: random), trained with strategy "
           f"{scratch_strategy!r}; its search is centred on {learning_rates.get(SCRATCH, SCRATCH_LEARNING_RATE):g}"]
          if scratch_strategy else []),
        f"every arm: {trials} learning rate(s) log-spaced around its suggestion (the recipe's rate for its own "
        f"strategy, else the strategy's default), chosen on {validation_fraction:.0%} of the arm's rows held out "
        f"as validation; train examples in the table exclude them; the best epoch's weights are kept",
        "budget: the recipe's epochs, raised to at least training.min_steps optimizer steps on small data",
        f"metric: the task's {metric} on the eval rows (never used to choose); 95% CI from {rounds} bootstrap "
        f"resamples of the eval rows (averaged over seeds)",
        "verdict: paired bootstrap of (best transfer arm - scratch) on the same resampled rows, per size",
        *(["one seed: the intervals cover which eval rows were drawn, not training randomness; pass several "
           "seeds (--seeds 1,2,3) for an interval across seeds too"] if len(seeds) == 1 else []),
        "energy: the chosen trial's training, measured (see energy method); the whole search costs the "
        "search_energy_wh figure",
        "peak memory: the CUDA allocator peak on a GPU; on a CPU the process's resident memory sampled every "
        "20 ms while the arm trained (its baseline included)",
    ]


# ---------------------------------------------------------------------------- outputs

def _flags(row: Row) -> str:
    return f" ({'; '.join(row.flags)})" if row.flags else ""


def markdown_table(report: CompareReport) -> str:
    """The results table as Markdown, ready to paste into a README."""
    second = any(r.secondary is not None for r in report.rows)
    seeds = any(r.seed_interval for r in report.rows)
    lines = [f"| arm | train rows | {report.metric} (95% CI) |" + (" across seeds (95% CI) |" if seeds else "")
             + (f" {SECONDARY_METRIC} |" if second else "")
             + " chosen lr | trainable params | train s | peak MiB | energy Wh (run / search) |",
             "|---|---:|---:|" + ("---:|" if seeds else "") + ("---:|" if second else "") + "---:|---:|---:|---:|---:|"]
    for r in report.rows:
        lines.append(f"| {r.strategy}{_flags(r)} | {r.train_examples:,} | {r.metric:.4f} [{r.ci_low:.3f}, "
                     f"{r.ci_high:.3f}] |"
                     + (f" [{r.seed_interval[0]:.3f}, {r.seed_interval[1]:.3f}] |" if seeds and r.seed_interval
                        else " - |" if seeds else "")
                     + (f" {r.secondary:.4f} |" if second and r.secondary is not None else
                        " - |" if second else "")
                     + f" {', '.join(f'{x:.2g}' for x in r.learning_rates)} | {r.trainable:,} | "
                       f"{r.wall_seconds:.1f} | {r.peak_memory_bytes / 2**20:,.0f} | {r.energy_wh:.4f} / "
                       f"{r.search_energy_wh:.4f} |")
    lines += [""]
    if report.baselines:
        lines.append(f"Baselines on the eval rows: majority class {report.baselines['majority_class']:.4f}, "
                     f"random guessing {report.baselines['chance']:.4f}.")
    lines += ["", f"**Verdict: {report.verdict}.** {report.verdict_detail}", ""]
    if report.transfer_range:
        lines += [report.transfer_range, ""]
    lines += [f"- {line}" for line in curve_sentences(report)] + [""]
    return "\n".join(lines)


def curve_sentences(report: CompareReport) -> list[str]:
    """The learning-curve answers in words: rows scratch would need, gain from doubling the data."""
    out = []
    for name, curve in report.curves.items():
        match = curve.get("rows_to_match")
        if match:
            if match["rows"] is None:
                out.append(f"Scratch's learning curve does not fall toward {match['target_arm']}'s "
                           f"{match['target_metric']:.4f} at {match['at_rows']:,} rows: no amount of data is "
                           f"predicted to close the gap from these points.")
            elif match["rows"] <= match["at_rows"]:
                out.append(f"Scratch's fitted curve already reaches {match['target_arm']}'s "
                           f"{match['target_metric']:.4f} within the sizes tried (about {match['rows']:,} rows): "
                           f"transfer saves no data here.")
            elif match["rows"] > 1000 * match["at_rows"]:
                out.append(f"Scratch's learning curve barely falls: matching {match['target_arm']}'s "
                           f"{match['target_metric']:.4f} at {match['at_rows']:,} rows would take more than 1,000 "
                           f"times as many rows, far beyond anything measured here: in practice, never.")
            else:
                low, high = match["ci"]
                span = (f"95% CI {f'{low:,}' if low is not None else 'unbounded'} to "
                        f"{f'{high:,}' if high is not None else 'unbounded'}")
                out.append(f"Scratch would need about {match['rows']:,} training rows ({span}) to match "
                           f"{match['target_arm']}'s {match['target_metric']:.4f} at {match['at_rows']:,} rows"
                           + (" (an extrapolation far beyond the sizes tried)." if match["extrapolated"] else "."))
        if curve.get("doubling_gain") is not None:
            low, high = curve["doubling_gain_ci"]
            out.append(f"{name}: doubling the largest training set is expected to change {report.metric} by "
                       f"{curve['doubling_gain']:+.3f} (95% CI {low:+.3f} to {high:+.3f}).")
    return out


def plot(report: CompareReport, path: Path) -> None:
    """Metric with its 95% CI against training-set size (or trainable parameters when one size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one_size = len(report.sizes) == 1
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in report.strategies:
        cells = sorted((r for r in report.rows if r.strategy == name), key=lambda r: r.train_examples)
        xs = [r.trainable if one_size else r.train_examples for r in cells]
        ys = [r.metric for r in cells]
        errors = [[y - r.ci_low for y, r in zip(ys, cells)], [r.ci_high - y for y, r in zip(ys, cells)]]
        axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name,
                      linestyle="--" if name == SCRATCH else "-")
    for key, style, label in (("majority_class", ":", "majority class"), ("chance", "-.", "random guessing")):
        if key in report.baselines:
            axes.axhline(report.baselines[key], color="grey", linestyle=style, linewidth=1, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters" if one_size else "training examples")
    axes.set_ylabel(f"eval {report.metric} (95% CI)")
    axes.set_title(f"{report.verdict}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# The page, as a jinja2 template. Text is escaped with html.escape (the ``h`` filter), not jinja2's
# autoescape, so quotes come out as &quot;/&#x27; exactly as before the template existed.
HTML_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>adaptkit compare: {{ r.verdict|h }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child{text-align:left}h1{color:{{ colour }}}</style></head><body>
<h1>Verdict: {{ r.verdict|h }}</h1><p>{{ r.verdict_detail|h }}</p><p>{{ r.transfer_range|h }}</p>
<table><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr>
{%- for row in r.rows %}<tr><td>{{ (row.strategy ~ flags(row))|h }}</td><td>{{ "{:,}".format(row.train_examples) }}</td>
{%- if true %}<td>{{ "%.4f"|format(row.metric) }}</td><td>[{{ "%.3f"|format(row.ci_low) }}, {{ "%.3f"|format(row.ci_high) }}]</td>
{%- endif %}<td>{{ row.learning_rates|map("g2")|join(", ") }}</td><td>{{ "{:,}".format(row.trainable) }}</td>
{%- if true %}<td>{{ "%.1f"|format(row.wall_seconds) }}</td><td>{{ "{:,.0f}".format(row.peak_memory_bytes / 1048576) }}</td>
{%- endif %}<td>{{ "%.4f"|format(row.energy_wh) }}</td></tr>{% endfor %}</table>
<img alt="metric against {{ 'trainable parameters' if r.sizes|length == 1 else 'training examples' }}" src="data:image/png;base64,{{ image }}">
<h2>By training-set size</h2><ul>
{%- for p in r.per_size %}<li>{{ p.train_examples }} examples: {{ p.best_transfer|h }} - scratch = {{ "%+.4f"|format(p.difference) }} [{{ "%+.4f"|format(p.ci_low) }}, {{ "%+.4f"|format(p.ci_high) }}]: <b>{{ p.verdict|h }}</b></li>{% endfor %}</ul>
<h2>Learning curves</h2><ul>{% for line in curves %}<li>{{ line|h }}</li>{% else %}<li>one size: no curve</li>{% endfor %}</ul>
<h2>Compute saved against training from scratch</h2><ul>
{%- for c in r.compute_saved %}<li>{{ c.strategy|h }}: {% if c.matches_scratch -%}
matches scratch's best ({{ "%.4f"|format(c.scratch_best_metric) }} with {{ c.scratch_examples }} examples, {{ "%.4f"|format(c.scratch_energy_wh) }} Wh) with {{ c.examples_needed }} examples and {{ "%.4f"|format(c.energy_wh) }} Wh
{%- if c.energy_saved_wh %}: {{ "%.4f"|format(c.energy_saved_wh) }} Wh saved{% else %}: no energy saved{% endif %}
{%- else %}{{ c.note|h }}{% endif %}</li>{% else %}<li>no scratch baseline</li>{% endfor %}</ul>
<h2>Method</h2><ul>{% for n in notes %}<li>{{ n|h }}</li>{% endfor %}</ul>
<p>Seeds: {{ r.seeds|join(", ") }}. Raw figures: compare.json.</p>
</body></html>
"""


@functools.lru_cache(maxsize=1)
def _html_template():
    """``HTML_TEMPLATE`` compiled once (compiling takes ~15 ms, rendering ~0.3 ms)."""
    import jinja2

    env = jinja2.Environment(autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["h"] = lambda value: html.escape(str(value))
    env.filters["g2"] = lambda value: f"{value:.2g}"
    return env.from_string(HTML_TEMPLATE)


def html_report(report: CompareReport, png: Path) -> str:
    """One self-contained page: verdict, table, plot (base64), curves, compute saved, method notes.

    Rendered with jinja2 (``HTML_TEMPLATE``): the page's layout is one readable template instead
    of nested f-strings; a test holds it to the exact bytes the f-string version produced.
    """
    colour = {"positive transfer": "#1a7f37", "negative transfer": "#cf222e"}.get(report.verdict, "#9a6700")
    return _html_template().render(
        r=report, colour=colour, flags=_flags, curves=curve_sentences(report),
        image=base64.b64encode(png.read_bytes()).decode("ascii"),
        head=("arm", "train rows", f"{report.metric}", "95% CI", "chosen lr", "trainable params", "train s",
              "peak MiB", "energy Wh"),
        notes=report.notes + [f"energy: {report.energy_method}"])


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

"""``adaptkit advise``: will transfer pay on this data? Answered with forward passes and one step each.

Three parts, each backed by figures the report prints:

- Data suitability: examples per class, imbalance, duplicate texts, train/eval overlap and
  truncation at the recipe's ``max_length``.
- Transferability before training (``adaptkit.judge.transferability``): the pretrained model's
  features against the same architecture's with random weights (probe, LogME, shrunk H-score),
  judged as one of three outcomes (features favour transfer / cannot tell / suggest harm), and
  the probe's learning curve for the data-size advice.
- Cost: per strategy, training FLOPs per epoch counted by tracing one real optimizer step
  (which modules ran, which needed activation gradients, which weights were trainable), and
  seconds, process CPU time and energy per epoch from that one timed step scaled by the epoch's
  padded tokens; memory from the ``adaptkit plan`` estimate.

Nothing here names a strategy: every installed one is judged the same way. What advise does
not claim: how many parameters a data set "can pin down" (a count says nothing measured; full
fine-tuning of MiniLM reaches 0.79 on 1,000 SST-2 rows); ``adaptkit compare`` measures that.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from rich.panel import Panel
from rich.table import Table

from adaptkit.engine.device import mixed_precision, training_device
from adaptkit.engine.planning import estimate_memory, needs_weight_values
from adaptkit.engine.session import Session, as_recipe
from adaptkit.judge.baselines import aligned, cross_validated, installed_for, targets_of
from adaptkit.judge.compare_checks import check_advise_arguments
from adaptkit.judge.energy import describe_power, energy_of_cpu_seconds, given_power, grid_intensity
from adaptkit.judge.transferability import curve_finding, transfer_verdict, transferability
from adaptkit.judge.verdicts import verdict_metric
from adaptkit.plugin.baseline import BaselineRows
from adaptkit.plugin.registry import get_strategy, list_strategies, recipe_plugins
from adaptkit.recipe.schema import Recipe

FEW_EXAMPLES = 300  # below this, say plainly that results swing with the seed
FEW_PER_CLASS = 20
IMBALANCE_LIMIT = 3.0
TRUNCATION_LIMIT = 0.05
BASELINE_FOLDS = 3  # outer folds of the baselines' cross-validation (each fit runs its own inner CV)
MAX_FEATURE_ROWS = 500  # features of 500 rows twice: about 4 s of the quick start's advise


@dataclass
class StrategyAdvice:
    """One strategy on this recipe's model and data: its size, and the cost of an epoch."""

    strategy: str
    trainable: int = 0
    total: int = 0
    params_per_example: float = 0.0
    flops_per_epoch: Optional[float] = None
    seconds_per_epoch: Optional[float] = None
    seconds_per_step: Optional[float] = None
    cpu_seconds_per_epoch: Optional[float] = None
    energy_wh_per_epoch: Optional[float] = None
    g_co2e_per_epoch: Optional[float] = None
    peak_memory_estimate_bytes: Optional[int] = None
    peak_memory_measured_bytes: Optional[int] = None
    skipped: Optional[str] = None
    probe_error: Optional[str] = None


@dataclass
class AdviceReport:
    """Everything ``advise`` found; ``to_dict()`` is what ``--output`` writes as JSON."""

    model: str
    task: str
    data: dict[str, Any]
    strategies: list[StrategyAdvice]
    transferability: dict[str, Any]
    findings: list[str] = field(default_factory=list)  # plain-language conclusions, most important first
    # "features favour transfer" | "features cannot tell" | "features suggest harm" | "not assessed"
    transfer_verdict: str = "not assessed"
    # per installed baseline serving the task: its k-fold score on the probe's rows (or why it was skipped)
    baselines: dict[str, Any] = field(default_factory=dict)
    transfer_risk: Optional[bool] = None  # True only when the features suggest harm
    cost_method: dict[str, str] = field(default_factory=dict)  # how each cost figure was obtained
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["strategies"] = [asdict(s) for s in self.strategies]
        return data


# ---------------------------------------------------------------------------- data

def _text_key(row: dict[str, Any], columns: list[str]) -> tuple:
    return tuple(str(row.get(c, "")).strip() for c in columns)


def data_suitability(session: Any) -> dict[str, Any]:
    """Class counts, imbalance, duplicates, train/eval overlap and truncation, from the session's splits.

    Truncation counts encoded rows whose length reached ``max_length`` (an upper bound: a row
    that fits exactly is counted too), so no second tokenization is needed.
    """
    task = session.task
    label_column = task.label_column()
    text_columns = task.text_columns()
    train, evaluation = session.splits.train, session.splits.eval
    info: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(evaluation),
                            "eval_source": session.splits.eval_source}
    if "labels" in session.train_data.column_names:
        labels = session.train_data["labels"]
        if labels and isinstance(labels[0], int):
            names = getattr(task, "labels", None) or []
            counts: dict[str, int] = {}
            for value in labels:
                key = str(names[value]) if value < len(names) else str(value)
                counts[key] = counts.get(key, 0) + 1
            info["examples_per_class"] = dict(sorted(counts.items()))
            info["imbalance_ratio"] = round(max(counts.values()) / max(min(counts.values()), 1), 3)
    if text_columns and all(c in train.column_names for c in text_columns):
        seen: dict[tuple, set] = {}
        duplicates = conflicting = 0
        for row in train:
            key = _text_key(row, text_columns)
            label = str(row.get(label_column)) if label_column else None
            if key in seen:
                duplicates += 1
                if label not in seen[key]:
                    conflicting += 1
            seen.setdefault(key, set()).add(label)
        info["duplicate_train_rows"] = duplicates
        info["duplicate_rows_with_conflicting_labels"] = conflicting
        if all(c in evaluation.column_names for c in text_columns):
            overlap = sum(1 for row in evaluation if _text_key(row, text_columns) in seen)
            info["eval_rows_also_in_train"] = overlap
    max_length = task.sequence_length()
    if max_length and "length" in session.train_data.column_names:
        lengths = session.train_data["length"]
        info["max_length"] = max_length
        info["truncated_fraction"] = round(sum(1 for n in lengths if n >= max_length) / max(len(lengths), 1), 4)
        info["mean_tokens"] = round(sum(lengths) / max(len(lengths), 1), 1)
    return info

def _data_findings(info: dict[str, Any]) -> list[str]:
    findings = []
    n = info["train_examples"]
    if n < FEW_EXAMPLES:
        findings.append(f"Only {n} training examples: scores will swing with the seed and with which rows are "
                        f"held out. Check any choice with `adaptkit compare --seeds 1,2,3`, which also shows "
                        f"whether scratch or transfer learns at this size.")
    per_class = info.get("examples_per_class", {})
    rare = {k: v for k, v in per_class.items() if v < FEW_PER_CLASS}
    if rare:
        findings.append("Very few examples of class " + ", ".join(f"{k!r} ({v})" for k, v in rare.items())
                        + ": the model will barely see them.")
    if info.get("imbalance_ratio", 1.0) > IMBALANCE_LIMIT:
        findings.append(f"Classes are imbalanced ({info['imbalance_ratio']:.1f} : 1): accuracy flatters a model "
                        f"that favours the large class; watch macro_f1.")
    if info.get("duplicate_train_rows"):
        count = info["duplicate_train_rows"]
        text = (f"{count} training row repeats" if count == 1 else f"{count} training rows repeat") + \
            " an earlier row's text"
        if info.get("duplicate_rows_with_conflicting_labels"):
            text += f" ({info['duplicate_rows_with_conflicting_labels']} with a different label)"
        findings.append(text + ".")
    if info.get("eval_rows_also_in_train"):
        findings.append(f"{info['eval_rows_also_in_train']} evaluation row(s) also appear in the training data: "
                        f"evaluation scores will be optimistic.")
    if info.get("truncated_fraction", 0.0) > TRUNCATION_LIMIT:
        findings.append(f"{100 * info['truncated_fraction']:.1f}% of training rows reach max_length="
                        f"{info['max_length']} and are cut; raise task.max_length if their ends matter.")
    return findings


# ---------------------------------------------------------------------------- strategies

def _non_embedding_counts(model) -> tuple[int, int, int]:
    """(N, N_backprop, N_trainable) without embedding tables, for the FLOPs estimate.

    ``N_backprop`` counts parameters from the first trainable one onwards (in the model's
    parameter order, inputs to outputs): activation gradients flow back only that far.
    """

    embedding_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    total = backprop = trainable = 0
    reached = False
    for param in model.parameters():
        reached = reached or param.requires_grad
        if id(param) in embedding_ids:
            continue
        total += param.numel()
        backprop += param.numel() if reached else 0
        trainable += param.numel() if param.requires_grad else 0
    return total, backprop, trainable


def flops_per_token(model) -> float:
    """Training FLOPs per token: forward 2N, activation gradients 2N_backprop, weight gradients 2N_trainable.

    The usual "6N" for full fine-tuning; a frozen backbone costs about 2N (no backward through
    it), a low-rank adapter on every layer about 4N. Embedding tables (lookups, not matrix
    products) and attention's sequence-length term are left out.
    """
    n, n_backprop, n_trainable = _non_embedding_counts(model)
    return 2.0 * n + 2.0 * n_backprop + 2.0 * n_trainable


def _numel(param) -> int:
    """Logical number of weights: a 4-bit packed tensor stores two per byte (bitsandbytes quant_state)."""
    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    if shape is not None:
        return int(math.prod(shape))
    return param.numel()


class _GradientTrace:
    """Which parameterised modules ran, and which received an input that requires a gradient.

    Backward computes an activation gradient through a module (about 2 FLOPs per weight per
    token) exactly when its input requires a gradient; weight gradients (another 2) only for
    trainable weights. Tracing one real step gives both without knowing how a strategy wraps
    the model (adapters appended at the end of the parameter list, prompt embeddings, caches).
    """

    def __init__(self, model):

        self.ran: dict[int, int] = {}
        self.backprop: dict[int, int] = {}
        self.trainable = 0
        self.handles = []
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                continue
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            size = sum(_numel(p) for p in own)
            self.trainable += sum(_numel(p) for p in own if p.requires_grad)
            self.handles.append(module.register_forward_hook(self._hook(id(module), size), with_kwargs=True))

    def _hook(self, key: int, size: int):

        def hook(module, args, kwargs, output):
            self.ran[key] = size
            values = list(args) + list(kwargs.values())
            if any(isinstance(v, torch.Tensor) and v.requires_grad for v in values):
                self.backprop[key] = size
        return hook

    def close(self) -> float:
        """Remove the hooks; training FLOPs per token of the traced step."""
        for handle in self.handles:
            handle.remove()
        return 2.0 * sum(self.ran.values()) + 2.0 * sum(self.backprop.values()) + 2.0 * self.trainable


def _epoch_padded_tokens(lengths: list[int], batch_size: int, group_by_length: bool, seed: int) -> int:
    """Tokens (padding included) the training loop feeds per epoch: what the machine computes."""
    order = sorted(lengths) if group_by_length else list(lengths)
    if not group_by_length:
        random.Random(seed).shuffle(order)
    return sum(max(order[i:i + batch_size]) * len(order[i:i + batch_size]) for i in range(0, len(order), batch_size))

def time_one_step(session: Any, base: Any, name: str) -> tuple[float, float, int, Optional[int], float]:
    """One real optimizer step on a copy of ``base``: wall and CPU seconds, padded tokens, CUDA peak, FLOPs/token.

    One step, not many: its FLOPs are traced exactly (the same for every step of a strategy),
    and its time converts the epoch's padded tokens to seconds on this machine. The batch is
    what the loop would feed: rows of similar length around the median when batches are
    grouped by length, random rows otherwise. A strategy that caches
    per-example work (frozen_head) pays its uncached cost here, an upper bound for later epochs.
    """

    training = session.recipe.training
    device = training_device(training)
    model = copy.deepcopy(base)
    context = session.context(model, total_steps=session.planned_steps())  # as a run tells it
    strategy = session.strategy(name)
    rate = session.learning_rate(strategy, context)
    model = session.wrap(strategy, model, context).to(device)
    groups = [g for g in strategy.parameter_groups(model, rate, training.weight_decay) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=rate)
    data = session.train_data
    size = min(training.batch_size, len(data))
    if "length" in data.column_names and training.group_by_length:
        # a batch as length grouping forms them: rows of similar length around the median one
        lengths = data["length"]
        order = sorted(range(len(data)), key=lengths.__getitem__)
        middle = max(0, len(order) // 2 - size // 2)
        rows = order[middle:middle + size]
    else:
        rows = random.Random(training.seed).sample(range(len(data)), size)
    batch = {k: v.to(device) for k, v in session.task.collate(session.tokenizer)([data[i] for i in rows]).items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    trace = _GradientTrace(model)
    wall, cpu = time.perf_counter(), time.process_time()
    loss = model(**batch).loss
    flops = trace.close()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = int(batch["input_ids"].numel()) if "input_ids" in batch else size
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return wall, cpu, tokens, peak, flops


def strategy_advice(session: Any, names: list[str], probe_steps: int, power_watts: Optional[float],
                    grid_g_per_kwh: Optional[float], log: Callable[[str], None]) -> list[StrategyAdvice]:
    """Size and cost of each strategy; a strategy that fails is skipped with its reason.

    Sizes and the memory estimate come from the model built on the meta device (no weights
    read); with ``probe_steps`` > 0 one real step per strategy, on a copy of one loaded base
    model, counts FLOPs and times the machine.
    """

    recipe = session.recipe
    training = recipe.training
    n = len(session.train_data)
    lengths = list(session.train_data["length"]) if "length" in session.train_data.column_names else []
    epoch_tokens = _epoch_padded_tokens(lengths, training.batch_size, training.group_by_length, training.seed) \
        if lengths else None
    sequence_length = session.sequence_length
    base = session.build_base() if probe_steps > 0 else None
    watts = given_power(power_watts)
    results = []
    for name in names:
        entry = StrategyAdvice(name)
        results.append(entry)
        try:
            config = session.config
            strategy = session.strategy(name)
            with session.on_meta_device():  # the pre-flight runs too: a strategy that cannot run is skipped
                meta = session.build_meta()
                model = session.wrap(strategy, meta, session.context(meta, total_steps=session.planned_steps()))
            entry.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            entry.total = sum(p.numel() for p in model.parameters())
            if entry.trainable == 0:
                raise ValueError("leaves no parameter trainable on this model")
            entry.params_per_example = round(entry.trainable / max(n, 1), 1)
            entry.peak_memory_estimate_bytes = estimate_memory(model, config, training.batch_size, sequence_length,
                                                               mixed_precision(training))["total"]
            if epoch_tokens is not None:
                entry.flops_per_epoch = flops_per_token(model) * epoch_tokens
            del model, meta
        except Exception as exc:  # one strategy that cannot wrap this model must not hide the others
            entry.skipped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if needs_weight_values(exc):  # not a refusal: plan says the same, and a run checks it
                entry.skipped = (f"not sized on the meta device: its wrap reads the weights' values "
                                 f"({entry.skipped}); `adaptkit run` or `compare` measures it")
            log(f"advise: skipping strategy {name}: {entry.skipped}")
            continue
        if base is None:
            continue
        try:
            wall, cpu, tokens, peak, traced = time_one_step(session, base, name)
            # the epoch's padded tokens over the step's; a task without token lengths (images, captions:
            # its step counts rows) scales by its steps per epoch. Such tasks were left untimed before.
            scale = (epoch_tokens / max(tokens, 1) if epoch_tokens is not None
                     else n / max(min(training.batch_size, n), 1))
            entry.flops_per_epoch = traced * tokens * scale  # traced beats the parameter-order estimate
            entry.seconds_per_step = round(wall, 4)
            entry.seconds_per_epoch = round(wall * scale, 2)
            entry.cpu_seconds_per_epoch = round(cpu * scale, 2)
            if watts is not None:
                wh = entry.seconds_per_epoch * watts / 3600
                entry.energy_wh_per_epoch, entry.g_co2e_per_epoch = (
                    round(wh, 5), round(wh / 1000 * grid_intensity(grid_g_per_kwh), 4))
            else:
                energy = energy_of_cpu_seconds(entry.cpu_seconds_per_epoch, grid_g_per_kwh)
                entry.energy_wh_per_epoch, entry.g_co2e_per_epoch = round(energy.wh, 5), round(energy.g_co2e, 4)
            entry.peak_memory_measured_bytes = peak
            log(f"advise: {name}: {wall:.3f} s for one step, ~{entry.seconds_per_epoch:.1f} s per epoch")
        except Exception as exc:
            entry.probe_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"advise: cannot time strategy {name}: {entry.probe_error}")
    del base
    return results


# ---------------------------------------------------------------------------- entry point

def advise(recipe: Union[Recipe, str, Path, dict], strategies: Optional[list[str]] = None, probe_steps: int = 1,
           max_feature_rows: int = MAX_FEATURE_ROWS, folds: int = 5, power_watts: Optional[float] = None,
           grid_g_per_kwh: Optional[float] = None, log: Callable[[str], None] = print) -> AdviceReport:
    """Judge the recipe's data and model before training: forward passes, a probe, one step per strategy.

    ``strategies`` defaults to every installed one (that the recipe's ``plugins:`` key allows).
    ``probe_steps`` > 0 times one real optimizer step per strategy (0 skips timing).
    ``max_feature_rows`` caps the rows whose features LogME and the probe use.
    """

    check_advise_arguments(max_feature_rows=max_feature_rows, probe_steps=probe_steps)  # before any work
    recipe = as_recipe(recipe)
    with recipe_plugins(recipe):  # its plugins: allow-list and the distribution its strategy section names
        return _advise(recipe, strategies, probe_steps, max_feature_rows, folds, power_watts, grid_g_per_kwh, log)


def _advise(recipe: Recipe, strategies: Optional[list[str]], probe_steps: int, max_feature_rows: int, folds: int,
            power_watts: Optional[float], grid_g_per_kwh: Optional[float], log: Callable[[str], None]
            ) -> AdviceReport:

    started = time.perf_counter()
    names = strategies if strategies else sorted(list_strategies())
    for name in names:
        get_strategy(name)  # an unknown name is an error naming the closest one
    session = Session(recipe, log)
    data = data_suitability(session)
    advice = strategy_advice(session, names, probe_steps, power_watts, grid_g_per_kwh, log)
    transfer = transferability(session, max_feature_rows, folds, log)
    baselines = baseline_scores(session, max_feature_rows, folds, log)
    verdict, risk, sentence = transfer_verdict(transfer)
    curve = curve_finding(transfer)
    findings = [sentence] + _baseline_findings(baselines, transfer) + ([curve] if curve else []) + _data_findings(data)
    device = training_device(recipe.training).type
    return AdviceReport(
        model=recipe.model.name or f"config:{recipe.model.config.get('model_type')}", task=session.task.name,
        data=data, strategies=advice, transferability=transfer, findings=findings, transfer_verdict=verdict,
        baselines=baselines,
        transfer_risk=risk, seconds=round(time.perf_counter() - started, 2),
        cost_method={
            "flops": "per token: 2N forward + 2N_backprop activation gradients + 2N_trainable weight gradients "
                     "(N: weights of the modules that ran, embedding tables left out; N_backprop: weights of the "
                     "modules whose input required a gradient), traced on one real optimizer step (without a step, "
                     "the parameters from the first trainable one on), times the padded tokens of one epoch with "
                     "the recipe's batching (attention's sequence-length term left out)",
            "seconds": "one real optimizer step on a random batch of the recipe's batch size (wall and process CPU "
                       "time), scaled by the epoch's padded tokens over the step's",
            "memory": "estimate (weights + gradients + AdamW state + activations, see adaptkit plan); measured "
                      "peak only on a GPU",
            "energy": describe_power(power_watts, device) + " for the projected epoch",
        })


def baseline_scores(session: Any, max_rows: int, folds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every installed baseline that serves the task, cross-validated on the rows the probes use.

    The same rows as ``transferability`` (the training rows, shuffled with the recipe's seed, at most
    ``max_rows``), so the bag-of-words score and the pretrained features' probe sit side by side.
    Seconds of work: a baseline is what fine-tuning must beat to pay.
    """

    task, encoded = session.task, session.train_data
    serving, notes = installed_for(task)
    if not serving:  # said before the rows are looked at: a task without a baseline hears so
        return {"note": notes[0] if notes else "no baseline for this task"}
    if "labels" not in encoded.column_names or not aligned(session.splits.train, encoded):
        return {}
    order = list(range(len(encoded)))
    if len(order) > max_rows:  # the probe's rows: datasets' shuffle is numpy's permutation of the same seed
        order = list(encoded.add_column("__row__", order).shuffle(seed=session.recipe.training.seed)
                     .select(range(max_rows))["__row__"])
    rows = encoded.select(order)
    metric, _ = verdict_metric(task.primary_metric, task.metric_names, targets_of(rows))
    data = BaselineRows(rows=session.splits.train.select(order), encoded=rows, targets=targets_of(rows))
    found: dict[str, Any] = {"metric": metric}
    for name, cls in serving.items():
        # fewer outer folds than the probe's: each fold's fit cross-validates its own C, and advise stays seconds
        found[name] = {"label": cls.label, **cross_validated(cls, task, data, metric, session.recipe.training.seed,
                                                             min(folds, BASELINE_FOLDS))}
        log(f"advise: baseline {name}: {found[name]}")
    return found


def _baseline_findings(baselines: dict[str, Any], transfer: dict[str, Any]) -> list[str]:
    """What the cheapest alternative says: fine-tuning must beat it to pay.

    The baselines are read in the probe's metric (accuracy for classes, Spearman for numbers: both
    higher is better), so the two figures sit side by side."""
    key = transfer.get("probe_metric", "accuracy")
    scored = {name: b for name, b in baselines.items() if isinstance(b, dict) and key in b}
    if not scored:
        return [baselines["note"] + "."] if "note" in baselines else []
    name, best = max(scored.items(), key=lambda item: item[1][key])
    probe = (transfer.get("pretrained") or {}).get(f"probe_{key}")
    figure = (f"{best['label'][0].upper() + best['label'][1:]} ({name}, trained without pretraining) scores "
              f"{key} {best[key]:.3f} ({best['folds']}-fold on {best['rows']} training rows, "
              f"{best['seconds']:.1f} s)")
    verdict = baselines.get("metric")
    if verdict and verdict != key and verdict in best:
        figure += f", {verdict.replace('macro_f1', 'macro-F1')} {best[verdict]:.3f}"
    if probe is None:
        return [f"{figure}: fine-tuning must beat that to pay."]
    if best[key] >= probe - 0.01:
        return [f"{figure}, as well as a probe on the pretrained features ({probe:.3f}): fine-tuning must beat "
                f"{best[key]:.3f} to pay; `adaptkit compare` measures whether it does."]
    return [f"{figure}, below a probe on the pretrained features ({probe:.3f}): the pretrained features already "
            f"carry more than word counts do."]


def render(report: AdviceReport) -> list[Any]:
    """Rich renderables: findings, the data table, transferability and the per-strategy table."""

    parts: list[Any] = []
    colour = {"features favour transfer": "green", "features suggest harm": "red"}.get(report.transfer_verdict,
                                                                                     "yellow")
    parts.append(Panel("\n".join(f"- {f}" for f in report.findings), title=f"[{colour}]{report.transfer_verdict}"
                       f"[/{colour}] ({report.model}, {report.task})"))
    data = Table("data", "value", title="data suitability")
    for key, value in report.data.items():
        data.add_row(key.replace("_", " "), str(value))
    parts.append(data)
    transfer = report.transferability
    key = transfer.get("probe_metric", "accuracy")
    if "skipped" not in transfer:
        table = Table("weights", "LogME", "H-score", f"probe {key} ({transfer['folds']}-fold)",
                      title=f"transferability on {transfer['rows']} training rows ({transfer['features']})")
        for kind in ("pretrained", "random"):
            row = transfer[kind]
            table.add_row(kind, f"{row['logme']:.4f}", "withheld" if row["h_score"] is None else f"{row['h_score']:.3f}",
                          "-" if row[f"probe_{key}"] is None else f"{row[f'probe_{key}']:.3f}")
        parts.append(table)
    scored = {name: b for name, b in report.baselines.items() if isinstance(b, dict) and key in b}
    if scored:
        second = report.baselines.get("metric") if report.baselines.get("metric") != key else None
        second = second or ("macro_f1" if key == "accuracy" else None)
        table = Table("baseline (no pretraining)", key, second or "-", "folds", "rows", "seconds",
                      title="baselines, cross-validated on the same rows")
        for name, b in scored.items():
            table.add_row(name, f"{b[key]:.3f}", f"{b[second]:.3f}" if second and second in b else "-",
                          str(b["folds"]), str(b["rows"]), f"{b['seconds']:.1f}")
        parts.append(table)
    cost = Table("strategy", "trainable", "per example", "GFLOPs/epoch", "s/epoch", "CPU s/epoch", "Wh/epoch",
                 "est. memory", "note", title="strategies: size and cost per epoch")
    for s in report.strategies:
        if s.skipped:
            cost.add_row(s.strategy, "-", "-", "-", "-", "-", "-", "-", f"[yellow]skipped: {s.skipped}[/yellow]")
            continue
        cost.add_row(s.strategy, f"{s.trainable:,}", f"{s.params_per_example:,.0f}",
                     "-" if s.flops_per_epoch is None else f"{s.flops_per_epoch / 1e9:,.3g}",
                     "-" if s.seconds_per_epoch is None else f"{s.seconds_per_epoch:,.1f}",
                     "-" if s.cpu_seconds_per_epoch is None else f"{s.cpu_seconds_per_epoch:,.1f}",
                     "-" if s.energy_wh_per_epoch is None else f"{s.energy_wh_per_epoch:.3f}",
                     "-" if s.peak_memory_estimate_bytes is None else f"{s.peak_memory_estimate_bytes / 2**20:,.0f} MiB",
                     f"not timed: {s.probe_error}" if s.probe_error else "")
    parts.append(cost)
    return parts


def default_output(recipe: Recipe) -> Path:
    """Where ``adaptkit advise`` writes its JSON by default: ``<output.dir>-advice.json``."""
    out = Path(recipe.output.dir)
    return out.with_name(out.name + "-advice.json")

"""``adaptkit advise``: will transfer pay on this data? Answered with forward passes only.

Three parts, each backed by figures the report prints:

- Data suitability: examples per class, imbalance, duplicate texts, train/eval overlap,
  truncation at the recipe's ``max_length``, and for every installed strategy its trainable
  parameters against the number of training examples (built on the meta device, as in
  ``adaptkit plan``: no weights read).
- Transferability before training: LogME (and H-score) of the pretrained model's features of
  the training rows, the same for the same architecture with random weights, and a 5-fold
  cross-validated logistic-regression probe on both. Pretrained features that are not clearly
  better than random ones are reported as a risk of negative transfer.
- Cost: per strategy, training FLOPs per epoch (estimated), seconds per epoch (measured from a
  few real optimizer steps on this machine), estimated peak memory and energy per epoch.

Nothing here names a strategy: every installed one is judged the same way.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from adaptkit.recipe import Recipe

FEW_EXAMPLES = 300  # below this, say plainly that the data is small
FEW_PER_CLASS = 20
PARAMS_PER_EXAMPLE_LIMIT = 10_000  # above this many trainable parameters per example, warn
IMBALANCE_LIMIT = 3.0
TRUNCATION_LIMIT = 0.05
MAX_FEATURE_ROWS = 2000


@dataclass
class StrategyAdvice:
    """One strategy on this recipe's model and data: size against data, and cost."""

    strategy: str
    trainable: int = 0
    total: int = 0
    params_per_example: float = 0.0
    fits_data: bool = True
    flops_per_epoch: Optional[float] = None
    seconds_per_epoch: Optional[float] = None
    seconds_per_step: Optional[float] = None
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
    transfer_verdict: str = "not assessed"  # "transfer likely helps" | "risk of negative transfer" | ...
    transfer_risk: Optional[bool] = None
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
    task, options = session.task, session.recipe.task_options
    label_column = getattr(options, "label_column", None)
    text_columns = [c for c in (getattr(options, "text_column", None), getattr(options, "text_pair_column", None)) if c]
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
    max_length = getattr(options, "max_length", None)
    if max_length and "length" in session.train_data.column_names:
        lengths = session.train_data["length"]
        info["max_length"] = max_length
        info["truncated_fraction"] = round(sum(1 for n in lengths if n >= max_length) / max(len(lengths), 1), 4)
        info["mean_tokens"] = round(sum(lengths) / max(len(lengths), 1), 1)
    return info


def _data_findings(info: dict[str, Any], strategies: list[StrategyAdvice]) -> list[str]:
    findings = []
    n = info["train_examples"]
    usable = [s for s in strategies if not s.skipped]
    fitting = sorted((s for s in usable if s.fits_data), key=lambda s: -s.trainable)
    fitting_names = ", ".join(s.strategy for s in fitting) or "none of the installed strategies"
    if n < FEW_EXAMPLES:
        small = ", ".join(s.strategy for s in sorted(usable, key=lambda s: s.trainable)[:3])
        findings.append(f"Only {n} training examples. Below a few hundred, training many weights overfits and "
                        f"results swing with the seed; prefer the strategies with the fewest trainable parameters "
                        f"({small}) and check with `adaptkit compare --seeds 1,2,3`.")
    for s in usable:
        if not s.fits_data:
            findings.append(f"Strategy {s.strategy} trains {s.trainable:,} parameters, {s.params_per_example:,.0f} "
                            f"per training example: far more than {n} examples can pin down. Strategies that fit "
                            f"this data better: {fitting_names}.")
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
    import torch

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
        import torch

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
        import torch

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


def _measure_steps(session: Any, strategy_cls: type, options: Any, steps: int, learning_rate: Optional[float]
                   ) -> tuple[float, int, Optional[int], float]:
    """Seconds per optimizer step, padded tokens per probe batch, CUDA peak, traced FLOPs per token.

    ``steps + 1`` different random batches of the recipe's batch size (different, so a strategy
    that caches per-example work pays its first-epoch cost); the first step is a warm-up.
    """
    import torch

    from adaptkit.strategy import WrapContext

    training = session.recipe.training
    device = torch.device("cuda" if torch.cuda.is_available() and training.device != "cpu" else "cpu")
    base = session.build_base()
    context = WrapContext(model_type=getattr(base.config, "model_type", "unknown"), task=session.task.name,
                          head_modules=session.task.head_modules(base), peft_task_type=session.task.peft_task_type)
    strategy = strategy_cls(options)
    model = strategy.wrap(base, context).to(device)
    rate = learning_rate or strategy.default_learning_rate
    groups = [g for g in strategy.parameter_groups(model, rate, training.weight_decay) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=rate)
    collate = session.task.collate(session.tokenizer)
    data = session.train_data
    rng = random.Random(training.seed)
    size = min(training.batch_size, len(data))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    timings, tokens = [], []
    trace = _GradientTrace(model)
    flops = 0.0
    for step in range(steps + 1):
        rows = rng.sample(range(len(data)), size)
        batch = {k: v.to(device) for k, v in collate([data[i] for i in rows]).items()}
        started = time.perf_counter()
        loss = model(**batch).loss
        if step == 0:
            flops = trace.close()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            timings.append(time.perf_counter() - started)
            tokens.append(int(batch["input_ids"].numel()) if "input_ids" in batch else size)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    del model, base, optimizer
    seconds = sum(timings) / len(timings)
    return seconds, int(sum(tokens) / len(tokens)), peak, flops


def strategy_advice(session: Any, names: list[str], probe_steps: int, power_watts: Optional[float],
                    grid_g_per_kwh: Optional[float], log: Callable[[str], None]) -> list[StrategyAdvice]:
    """Size, fit to the data, and cost of each strategy; a strategy that fails is skipped with its reason."""
    import torch
    from accelerate import init_empty_weights

    from adaptkit.energy import default_power_watts, energy_of
    from adaptkit.models import load_config
    from adaptkit.planning import estimate_memory
    from adaptkit.strategy import WrapContext

    recipe = session.recipe
    training = recipe.training
    n = len(session.train_data)
    lengths = list(session.train_data["length"]) if "length" in session.train_data.column_names else []
    epoch_tokens = _epoch_padded_tokens(lengths, training.batch_size, training.group_by_length, training.seed) \
        if lengths else None
    sequence_length = getattr(recipe.task_options, "max_length", 512)
    device = "cuda" if torch.cuda.is_available() and training.device != "cpu" else "cpu"
    watts = power_watts if power_watts is not None else default_power_watts(device)
    results = []
    for name in names:
        entry = StrategyAdvice(name)
        results.append(entry)
        options = recipe.strategy_options if name == recipe.strategy.name else None
        try:
            config = load_config(recipe, session.source)
            strategy = session.registry.strategies[name](options)
            with init_empty_weights():
                base = session.task.build_model("", config, True, trust_remote_code=recipe.model.trust_remote_code)
                context = WrapContext(model_type=getattr(config, "model_type", "unknown"), task=session.task.name,
                                      head_modules=session.task.head_modules(base),
                                      peft_task_type=session.task.peft_task_type)
                model = strategy.wrap(base, context)
            entry.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            entry.total = sum(p.numel() for p in model.parameters())
            if entry.trainable == 0:
                raise ValueError("leaves no parameter trainable on this model")
            entry.params_per_example = round(entry.trainable / max(n, 1), 1)
            entry.fits_data = entry.params_per_example <= PARAMS_PER_EXAMPLE_LIMIT
            entry.peak_memory_estimate_bytes = estimate_memory(model, config, training.batch_size, sequence_length,
                                                               training.mixed_precision)["total"]
            if epoch_tokens is not None:
                entry.flops_per_epoch = flops_per_token(model) * epoch_tokens
            del model, base
        except Exception as exc:  # one strategy that cannot wrap this model must not hide the others
            entry.skipped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"advise: skipping strategy {name}: {entry.skipped}")
            continue
        if probe_steps <= 0 or epoch_tokens is None:
            continue
        try:
            rate = training.learning_rate if name == recipe.strategy.name else None
            step_seconds, probe_tokens, peak, traced = _measure_steps(
                session, session.registry.strategies[name], options, probe_steps, rate)
            entry.flops_per_epoch = traced * epoch_tokens  # traced beats the parameter-order estimate
            entry.seconds_per_step = round(step_seconds, 4)
            entry.seconds_per_epoch = round(step_seconds * epoch_tokens / max(probe_tokens, 1), 2)
            energy = energy_of(entry.seconds_per_epoch, watts, "time x power", grid_g_per_kwh)
            entry.energy_wh_per_epoch = round(energy.wh, 5)
            entry.g_co2e_per_epoch = round(energy.g_co2e, 4)
            entry.peak_memory_measured_bytes = peak
            log(f"advise: {name}: {entry.seconds_per_step:.3f} s per step, ~{entry.seconds_per_epoch:.1f} s per epoch")
        except Exception as exc:
            entry.probe_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"advise: cannot time strategy {name}: {entry.probe_error}")
    return results


# ---------------------------------------------------------------------------- transferability

def extract_features(model, dataset, collate, batch_size: int) -> tuple[Any, Any]:
    """Mean-pooled last hidden states (attention mask respected) and integer labels, as numpy arrays."""
    import numpy as np
    import torch

    model.eval()
    features, labels = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate(rows)
            labels.append(batch.pop("labels").numpy())
            outputs = model(**batch, output_hidden_states=True)
            hidden = outputs.hidden_states[-1].float()
            mask = batch.get("attention_mask")
            if mask is None or hidden.ndim != 3:
                pooled = hidden.mean(dim=1) if hidden.ndim == 3 else hidden
            else:
                mask = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            features.append(pooled.numpy())
    return np.concatenate(features), np.concatenate(labels)


def probe_accuracy(features, labels, folds: int = 5, seed: int = 0) -> Optional[list[float]]:
    """Per-fold accuracy of a standardised logistic regression (stratified K-fold); None without sklearn."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return None
    import numpy as np

    smallest = int(np.bincount(labels).min()) if labels.size else 0
    folds = min(folds, smallest)
    if folds < 2:
        return None
    scores = []
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(features[train_idx], labels[train_idx])
        scores.append(float(probe.score(features[test_idx], labels[test_idx])))
    return scores


def transferability(session: Any, max_rows: int, folds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """LogME, H-score and probe accuracy for pretrained and random weights, and the verdict they back."""
    import numpy as np

    from adaptkit.logme import h_score, logme
    from adaptkit.models import build_model

    recipe = session.recipe
    data = session.train_data
    if recipe.model.name is None:
        return {"skipped": "the model is built from model.config: there are no pretrained weights to judge"}
    if "labels" not in data.column_names or not data or not isinstance(data[0]["labels"], int):
        return {"skipped": "needs one integer class label per example (a classification task)"}
    if len(data) > max_rows:
        data = data.shuffle(seed=recipe.training.seed).select(range(max_rows))
    collate = session.task.collate(session.tokenizer)
    random_recipe = recipe.model_copy(deep=True)
    random_recipe.model.init = "random"
    result: dict[str, Any] = {"rows": len(data), "features": "mean-pooled last hidden state", "folds": folds}
    fold_scores = {}
    for kind, source_recipe in (("pretrained", recipe), ("random", random_recipe)):
        started = time.perf_counter()
        model = build_model(source_recipe, session.task, session.tokenizer, session.source, recipe.training.seed)
        features, labels = extract_features(model, data, collate, recipe.training.eval_batch_size)
        del model
        scores = probe_accuracy(features, labels, folds, recipe.training.seed)
        fold_scores[kind] = scores
        result[kind] = {"logme": round(logme(features, labels), 5), "h_score": round(h_score(features, labels), 5),
                        "probe_accuracy": round(float(np.mean(scores)), 4) if scores else None,
                        "probe_fold_accuracies": [round(s, 4) for s in scores] if scores else None,
                        "seconds": round(time.perf_counter() - started, 2)}
        log(f"advise: {kind} features: LogME {result[kind]['logme']:.4f}, probe accuracy "
            f"{result[kind]['probe_accuracy']}")
    if fold_scores["pretrained"] and fold_scores["random"]:
        diffs = np.array(fold_scores["pretrained"]) - np.array(fold_scores["random"])  # same folds: paired
        se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
        result["probe_difference"] = {"mean": round(float(diffs.mean()), 4), "standard_error": round(se, 4)}
    return result


def transfer_verdict(result: dict[str, Any]) -> tuple[str, Optional[bool], str]:
    """(verdict, risk, sentence): pretrained must beat random on LogME and, clearly, on the probe.

    "Clearly" means the paired per-fold probe difference exceeds both two standard errors and
    two points of accuracy. Without a probe (no scikit-learn) LogME alone decides, with a margin
    of 0.01 nats per example.
    """
    if "skipped" in result:
        return "not assessed", None, f"Transferability not assessed: {result['skipped']}."
    pre, rnd = result["pretrained"], result["random"]
    logme_diff = pre["logme"] - rnd["logme"]
    figures = f"LogME {pre['logme']:.3f} vs {rnd['logme']:.3f}"
    difference = result.get("probe_difference")
    if difference:
        margin = max(2 * difference["standard_error"], 0.02)
        figures = (f"linear-probe accuracy {pre['probe_accuracy']:.3f} vs {rnd['probe_accuracy']:.3f} "
                   f"({difference['mean']:+.3f} ± {difference['standard_error']:.3f} over {result['folds']} folds), "
                   + figures)
        better = difference["mean"] > margin and logme_diff > 0
        worse = difference["mean"] < -margin and logme_diff < 0
    else:
        better, worse = logme_diff > 0.01, logme_diff < -0.01
    where = "pretrained vs the same architecture with random weights"
    if better:
        return ("transfer likely helps", False,
                f"Transfer looks worthwhile: the pretrained features separate the classes clearly better than "
                f"random ones ({where}: {figures}).")
    if worse:
        return ("risk of negative transfer", True,
                f"Risk of negative transfer: the pretrained features are WORSE than random ones ({where}: "
                f"{figures}). Expect training from scratch to match or beat fine-tuning; confirm with "
                f"`adaptkit compare`.")
    return ("risk of negative transfer", True,
            f"Risk of negative transfer: the pretrained features are not clearly better than random ones "
            f"({where}: {figures}). Confirm with `adaptkit compare` against the scratch baseline before "
            f"relying on transfer.")


# ---------------------------------------------------------------------------- entry point

def advise(recipe: Union[Recipe, str, Path, dict], strategies: Optional[list[str]] = None, probe_steps: int = 3,
           max_feature_rows: int = MAX_FEATURE_ROWS, folds: int = 5, power_watts: Optional[float] = None,
           grid_g_per_kwh: Optional[float] = None, log: Callable[[str], None] = print) -> AdviceReport:
    """Judge the recipe's data and model before training; forward passes and a few probe steps only.

    ``strategies`` defaults to every installed one (that the recipe's ``plugins:`` key allows).
    ``probe_steps`` real optimizer steps per strategy time an epoch (0 skips timing).
    ``max_feature_rows`` caps the rows whose features LogME and the probe use.
    """
    from adaptkit.plugins import for_recipe
    from adaptkit.runner import _as_recipe

    recipe = _as_recipe(recipe)
    with for_recipe(recipe):
        return _advise(recipe, strategies, probe_steps, max_feature_rows, folds, power_watts, grid_g_per_kwh, log)


def _advise(recipe: Union[Recipe, str, Path, dict], strategies: Optional[list[str]] = None, probe_steps: int = 3,
           max_feature_rows: int = MAX_FEATURE_ROWS, folds: int = 5, power_watts: Optional[float] = None,
           grid_g_per_kwh: Optional[float] = None, log: Callable[[str], None] = print) -> AdviceReport:
    """Judge the recipe's data and model before training; forward passes and a few probe steps only.

    ``strategies`` defaults to every installed one. ``probe_steps`` real optimizer steps per
    strategy time an epoch (0 skips timing). ``max_feature_rows`` caps the rows whose features
    LogME and the probe use.
    """
    from adaptkit import get_strategy, list_strategies
    from adaptkit.energy import describe_power
    from adaptkit.runner import Session, _as_recipe

    started = time.perf_counter()
    recipe = _as_recipe(recipe)
    names = strategies if strategies else sorted(list_strategies())
    for name in names:
        get_strategy(name)  # an unknown name is an error naming the closest one
    session = Session(recipe, log)
    data = data_suitability(session)
    advice = strategy_advice(session, names, probe_steps, power_watts, grid_g_per_kwh, log)
    transfer = transferability(session, max_feature_rows, folds, log)
    verdict, risk, sentence = transfer_verdict(transfer)
    findings = [sentence] + _data_findings(data, advice)
    device = "cuda" if recipe.training.device != "cpu" and _cuda() else "cpu"
    return AdviceReport(
        model=recipe.model.name or f"config:{recipe.model.config.get('model_type')}", task=session.task.name,
        data=data, strategies=advice, transferability=transfer, findings=findings, transfer_verdict=verdict,
        transfer_risk=risk, seconds=round(time.perf_counter() - started, 2),
        cost_method={
            "flops": "per token: 2N forward + 2N_backprop activation gradients + 2N_trainable weight gradients "
                     "(N: weights of the modules that ran, embedding tables left out; N_backprop: weights of the "
                     "modules whose input required a gradient, traced on the first probe step, or without a probe "
                     "the parameters from the first trainable one on), times the padded tokens of one epoch "
                     "with the recipe's batching (attention's sequence-length term left out)",
            "seconds": f"mean of {probe_steps} real optimizer steps (after a warm-up step) on random batches of "
                       f"the recipe's batch size, scaled by the epoch's padded tokens",
            "memory": "estimate (weights + gradients + AdamW state + activations, see adaptkit plan); measured "
                      "peak only on a GPU",
            "energy": describe_power(power_watts, device),
        })


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def render(report: AdviceReport) -> list[Any]:
    """Rich renderables: findings, the data table, transferability and the per-strategy table."""
    from rich.panel import Panel
    from rich.table import Table

    parts: list[Any] = []
    colour = {"transfer likely helps": "green", "risk of negative transfer": "red"}.get(report.transfer_verdict,
                                                                                      "yellow")
    parts.append(Panel("\n".join(f"- {f}" for f in report.findings), title=f"[{colour}]{report.transfer_verdict}"
                       f"[/{colour}] ({report.model}, {report.task})"))
    data = Table("data", "value", title="data suitability")
    for key, value in report.data.items():
        data.add_row(key.replace("_", " "), str(value))
    parts.append(data)
    transfer = report.transferability
    if "skipped" not in transfer:
        table = Table("weights", "LogME", "H-score", f"probe accuracy ({transfer['folds']}-fold)",
                      title=f"transferability on {transfer['rows']} training rows ({transfer['features']})")
        for kind in ("pretrained", "random"):
            row = transfer[kind]
            table.add_row(kind, f"{row['logme']:.4f}", f"{row['h_score']:.3f}",
                          "-" if row["probe_accuracy"] is None else f"{row['probe_accuracy']:.3f}")
        parts.append(table)
    cost = Table("strategy", "trainable", "per example", "GFLOPs/epoch", "s/epoch", "Wh/epoch", "est. memory",
                 "note", title="strategies: size against data, cost per epoch")
    for s in report.strategies:
        if s.skipped:
            cost.add_row(s.strategy, "-", "-", "-", "-", "-", "-", f"[yellow]skipped: {s.skipped}[/yellow]")
            continue
        cost.add_row(s.strategy, f"{s.trainable:,}", f"{s.params_per_example:,.0f}",
                     "-" if s.flops_per_epoch is None else f"{s.flops_per_epoch / 1e9:,.3g}",
                     "-" if s.seconds_per_epoch is None else f"{s.seconds_per_epoch:,.1f}",
                     "-" if s.energy_wh_per_epoch is None else f"{s.energy_wh_per_epoch:.3f}",
                     "-" if s.peak_memory_estimate_bytes is None else f"{s.peak_memory_estimate_bytes / 2**20:,.0f} MiB",
                     ("too many parameters for the data" if not s.fits_data else "fits the data")
                     + (f"; not timed: {s.probe_error}" if s.probe_error else ""))
    parts.append(cost)
    return parts


def default_output(recipe: Recipe) -> Path:
    """Where ``adaptkit advise`` writes its JSON by default: ``<output.dir>-advice.json``."""
    out = Path(recipe.output.dir)
    return out.with_name(out.name + "-advice.json")

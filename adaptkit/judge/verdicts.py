"""The two verdicts of ``compare``, and the sentences that state them.

Transfer is judged against two references, at every training-set size, each by a *paired*
bootstrap of the metric difference (the same resampled eval rows for both arms):

- against **scratch**, the same architecture from random weights: whether the pretrained weights
  help at all. Below zero is negative transfer, as the literature defines it.
- against **the best model trained without pretraining**: the best of scratch and the baselines
  (``adaptkit.Baseline`` plugins: a bag-of-words model, a pixel-level linear model, a third
  party's). That is what a practitioner would otherwise ship, so the headline answers with it,
  and with what transfer costs in energy and wall time against it.

An arm flagged "did not learn" (it predicts one class) never counts as the best transfer arm
unless every one did not learn, and never as the best model without pretraining: when nothing
without pretraining learned, there is no practical verdict, and the verdict against scratch says
that its gap is to an untrained model.

The metric fits the data: with imbalanced classes accuracy flatters a model that predicts the
commonest class, so the verdict uses macro-F1 there (``verdict_metric``) and says which metric
decided. Every number in a sentence comes from the table and the paired intervals.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

from adaptkit.judge.curves import percentile_interval
from adaptkit.judge.tuning import SCRATCH
VERDICTS = ("positive transfer", "no clear difference", "negative transfer")
PRACTICAL = ("transfer pays", "no clear gain", "transfer loses")
NOT_JUDGED = "not judged"
# Above this ratio of the commonest to the rarest class, accuracy is a poor verdict metric
# (advise warns from the same ratio): a constant prediction scores the commonest class's share.
IMBALANCE_LIMIT = 3.0
BALANCED_METRIC = "macro_f1"


def imbalance_ratio(targets: Sequence[Any]) -> Optional[float]:
    """Commonest over rarest class count among single-label targets; None for other targets."""
    classes = [t for t in targets if isinstance(t, int) and not isinstance(t, bool)]
    if not classes or len(classes) != len(targets):
        return None
    counts = Counter(classes)
    return max(counts.values()) / max(min(counts.values()), 1)


def verdict_metric(primary: str, metric_names: Sequence[str], targets: Sequence[Any]) -> tuple[str, str]:
    """(metric, why): the task's primary metric, or macro-F1 when the classes are imbalanced.

    The rule lives here once: ``compare`` judges with it and the baselines choose their
    regularisation by it.
    """
    ratio = imbalance_ratio(targets)
    if ratio is not None and ratio > IMBALANCE_LIMIT and BALANCED_METRIC in metric_names and primary != BALANCED_METRIC:
        return BALANCED_METRIC, (f"classes are imbalanced ({ratio:.1f} : 1 in the training rows, above "
                                 f"{IMBALANCE_LIMIT:g} : 1): {BALANCED_METRIC} decides, since {primary} flatters "
                                 f"a model that predicts the commonest class")
    return primary, f"the task's {primary}"


def _best(rows: list[Any], greater: bool) -> Optional[Any]:
    """The best row by metric, skipping rows flagged "did not learn" unless every one is."""
    if not rows:
        return None
    learned = [r for r in rows if "did not learn" not in r.flags] or rows
    return max(learned, key=lambda r: r.metric if greater else -r.metric)


def paired_difference(best: Any, other: Any, replicates: dict[tuple, list[float]], greater: bool) -> dict[str, Any]:
    """``best - other`` (signed so that positive favours ``best``) with its paired-bootstrap 95% interval."""
    sign = 1.0 if greater else -1.0
    diffs = [sign * (a - b) for a, b in zip(replicates[(best.strategy, best.size)],
                                             replicates[(other.strategy, other.size)])]
    low, high = percentile_interval(diffs)
    point = sign * (best.metric - other.metric)
    return {"difference": round(point, 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
            "sign": 1 if low > 0 else -1 if high < 0 else 0}


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return round(numerator / denominator, 2) if denominator and denominator > 0 else None


def verdicts_by_size(rows: list[Any], replicates: dict[tuple, list[float]], greater: bool, metric: str,
                     kinds: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    """Per size: the best transfer arm against scratch and against the best arm without pretraining.

    ``kinds[name]`` is ``transfer``, ``scratch`` or ``baseline``; ``labels[name]`` names an arm in a
    sentence ("a bag-of-words model"). Returns ``per_size`` and the verdicts at the largest size
    judged: ``verdict`` (against scratch), ``practical_verdict`` (against the best without
    pretraining), the one-sentence ``headline`` and the longer ``detail``.
    """
    per_size = []
    sizes = sorted({r.size for r in rows}, key=lambda s: (s is None, s or 0))
    for size in sizes:
        cells = [r for r in rows if r.size == size]
        best = _best([r for r in cells if kinds.get(r.strategy) == "transfer"], greater)
        if best is None:
            continue
        entry: dict[str, Any] = {"size": size, "train_examples": best.train_examples,
                                 "best_transfer": best.strategy, "best_metric": best.metric,
                                 "best_flags": list(best.flags)}
        scratch = next((r for r in cells if kinds.get(r.strategy) == "scratch"), None)
        if scratch is not None:
            versus = paired_difference(best, scratch, replicates, greater)
            entry["versus_scratch"] = {**versus, "reference": scratch.strategy, "reference_metric": scratch.metric,
                                       "reference_flags": list(scratch.flags),
                                       "verdict": VERDICTS[{1: 0, 0: 1, -1: 2}[versus["sign"]]]}
        # a reference that predicts one class is no alternative a user would ship: only arms that learned
        without = _best([r for r in cells if kinds.get(r.strategy) in ("scratch", "baseline")
                         and "did not learn" not in r.flags], greater)
        if without is not None:
            versus = paired_difference(best, without, replicates, greater)
            entry["versus_best_without_pretraining"] = {
                **versus, "reference": without.strategy, "reference_kind": kinds[without.strategy],
                "reference_metric": without.metric, "reference_flags": list(without.flags),
                "energy_ratio": _ratio(best.energy_wh, without.energy_wh),
                "time_ratio": _ratio(best.wall_seconds, without.wall_seconds),
                "verdict": PRACTICAL[{1: 0, 0: 1, -1: 2}[versus["sign"]]]}
        per_size.append(entry)
    judged = [p for p in per_size if "versus_scratch" in p or "versus_best_without_pretraining" in p]
    if not judged:
        return {"per_size": per_size, "verdict": NOT_JUDGED, "practical_verdict": NOT_JUDGED,
                "headline": "Not judged: compare needs at least one transfer strategy and scratch or a baseline.",
                "detail": "compare needs 'scratch' or a baseline, and at least one transfer strategy, for a verdict"}
    last = judged[-1]
    scratch_side = last.get("versus_scratch")
    practical = last.get("versus_best_without_pretraining")
    return {"per_size": per_size,
            "verdict": scratch_side["verdict"] if scratch_side else NOT_JUDGED,
            "practical_verdict": practical["verdict"] if practical else NOT_JUDGED,
            "headline": headline(last, metric, labels),
            "detail": detail(last, metric, greater, labels)}




def _times(ratio: Optional[float]) -> str:
    if ratio is None:
        return "an unmeasured multiple of"
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def _interval(side: dict[str, Any]) -> str:
    return f"{side['difference']:+.3f} [{side['ci_low']:+.3f}, {side['ci_high']:+.3f}]"


def headline(entry: dict[str, Any], metric: str, labels: dict[str, str]) -> str:
    """The user's question answered in one sentence, at the largest size judged.

    Against the best model trained without pretraining when there is one that learned (what the
    user would otherwise ship); against scratch otherwise, saying when scratch did not learn.
    """
    best, rows = entry["best_transfer"], f"{entry['train_examples']:,} rows"
    practical, scratch = entry.get("versus_best_without_pretraining"), entry.get("versus_scratch")
    if practical:
        other = labels.get(practical["reference"], practical["reference"])
        cost = f"{_times(practical['energy_ratio'])} the energy"
        if practical["verdict"] == PRACTICAL[0]:
            sentence = f"{best} beats {other} by {_interval(practical)} {metric} at {rows}, for {cost}."
        elif practical["verdict"] == PRACTICAL[1]:
            sentence = (f"No clear gain for {best} over {other} at {rows} ({_interval(practical)} {metric}), "
                        f"at {cost}: transfer does not pay here.")
        else:
            sentence = (f"{other[0].upper() + other[1:]} beats {best} by {-practical['difference']:.3f} {metric} at "
                        f"{rows} ({_interval(practical)}): transfer does not pay here, and costs {cost}.")
        if practical["reference_flags"]:
            sentence += f" ({other} {' and '.join(practical['reference_flags'])}.)"
        return sentence
    if scratch:
        sentence = {VERDICTS[0]: f"{best} beats the same model from random weights by {_interval(scratch)} {metric} "
                                 f"at {rows}.",
                    VERDICTS[1]: f"No clear difference between {best} and the same model from random weights at "
                                 f"{rows} ({_interval(scratch)} {metric}).",
                    VERDICTS[2]: f"Negative transfer: the same model from random weights beats {best} at {rows} "
                                 f"({_interval(scratch)} {metric})."}[scratch["verdict"]]
        if scratch["reference_flags"]:
            sentence += (" Scratch did not learn here, so this is a gap to an untrained model, not evidence that "
                         "transfer pays: add a baseline (adaptkit plugins lists them) for a verdict that holds.")
        return sentence
    return "Not judged."


def detail(entry: dict[str, Any], metric: str, greater: bool, labels: dict[str, str]) -> str:
    """Both verdicts in full at one size: the scores, the paired intervals, what each means, the cost."""
    better = "higher" if greater else "lower"
    parts = []
    scratch = entry.get("versus_scratch")
    if scratch:
        parts.append(
            f"Against the same architecture from random weights (scratch, {metric} {scratch['reference_metric']:.4f}): "
            f"{entry['best_transfer']} scores {entry['best_metric']:.4f}, a paired difference of {_interval(scratch)} "
            f"({better} is better): {scratch['verdict']}. "
            + {VERDICTS[0]: "The pretrained weights help.",
               VERDICTS[1]: "On this evidence the pretrained weights neither clearly help nor clearly hurt.",
               VERDICTS[2]: "The pretrained weights hurt: negative transfer."}[scratch["verdict"]])
        if scratch["reference_flags"]:
            parts.append(f"Scratch {' and '.join(scratch['reference_flags'])} at this size, so this gap is to a "
                         f"baseline that did not train; read the verdict against the best model without "
                         f"pretraining instead.")
    practical = entry.get("versus_best_without_pretraining")
    if practical:
        other = labels.get(practical["reference"], practical["reference"])
        parts.append(
            f"Against the best model trained without pretraining ({practical['reference']}: {other}, {metric} "
            f"{practical['reference_metric']:.4f}): {_interval(practical)}: {practical['verdict']}; "
            f"{entry['best_transfer']} costs {_times(practical['energy_ratio'])} the energy and "
            f"{_times(practical['time_ratio'])} the training time.")
    if entry["best_flags"]:
        parts.append(f"Note: {entry['best_transfer']} {' and '.join(entry['best_flags'])}.")
    return " ".join(parts)


def transfer_range(per_size: list[dict[str, Any]], side: str = "versus_best_without_pretraining") -> str:
    """One sentence naming the sizes where transfer paid against ``side``'s reference and where it stopped."""
    judged = [p for p in per_size if side in p]
    if not judged:
        return ""
    positive = VERDICTS[0] if side == "versus_scratch" else PRACTICAL[0]
    negative = VERDICTS[2] if side == "versus_scratch" else PRACTICAL[2]
    against = "from scratch" if side == "versus_scratch" else "without pretraining"
    paying = [p["train_examples"] for p in judged if p[side]["verdict"] == positive]
    hurting = [p["train_examples"] for p in judged if p[side]["verdict"] == negative]
    sizes = [p["train_examples"] for p in judged]
    if len(paying) == len(sizes):
        return (f"Transfer pays against the best model {against} at every size tried ({sizes[0]:,} to "
                f"{sizes[-1]:,} training rows).")
    parts = []
    if paying:
        parts.append(f"Transfer pays against the best model {against} at " + ", ".join(f"{n:,}" for n in paying)
                     + " training rows")
        after = [n for n in sizes if n > max(paying)]
        if after:
            parts.append(f"it stops paying from {after[0]:,} rows (no clear gain there)")
    else:
        parts.append(f"Transfer does not clearly pay against the best model {against} at any size tried")
    if hurting:
        parts.append("it loses at " + ", ".join(f"{n:,}" for n in hurting) + " rows")
    return "; ".join(parts) + "."


def compute_saved(rows: list[Any], greater: bool, reference: str = SCRATCH,
                  transfer: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """Energy and rows saved against ``reference`` trained to the same score, stated only when positive.

    For each transfer arm: the smallest size at which it matches the reference's best score, and
    the measured energy of that one training run against the reference's run that reached its
    best. When the arm matches already at the smallest size tried, the rows saved are a lower
    bound. A "saving" that is not positive is reported as no saving, never as a negative one.
    """
    own = [r for r in rows if r.strategy == reference]
    if not own:
        return []
    best_reference = max(own, key=lambda r: r.metric if greater else -r.metric)
    names = sorted(transfer if transfer is not None else {r.strategy for r in rows} - {reference})
    out = []
    for name in names:
        curve = sorted((r for r in rows if r.strategy == name), key=lambda r: r.train_examples)
        reaching = [r for r in curve
                    if (r.metric >= best_reference.metric if greater else r.metric <= best_reference.metric)]
        if not reaching:
            out.append({"strategy": name, "reference": reference, "matches_scratch": False,
                        "note": f"never reached {reference}'s best {best_reference.metric:.4f} at the sizes tried"})
            continue
        first = reaching[0]
        saved = best_reference.energy_wh - first.energy_wh
        out.append({"strategy": name, "reference": reference, "matches_scratch": True,
                    "scratch_best_metric": best_reference.metric, "scratch_examples": best_reference.train_examples,
                    "scratch_energy_wh": best_reference.energy_wh, "examples_needed": first.train_examples,
                    "energy_wh": first.energy_wh, "energy_saved_wh": round(saved, 5) if saved > 0 else None,
                    "energy_ratio": (round(first.energy_wh / best_reference.energy_wh, 4)
                                     if best_reference.energy_wh else None),
                    "examples_saved": max(best_reference.train_examples - first.train_examples, 0),
                    "lower_bound": first.train_examples == curve[0].train_examples})
    return out

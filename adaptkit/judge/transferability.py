"""Do the pretrained features help on this data? Measured before any training, with three honest answers.

The pretrained model's features of the training rows (what the task's head reads: for sequence
classification the pooling of ``task.pooling``; else the mean-pooled last hidden state) are set
against the same architecture's features with random weights, by three measures:

- a 5-fold cross-validated logistic-regression probe (scikit-learn), paired fold by fold;
- LogME (``adaptkit.judge.logme``), the evidence of a Bayesian linear model on the features;
- the H-score with a Ledoit-Wolf shrunk feature covariance (Ibrahim et al. 2022): the plain
  H-score saturates at (classes - 1) for any features, noise included, whenever rows do not
  exceed the feature size. Shrinkage helps, but measured on synthetic features (one
  informative direction among 384) the shrunk score still cannot tell noise from signal until
  rows reach about twice the feature size: below ``H_SCORE_ROWS_PER_DIMENSION`` rows per
  feature dimension the score is withheld with the reason.

The outcome is one of three, never more than the figures carry:

- "features favour transfer": the probe is clearly better on pretrained features (by more than
  two standard errors and two points) and LogME agrees;
- "features cannot tell": neither clearly better, whether both are weak or both are strong (an
  easy, lexical task separates under random features too). Fine-tuning decides: run compare;
- "features suggest harm": pretrained features are clearly worse than random ones on both.

The probe's learning curve (accuracy at a quarter, a half and all of the rows) backs the
data-size advice with a measurement instead of a parameter count.

A task whose labels are numbers (regression) gets the same three answers from a probe that is
a regressor, not a classifier: ridge regression (its alpha by an inner 3-fold CV) scored by the
Spearman correlation of each held-out fold, LogME of the standardised target (the paper's
regression form), and no H-score (it is defined over classes). The probe's metric is named in
the result (``probe_metric``) and every figure and sentence reads it from there.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

FAVOUR, CANNOT_TELL, HARM = "features favour transfer", "features cannot tell", "features suggest harm"
NOT_ASSESSED = "not assessed"
H_SCORE_ROWS_PER_DIMENSION = 2
MARGIN = 0.02  # probe accuracy points a difference must exceed (besides two standard errors)
STRONG_PROBE = 0.9  # both probes above this: an easy task for any features
CURVE_GAIN = 0.02  # probe gain from half to all rows above which more data is likely to help


def extract_features(model: Any, dataset: Any, collate: Callable, batch_size: int,
                     task: Any = None) -> tuple[Any, Any]:
    """The features the task's head reads (``task.head_features``: a sequence head's pooling) and
    integer labels, as numpy arrays; mean-pooled last hidden states (attention mask respected)
    for a task that does not say.

    Rows are fed in length order (far less padding) and put back in dataset order.
    """
    import numpy as np
    import torch

    lengths = dataset["length"] if "length" in dataset.column_names else None
    order = sorted(range(len(dataset)), key=lengths.__getitem__) if lengths is not None else list(range(len(dataset)))
    ordered = dataset.select(order)
    model.eval()
    features, labels = [], []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            columns = ordered[start:start + batch_size]  # one slice read, not one read per row
            batch = collate([dict(zip(columns, values)) for values in zip(*columns.values())])
            labels.append(batch.pop("labels").numpy())
            own = task.head_features(model, batch) if task is not None else None
            if own is not None:
                features.append(own.float().cpu().numpy())
                continue
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
            mask = batch.get("attention_mask")
            if mask is None or hidden.ndim != 3:
                pooled = hidden.mean(dim=1) if hidden.ndim == 3 else hidden
            else:
                mask = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            features.append(pooled.numpy())
    restore = np.argsort(np.array(order))
    return np.concatenate(features)[restore], np.concatenate(labels)[restore]


# Regularisation strengths the probe chooses among, by 3-fold CV inside each outer fold. A fixed C = 1 on
# 384 standardised features and 400 rows overfits: on 1,000 SST-2 rows it scored 0.74 where a head
# trained on the same mean-pooled features reaches 0.795 on dev, so advise undersold the features.
PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def probe_accuracy(features: Any, labels: Any, folds: int = 5, seed: int = 0) -> Optional[list[float]]:
    """Per-fold accuracy of a standardised logistic regression (stratified K-fold), its C chosen by an inner
    3-fold CV on each outer fold's training rows; None if a class is too rare."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min()) if labels.size else 0
    folds = min(folds, smallest)
    if folds < 2:
        return None
    scores = []
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        inner = min(3, int(np.bincount(labels[train_idx]).min()))
        model = (LogisticRegressionCV(Cs=list(PROBE_CS), cv=inner, max_iter=2000) if inner >= 2
                 else LogisticRegression(max_iter=2000))
        probe = make_pipeline(StandardScaler(), model)
        probe.fit(features[train_idx], labels[train_idx])
        scores.append(float(probe.score(features[test_idx], labels[test_idx])))
    return scores


RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def is_numeric_target(labels: Any) -> bool:
    """Whether the labels are numbers to regress (floats), not class indices."""
    import numpy as np

    return np.asarray(labels).dtype.kind == "f"


def probe_spearman(features: Any, targets: Any, folds: int = 5, seed: int = 0) -> Optional[list[float]]:
    """Per-fold Spearman correlation of a standardised ridge regression's held-out predictions (K-fold),
    its alpha chosen by an inner 3-fold CV; None with fewer than 4 rows a fold. A constant fold
    (no ranking information) scores 0."""
    import numpy as np
    from scipy import stats
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    targets = np.asarray(targets, dtype=np.float64)
    folds = min(folds, len(targets) // 4)
    if folds < 2:
        return None
    scores = []
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=seed).split(features):
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=list(RIDGE_ALPHAS), cv=3))
        probe.fit(features[train_idx], targets[train_idx])
        predicted, actual = probe.predict(features[test_idx]), targets[test_idx]
        constant = np.ptp(predicted) == 0 or np.ptp(actual) == 0
        value = 0.0 if constant else float(stats.spearmanr(predicted, actual)[0])
        scores.append(value if math.isfinite(value) else 0.0)
    return scores


def probe_scores(features: Any, labels: Any, folds: int = 5, seed: int = 0) -> tuple[str, Optional[list[float]]]:
    """(metric, per-fold scores) of the probe the labels call for: a classifier's accuracy for classes,
    a ridge regression's Spearman correlation for numbers."""
    if is_numeric_target(labels):
        return "spearman", probe_spearman(features, labels, folds, seed)
    return "accuracy", probe_accuracy(features, labels, folds, seed)


def probe_curve(features: Any, labels: Any, folds: int, seed: int) -> list[dict[str, Any]]:
    """The probe's score on a quarter, a half and all of the rows (nested subsets, stratified for classes)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    points = []
    n = len(labels)
    numeric = is_numeric_target(labels)
    for share in (0.25, 0.5):
        count = int(n * share)
        if count < (20 if numeric else 4 * len(np.unique(labels))):
            continue
        try:
            index, _ = train_test_split(np.arange(n), train_size=count, random_state=seed,
                                        stratify=None if numeric else labels)
        except ValueError:
            continue
        metric, scores = probe_scores(features[index], labels[index], folds, seed)
        if scores:
            points.append({"rows": count, f"probe_{metric}": round(float(np.mean(scores)), 4)})
    return points


def transferability(session: Any, max_rows: int, folds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """LogME, shrunk H-score and probe accuracy for pretrained and random weights, and the probe's curve."""
    import numpy as np

    from adaptkit.judge.logme import h_score, logme, logme_single
    from adaptkit.engine.models import build_model

    recipe = session.recipe
    data = session.train_data
    if recipe.model.name is None:
        return {"skipped": "the model is built from model.config: there are no pretrained weights to judge"}
    if recipe.model.init == "random":  # its "pretrained" features would be a second random draw (as compare refuses)
        return {"skipped": "model.init is random: there are no pretrained weights to judge"}
    if "labels" not in data.column_names or not data or not isinstance(data[0]["labels"], (int, float)):
        return {"skipped": "needs one class label or one number per example (classification or regression)"}
    if len(data) > max_rows:
        data = data.shuffle(seed=recipe.training.seed).select(range(max_rows))
    collate = session.task.collate(session.tokenizer)
    random_recipe = recipe.model_copy(deep=True)
    random_recipe.model.init = "random"
    result: dict[str, Any] = {"rows": len(data), "folds": folds,
                              "features": session.task.describe_features() or "mean-pooled last hidden state"}
    fold_scores = {}
    for kind, source_recipe in (("pretrained", recipe), ("random", random_recipe)):
        started = time.perf_counter()
        model = build_model(source_recipe, session.task, session.tokenizer, session.source, recipe.training.seed)
        features, labels = extract_features(model, data, collate, recipe.training.eval_batch_size, session.task)
        del model
        metric, scores = probe_scores(features, labels, folds, recipe.training.seed)
        numeric = is_numeric_target(labels)
        result["probe_metric"] = metric
        fold_scores[kind] = scores
        enough = not numeric and len(labels) >= H_SCORE_ROWS_PER_DIMENSION * features.shape[1]
        if numeric:  # LogME's regression form: the evidence for the standardised target
            target = (labels - labels.mean()) / max(float(labels.std()), 1e-12)
            evidence = logme_single(features.astype(np.float64), target.astype(np.float64)).logme
        else:
            evidence = logme(features, labels)
        result[kind] = {"logme": round(float(evidence), 5),
                        "h_score": round(h_score(features, labels), 5) if enough else None,
                        f"probe_{metric}": round(float(np.mean(scores)), 4) if scores else None,
                        f"probe_fold_{metric}": [round(s, 4) for s in scores] if scores else None,
                        "seconds": round(time.perf_counter() - started, 2)}
        if numeric:
            result["h_score_withheld"] = "the H-score is defined over classes; the labels are numbers"
        elif not enough:
            result["h_score_withheld"] = (f"{len(labels)} rows for {features.shape[1]} feature dimensions: the "
                                          f"H-score needs at least {H_SCORE_ROWS_PER_DIMENSION} rows per dimension "
                                          f"to tell features from noise")
        if kind == "pretrained":
            result["probe_curve"] = probe_curve(features, labels, folds, recipe.training.seed) + (
                [{"rows": len(labels), f"probe_{metric}": result[kind][f"probe_{metric}"]}] if scores else [])
        log(f"advise: {kind} features: LogME {result[kind]['logme']:.4f}, probe {metric} "
            f"{result[kind][f'probe_{metric}']}")
    if fold_scores["pretrained"] and fold_scores["random"]:
        diffs = np.array(fold_scores["pretrained"]) - np.array(fold_scores["random"])  # same folds: paired
        se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
        result["probe_difference"] = {"mean": round(float(diffs.mean()), 4), "standard_error": round(se, 4)}
    return result


def transfer_verdict(result: dict[str, Any]) -> tuple[str, Optional[bool], str]:
    """(outcome, risk, sentence): one of the three outcomes in the module docstring, with its figures."""
    if "skipped" in result:
        return NOT_ASSESSED, None, f"Transferability not assessed: {result['skipped']}."
    pre, rnd = result["pretrained"], result["random"]
    metric = result.get("probe_metric", "accuracy")
    score = f"probe_{metric}"
    logme_diff = pre["logme"] - rnd["logme"]
    figures = f"LogME {pre['logme']:.3f} vs {rnd['logme']:.3f}"
    difference = result.get("probe_difference")
    if difference:
        margin = max(2 * difference["standard_error"], MARGIN)
        figures = (f"linear-probe {metric} {pre[score]:.3f} vs {rnd[score]:.3f} "
                   f"({difference['mean']:+.3f} ± {difference['standard_error']:.3f} over {result['folds']} folds), "
                   + figures)
        better = difference["mean"] > margin and logme_diff > 0
        worse = difference["mean"] < -margin and logme_diff < 0
    else:
        better, worse = logme_diff > 0.01, logme_diff < -0.01
    where = "pretrained vs the same architecture with random weights"
    what = "predict the target" if metric != "accuracy" else "separate the classes"
    if better:
        return (FAVOUR, False, f"The features favour transfer: pretrained features {what} clearly "
                               f"better than random ones ({where}: {figures}).")
    if worse:
        return (HARM, True, f"The features suggest harm: pretrained features {what} clearly WORSE "
                            f"than random ones ({where}: {figures}). Expect training from scratch to match or beat "
                            f"fine-tuning; confirm with `adaptkit compare`.")
    both = [p for p in (pre.get(score), rnd.get(score)) if p is not None]
    kind = (f"both {what} well: the task is easy for any features" if both and min(both) >= STRONG_PROBE
            else "neither is clearly better")
    return (CANNOT_TELL, None, f"The features cannot tell: {kind} ({where}: {figures}). That is not evidence "
                               f"against transfer; fine-tuning decides. Run `adaptkit compare` with scratch to "
                               f"find out.")


def curve_finding(result: dict[str, Any]) -> Optional[str]:
    """The data-size advice the probe's learning curve backs, in words with its figures."""
    curve = result.get("probe_curve") or []
    if len(curve) < 2:
        return None
    metric = result.get("probe_metric", "accuracy")
    score = f"probe_{metric}"
    half = next((p for p in curve if p["rows"] * 2 >= curve[-1]["rows"] * 0.9 and p is not curve[-1]), curve[-2])
    gain = curve[-1][score] - half[score]
    points = ", ".join(f"{p[score]:.3f} at {p['rows']}" for p in curve)
    if gain > CURVE_GAIN:
        return (f"A linear probe on the pretrained features still gains {gain:+.3f} {metric} from {half['rows']} to "
                f"{curve[-1]['rows']} rows ({points}): more labelled data is likely to help.")
    return (f"A linear probe on the pretrained features has levelled off ({points}; {gain:+.3f} from "
            f"{half['rows']} to {curve[-1]['rows']} rows): more data helps a probe little; fine-tuning may still "
            f"gain from it.")

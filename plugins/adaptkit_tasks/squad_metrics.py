"""SQuAD's exact match and F1, with SQuAD's answer normalisation, and SQuAD 2.0's split by answerability.

Written here rather than imported: the official script (``evaluate``'s "squad" / "squad_v2"
metrics) is fetched from the Hugging Face Hub at load time, which an offline install cannot do,
and no maintained package installed with adaptkit ships it. The rules follow the official
SQuAD v2.0 evaluation script line for line: lowercase, drop punctuation, drop the articles
"a", "an", "the", collapse whitespace; F1 over the bag of normalised words; the best score over
the gold answers; an unanswerable question (no gold answer) scores 1 exactly when the
prediction is empty.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, articles and extra whitespace (SQuAD's ``normalize_answer``)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 over the normalised words; two empty answers agree (1.0), one empty one does not (0.0)."""
    predicted, actual = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not actual:
        return float(predicted == actual)
    common = collections.Counter(predicted) & collections.Counter(actual)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(actual)
    return 2 * precision * recall / (precision + recall)


def best_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against the best of its gold answers; no gold answer
    (unanswerable) counts as the one gold answer ''."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def squad_scores(predictions: Iterable[str], golds: Iterable[Sequence[str]], splits: bool = False) -> dict[str, float]:
    """``exact_match`` and ``f1`` in [0, 1] (means over the questions), and with ``splits`` the same over
    the answerable (``has_answer_*``) and unanswerable (``no_answer_*``) questions, each only when
    there are some (SQuAD 2.0's HasAns / NoAns)."""
    scores: dict[str, list[float]] = collections.defaultdict(list)
    for prediction, gold in zip(predictions, golds):
        em, f1 = best_scores(prediction, gold)
        kinds = [""] + ([("has_answer_" if any(normalize_answer(g) for g in gold) else "no_answer_")] if splits else [])
        for kind in kinds:
            scores[kind + "exact_match"].append(em)
            scores[kind + "f1"].append(f1)
    return {"exact_match": 0.0, "f1": 0.0, **{name: sum(v) / len(v) for name, v in scores.items()}}

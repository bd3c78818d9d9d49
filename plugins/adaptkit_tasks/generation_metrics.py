"""Scores of generated text against one or more references: BLEU, chrF, ROUGE-L and CIDEr-D.

Every task that generates text (``seq2seq``, image captioning) reports these, so they live here
once. All four are corpus scores of the whole eval set; a prediction may have several references
(a captioning set has five captions per image), and the number may differ from row to row.

Scales: ``bleu``, ``chrf`` and ``rougeL`` lie in [0, 1] (sacrebleu's 0-100 divided by 100), so that
``1 - metric`` is an error, as the judge's learning curves read it. ``cider`` keeps the scale of the
COCO caption evaluation (its factor of 10 included: a model scoring 1.2 here is the "120" of papers).

- BLEU and chrF: sacrebleu (its 13a tokenizer, exponential smoothing; chrF with character 6-grams,
  beta 2). Rows with fewer references than others are padded with None, which sacrebleu skips.
- ROUGE-L: rouge-score's longest-common-subsequence F-measure, the best over a row's references,
  averaged over rows. Its default tokenizer keeps only ``[a-z0-9]``, so a German or Chinese target
  would score zero; the tokenizer here lowercases and keeps Unicode word characters instead.
- CIDEr-D: written here, see ``cider_d``.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Optional

SCORE_NAMES = ("bleu", "chrf", "rougeL", "cider")
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased Unicode word tokens, punctuation dropped (ROUGE-L and CIDEr-D tokenize with it)."""
    return _WORD.findall(text.lower())


class _WordTokenizer:
    """rouge-score's tokenizer interface (``tokenize(text) -> list[str]``) over ``words``."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists: one list per prediction")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")


def _streams(references: list[list[str]]) -> list[list[Optional[str]]]:
    """sacrebleu's layout: one stream per reference position, each as long as the corpus, None where a row has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def bleu(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU in [0, 1] (sacrebleu's defaults)."""
    from sacrebleu.metrics import BLEU

    return min(1.0, BLEU().corpus_score(predictions, _streams(references)).score / 100.0)


def chrf(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus chrF in [0, 1] (sacrebleu's defaults: character 6-grams, beta 2)."""
    from sacrebleu.metrics import CHRF

    return min(1.0, CHRF().corpus_score(predictions, _streams(references)).score / 100.0)


def rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    """Mean over rows of the best ROUGE-L F-measure against that row's references."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    if not predictions:
        return 0.0
    return sum(scorer.score_multi(refs, pred)["rougeL"].fmeasure
               for pred, refs in zip(predictions, references)) / len(predictions)


def _ngrams(tokens: list[str], n_max: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1))


def _tfidf(counts: Counter, df: Counter, log_docs: float, n_max: int) -> tuple[list[dict], list[float], int]:
    """Per n-gram order: the TF-IDF vector, its norm; and the text's length (counted in bigrams, as the reference code does)."""
    vec: list[dict] = [{} for _ in range(n_max)]
    norm = [0.0] * n_max
    length = 0
    for gram, tf in counts.items():
        n = len(gram) - 1
        vec[n][gram] = tf * (log_docs - math.log(max(1.0, df[gram])))
        norm[n] += vec[n][gram] ** 2
        if n == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def cider_d(predictions: list[str], references: list[list[str]], n_max: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as the COCO caption evaluation computes it).

    For n = 1..4, each text is a TF-IDF vector of its n-grams, the document frequency counted over
    the rows' reference sets; a prediction's score against one reference is the cosine of their
    vectors with the prediction's weights clipped at the reference's (no gain from repeating a
    word), times a Gaussian penalty exp(-(length difference)^2 / (2 sigma^2)). It is averaged over
    n and over the row's references, times 10, and averaged over rows.

    Written here because no installed, maintained package computes it offline: pycocoevalcap
    needs Java for its PTB tokenizer (and its CIDEr copies this same code), torchmetrics and
    evaluate do not provide CIDEr. Tokens are ``words`` (lowercase, punctuation dropped), close to
    the PTB tokenizer's output on English captions, so scores match the reference code on
    pre-tokenized lowercase text and are close to it otherwise.
    """
    _check(predictions, references)
    if not predictions:
        return 0.0
    ref_counts = [[_ngrams(words(r), n_max) for r in refs] for refs in references]
    df: Counter = Counter()
    for counts in ref_counts:
        df.update(set(gram for c in counts for gram in c))
    log_docs = math.log(float(len(references)))
    total = 0.0
    for pred, counts in zip(predictions, ref_counts):
        vec_h, norm_h, len_h = _tfidf(_ngrams(words(pred), n_max), df, log_docs, n_max)
        row = 0.0
        for ref in counts:
            vec_r, norm_r, len_r = _tfidf(ref, df, log_docs, n_max)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma ** 2))
            for n in range(n_max):
                val = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_h[n].items())
                if norm_h[n] != 0 and norm_r[n] != 0:
                    val /= norm_h[n] * norm_r[n]
                row += val * penalty / n_max
        total += row / len(counts) * 10.0
    return total / len(predictions)


def text_scores(predictions: list[str], references: list[list[str]],
                metrics: Iterable[str] = SCORE_NAMES) -> dict[str, float]:
    """``bleu``, ``chrf``, ``rougeL`` and ``cider`` (or those of ``metrics``) of ``predictions``, one
    list of references per prediction."""
    _check(predictions, references)
    wanted = list(metrics)
    unknown = [m for m in wanted if m not in SCORE_NAMES]
    if unknown:
        raise ValueError(f"unknown text metric(s) {unknown}; known: {list(SCORE_NAMES)}")
    compute = {"bleu": bleu, "chrf": chrf, "rougeL": rouge_l, "cider": cider_d}
    return {name: float(compute[name](predictions, references)) for name in wanted}

"""Text scores of generated text (plugins/adaptkit_tasks/generation_metrics.py): BLEU, chrF, ROUGE-L, CIDEr-D."""
from __future__ import annotations

import math

import pytest

from adaptkit_tasks.generation_metrics import SCORE_NAMES, cider_d, text_scores


def test_a_perfect_prediction_scores_one_on_the_bounded_metrics():
    scores = text_scores(["the cat sat on the mat", "a dog ran in the park"],
                         [["the cat sat on the mat"], ["a dog ran in the park"]])
    assert set(scores) == set(SCORE_NAMES)
    for name in ("bleu", "chrf", "rougeL"):
        assert scores[name] == pytest.approx(1.0)


def test_a_wrong_prediction_scores_below_a_right_one():
    refs = [["the cat sat on the mat"], ["a dog ran in the park"]]
    right = text_scores(["the cat sat on the mat", "a dog ran in the park"], refs)
    wrong = text_scores(["the cat sat on the mat", "blue trains hum loudly"], refs)
    for name in SCORE_NAMES:
        assert wrong[name] < right[name], name
    assert 0.0 <= wrong["bleu"] < 1.0 and 0.0 <= wrong["chrf"] < 1.0
    assert wrong["rougeL"] == pytest.approx(0.5)  # one row perfect, one sharing no word


def test_any_of_several_references_may_match_and_their_number_may_differ():
    refs = [["a b c d e", "the cat sat on the mat"], ["a dog ran in the park"]]
    scores = text_scores(["the cat sat on the mat", "a dog ran in the park"], refs, metrics=["bleu", "rougeL"])
    assert scores == {"bleu": pytest.approx(1.0), "rougeL": pytest.approx(1.0)}


def test_rouge_l_keeps_words_outside_ascii():
    # rouge-score's own tokenizer keeps only [a-z0-9]: "größe" would lose its umlaut and eszett.
    assert text_scores(["die größe straße"], [["die größe straße"]], ["rougeL"])["rougeL"] == pytest.approx(1.0)
    assert text_scores(["die größe straße"], [["die grosse strasse"]], ["rougeL"])["rougeL"] == pytest.approx(1 / 3)


def test_cider_d_by_hand():
    # Two rows with disjoint words: every n-gram has document frequency 1, so its idf is log(2).
    # Row 2 matches exactly on unigrams and bigrams (no 3- or 4-grams): (1 + 1 + 0 + 0) / 4 * 10 = 5.
    assert cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0)
    # Row 1 repeats its words: clipping keeps its weight at the reference's, the cosine falls to 1/3
    # on unigrams and 1/sqrt(13) on bigrams, and 5 bigrams against 1 cost exp(-4^2 / (2 * 6^2)).
    row1 = (1 / 3 + 1 / math.sqrt(13)) / 4 * 10 * math.exp(-16 / 72)
    assert cider_d(["a b a b a b", "c d"], [["a b"], ["c d"]]) == pytest.approx((row1 + 5.0) / 2)


def test_cider_d_averages_over_references_and_ignores_case_and_punctuation():
    one = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert cider_d(["A b.", "c, D"], [["a b"], ["c d"]]) == pytest.approx(one)
    # A second reference the prediction does not match halves that row's score.
    assert cider_d(["a b", "c d"], [["a b", "x y"], ["c d"]]) == pytest.approx((2.5 + 5.0) / 2)


@pytest.mark.parametrize("predictions, references, problem", [
    (["a"], [["a"], ["b"]], "1 predictions but 2"),
    (["a"], [[]], "references\\[0\\]"),
    (["a"], ["a"], "references\\[0\\]"),
])
def test_bad_arguments_are_named(predictions, references, problem):
    with pytest.raises(ValueError, match=problem):
        text_scores(predictions, references)


def test_an_unknown_metric_is_named():
    with pytest.raises(ValueError, match="meteor"):
        text_scores(["a"], [["a"]], ["bleu", "meteor"])

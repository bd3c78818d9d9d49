"""Baselines trained without pretraining: the plugins, their hook, and the verdict against them."""
from __future__ import annotations

import json
import random

import pytest
import torch

from adaptkit import BaselineRows
from adaptkit.judge.compare import SCRATCH, Row
from adaptkit.judge.verdicts import verdict_metric, verdicts_by_size
from adaptkit.recipe.schema import Recipe
from conftest import FILLER, as_checkpoint, tiny_recipe_dict, write_table
from plugin_fixtures import fake_distribution

WORDS = FILLER + ["alpha", "beta", "gamma", "delta"]


def keyword_rows(count: int, seed: int) -> list[dict]:
    """Label 1 exactly when the sentence holds the word "zebra": one keyword decides, nothing else."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = rng.sample(WORDS, 5) + (["zebra"] if label else [])
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _task(**options):
    from adaptkit_tasks.sequence_classification import SequenceClassification

    return SequenceClassification({"text_column": "text", **options})


def _rows(rows, task=None):
    import datasets

    table = datasets.Dataset.from_list(rows)
    targets = [task.labels.index(str(r["label"])) for r in rows] if task else None
    return BaselineRows(rows=table, targets=targets)


def test_ngram_baseline_learns_a_keyword_and_chooses_its_regularisation_by_cross_validation():
    from adaptkit_baselines.ngrams import BagOfNgrams

    train, evaluate = keyword_rows(60, 1), keyword_rows(80, 2)
    task = _task()
    task.setup(_rows(train).rows)
    baseline = BagOfNgrams()
    baseline.fit(task, _rows(train, task), "accuracy", seed=0)
    scores = baseline.scores(task, _rows(evaluate))
    labels = torch.tensor([task.labels.index(str(r["label"])) for r in evaluate])
    assert scores.shape == (80, 2) and torch.isfinite(scores).all()
    assert task.compute_metrics(logits=scores, labels=labels)["accuracy"] == 1.0
    chosen = baseline.summary()
    assert chosen["folds"] == 5 and chosen["C"] in (0.1, 1.0, 10.0, 100.0) and chosen["features"] > 50
    # log-probabilities: each row's scores are a distribution over the two classes
    assert torch.allclose(scores.exp().sum(1), torch.ones(80), atol=1e-4)


def test_ngram_baseline_reads_both_texts_of_a_pair_and_multi_label_rows():
    from adaptkit_baselines.ngrams import BagOfNgrams

    rng = random.Random(0)
    # pairs: the label says whether the second text repeats the first one's keyword
    pairs = []
    for _ in range(80):
        key = rng.choice(["alpha", "beta"])
        same = rng.randint(0, 1)
        pairs.append({"text": f"the {key} story", "other": f"a {key if same else ('beta' if key == 'alpha' else 'alpha')} plot",
                      "label": same})
    task = _task(text_pair_column="other")
    task.setup(_rows(pairs).rows)
    baseline = BagOfNgrams()
    baseline.fit(task, _rows(pairs, task), "accuracy", seed=0)
    assert baseline.columns == ["text", "other"] and baseline.scores(task, _rows(pairs[:10])).shape == (10, 2)
    # multi-label: one keyword per label
    rows = [{"text": " ".join(w for w in ("alpha", "beta") if rng.random() < 0.5) + " film", "label": ""} for _ in range(60)]
    targets = [[float("alpha" in r["text"]), float("beta" in r["text"])] for r in rows]
    multi = _task(multi_label=True, labels=["a", "b"])
    baseline = BagOfNgrams()
    baseline.fit(multi, BaselineRows(rows=_rows(rows).rows, targets=targets), "macro_f1", seed=0)
    logits = baseline.scores(multi, _rows(rows))
    assert logits.shape == (60, 2)
    assert multi.compute_metrics(logits=logits, labels=torch.tensor(targets))["macro_f1"] > 0.95


def test_pixel_baseline_learns_colour_from_the_tasks_pixels():
    import datasets

    from adaptkit_baselines.pixels import DownsampledPixels

    class Images:  # the two things a baseline asks of an image task
        name, labels = "image_classification", ["red", "blue"]

    generator = torch.Generator().manual_seed(0)
    labels = [i % 2 for i in range(40)]
    pixels = torch.rand(40, 3, 16, 16, generator=generator) * 0.5
    for i, label in enumerate(labels):
        pixels[i, 0 if label == 0 else 2] += 0.5  # the class is the dominant channel
    encoded = datasets.Dataset.from_dict({"pixel_values": pixels.numpy().tolist(), "labels": labels})
    data = BaselineRows(rows=encoded, encoded=encoded, targets=labels)
    baseline = DownsampledPixels()
    assert baseline.serves(Images()) is None and baseline.serves(_task()) is not None
    baseline.fit(Images(), data, "accuracy", seed=0)
    predicted = baseline.scores(Images(), data).argmax(1)
    assert predicted.tolist() == labels and baseline.summary()["features"] == 192


THIRD_PARTY_BASELINE = '''
from adaptkit import Baseline, hookimpl

class Majority(Baseline):
    """Predicts the commonest training class: a third party's (poor) baseline."""
    name = "majority_vote"
    label = "the commonest class"
    tasks = ("sequence_classification",)

    def fit(self, task, data, metric, seed):
        self.common = max(set(data.targets), key=data.targets.count)
        self.classes = len(task.labels)

    def scores(self, task, data):
        import torch
        out = torch.full((len(data.rows), self.classes), -5.0)
        out[:, self.common] = 0.0
        return out

@hookimpl
def adaptkit_register_baselines(register):
    register(Majority)
'''


def test_a_third_party_baseline_registers_through_the_hook_and_compare_trains_it(tmp_path, monkeypatch, capsys):
    import sys

    from adaptkit import list_baselines
    from adaptkit.cli import main
    from adaptkit.judge.compare import compare
    from adaptkit.plugin.registry import reset_registry

    root = fake_distribution(tmp_path / "site", "adaptkit-majority", "0.3", {"adaptkit_majority": THIRD_PARTY_BASELINE},
                             {"majority": "adaptkit_majority"})
    monkeypatch.syspath_prepend(str(root))
    reset_registry()
    try:
        assert {"majority_vote", "ngram_linear", "pixel_linear"} <= set(list_baselines())
        assert main(["plugins", "--json"]) == 0
        listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
        assert listed["majority"]["baselines"] == ["majority_vote"]  # adaptkit plugins lists it
        recipe = Recipe.from_dict(as_checkpoint(tiny_recipe_dict(tmp_path, "frozen_head", training={
            "epochs": 1, "num_threads": 1}), tmp_path / "pretrained"))
        # naming a baseline among the strategies chooses exactly that one
        report = compare(recipe, ["frozen_head", "majority_vote"], trials=1, bootstrap_rounds=100, log=lambda _: None)
        assert [r.strategy for r in report.rows] == ["frozen_head", "majority_vote"]
        assert report.arm_kinds["majority_vote"] == "baseline" and "did not learn" in report.rows[1].flags
        # a baseline that predicts one class is no alternative a user would ship: no practical verdict
        assert "versus_best_without_pretraining" not in report.per_size[0]
        assert report.practical_verdict == "not judged"
    finally:
        sys.modules.pop("adaptkit_majority", None)
        reset_registry()


def test_compare_says_no_clear_gain_when_a_bag_of_words_model_is_already_perfect(tmp_path_factory, tmp_path):
    """The issue's acceptance case: one keyword decides the label, so TF-IDF + logistic regression is
    perfect; a pretrained model fine-tuned on the same rows cannot do better, so transfer does not pay."""
    from adaptkit.judge.compare import compare
    from test_advise import sentiment_blind_model

    model_dir = sentiment_blind_model(tmp_path_factory)  # a real (tiny) pretrained BERT
    recipe = tiny_recipe_dict(tmp_path, "full", training={"epochs": 4, "batch_size": 16, "learning_rate": 1e-3,
                                                          "num_threads": 1})
    recipe["model"] = {"name": str(model_dir), "tokenizer": recipe["model"]["tokenizer"]}
    write_table(tmp_path / "train.csv", keyword_rows(120, 1))
    write_table(tmp_path / "eval.csv", keyword_rows(100, 2))
    report = compare(Recipe.from_dict(recipe), ["full", SCRATCH], trials=1, bootstrap_rounds=300,
                     log=lambda _: None)
    by_name = {r.strategy: r for r in report.rows}
    assert by_name["ngram_linear"].metric == 1.0 and by_name["ngram_linear"].kind == "baseline"
    side = report.per_size[0]["versus_best_without_pretraining"]
    assert side["reference"] == "ngram_linear" and side["ci_high"] <= 0.0 + 1e-9
    assert report.practical_verdict in ("no clear gain", "transfer loses")
    assert "transfer does not pay here" in report.headline and "a bag-of-words model" in report.headline.lower()
    energy = {r.strategy: r.energy_wh for r in report.rows}
    assert side["energy_ratio"] == pytest.approx(energy["full"] / energy["ngram_linear"], rel=0.01)
    table = (report.output_dir / "table.md").read_text()
    assert report.headline in table and "ngram_linear (baseline, no pretraining)" in table


def _row(name, kind, metric, energy=1.0, flags=()):
    return Row(strategy=name, size=100, train_examples=100, metric=metric, ci_low=metric - 0.05,
               ci_high=metric + 0.05, trainable=1, wall_seconds=energy * 10, peak_memory_bytes=1, energy_wh=energy,
               g_co2e=0.5, seeds=1, flags=list(flags), kind=kind)


def test_two_verdicts_and_a_headline_that_leans_on_the_baseline_when_scratch_did_not_learn():
    rng = random.Random(0)
    base = [0.70 + rng.gauss(0, 0.01) for _ in range(400)]
    replicates = {("lora", 100): [b + 0.08 + rng.gauss(0, 0.005) for b in base],
                  (SCRATCH, 100): [0.5 + rng.gauss(0, 0.01) for _ in base],
                  ("ngram_linear", 100): base}
    rows = [_row("lora", "transfer", 0.78, energy=3.0), _row(SCRATCH, "scratch", 0.5, flags=["did not learn"]),
            _row("ngram_linear", "baseline", 0.70, energy=0.01)]
    kinds = {r.strategy: r.kind for r in rows}
    found = verdicts_by_size(rows, replicates, True, "accuracy", kinds, {"ngram_linear": "a bag-of-words model"})
    assert found["verdict"] == "positive transfer" and found["practical_verdict"] == "transfer pays"
    side = found["per_size"][0]["versus_best_without_pretraining"]
    assert side["reference"] == "ngram_linear" and side["energy_ratio"] == 300.0 and side["time_ratio"] == 300.0
    assert found["headline"].startswith("lora beats a bag-of-words model by +0.080 [")
    assert found["headline"].endswith("accuracy at 100 rows, for 300x the energy.")
    assert "did not train" in found["detail"]  # the gap to scratch is named as a gap to an untrained model
    # without the baseline, the headline is against scratch and says scratch did not learn
    alone = verdicts_by_size(rows[:2], replicates, True, "accuracy", kinds, {})
    assert alone["verdict"] == "positive transfer" and alone["practical_verdict"] == "not judged"
    assert "gap to an untrained model" in alone["headline"]


def test_a_lower_is_better_metric_and_a_losing_transfer_arm():
    replicates = {("full", 100): [0.30 + 0.001 * i for i in range(200)],
                  ("ngram_linear", 100): [0.20 + 0.001 * i for i in range(200)]}
    rows = [_row("full", "transfer", 0.40), _row("ngram_linear", "baseline", 0.30, energy=0.5)]
    found = verdicts_by_size(rows, replicates, False, "mse", {r.strategy: r.kind for r in rows}, {"ngram_linear": "a bag of words"})
    assert found["practical_verdict"] == "transfer loses" and found["verdict"] == "not judged"
    assert found["per_size"][0]["versus_best_without_pretraining"]["difference"] == pytest.approx(-0.1)
    assert found["headline"].startswith("A bag of words beats full by 0.100 mse")


@pytest.mark.parametrize("targets, metric", [([0] * 87 + [1] * 13, "macro_f1"), ([0] * 60 + [1] * 40, "accuracy"),
                                             ([[1.0, 0.0]] * 10, "accuracy")])
def test_imbalanced_classes_make_macro_f1_decide(targets, metric):
    chosen, why = verdict_metric("accuracy", ("loss", "accuracy", "macro_f1"), targets)
    assert chosen == metric and (("6.7 : 1" in why) == (metric == "macro_f1"))

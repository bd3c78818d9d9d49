"""``adaptkit advise``: data findings, transferability verdicts (negative and positive), the CLI.

The negative case is real: a tiny BERT is pre-trained here on a task that conflicts with the
target. It learns a topic label while being made blind to sentiment (the pooled features of a
sentence and of the same sentence with its sentiment word swapped must agree), so its
features carry no sentiment signal, while the same architecture with random weights does.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from adaptkit.cli import main
from adaptkit.recipe.schema import Recipe
from conftest import (MINILM, NEGATIVE, POSITIVE, REPO, TINY_BERT, sentiment_rows, tiny_recipe_dict, write_recipe,
                      write_table)

_PRETRAINED: dict[str, Path] = {}


def pretrain_sentiment_blind(folder: Path, steps: int = 80, seed: int = 0) -> Path:
    """Pre-train a tiny BERT whose mean-pooled features ignore which sentiment word a sentence holds.

    Objective: predict whether "film" occurs (a topic label) plus a heavy penalty on the
    distance between the features of a sentence and of the same sentence with its sentiment
    word replaced by a random one of either polarity. Saved as a plain ``BertModel``
    (safetensors), so a task head is freshly initialised on top of it.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertModel

    from adaptkit.engine.models import resolve_model_source

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MINILM).location)
        settings = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
        model = BertModel(AutoConfig.for_model("bert", **settings))
        topic = torch.nn.Linear(TINY_BERT["hidden_size"], 2)
        optimizer = torch.optim.AdamW([*model.parameters(), *topic.parameters()], lr=3e-3)
        rng = random.Random(seed)
        sentiment = set(POSITIVE + NEGATIVE)

        def pooled(texts: list[str]):
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            return (hidden * mask).sum(1) / mask.sum(1)

        for step in range(steps):
            texts = [row["text"] for row in sentiment_rows(32, seed=1000 + step)]
            swapped = [" ".join(rng.choice(POSITIVE + NEGATIVE) if w in sentiment else w for w in t.split())
                       for t in texts]
            features = pooled(texts)
            target = torch.tensor([int("film" in t.split()) for t in texts])
            loss = (20 * ((features - pooled(swapped)) ** 2).mean()
                    + torch.nn.functional.cross_entropy(topic(features), target))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.save_pretrained(folder, safe_serialization=True)
        # trained for mean-pooled features, and says so as sentence-transformers checkpoints do: the
        # task's pooling (auto) and advise's probe then read the features it was trained for
        (folder / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    finally:
        torch.set_num_threads(threads)
    return folder


def sentiment_blind_model(tmp_path_factory) -> Path:
    """The pre-trained folder, built once per test session (test_compare uses it too)."""
    if "folder" not in _PRETRAINED:
        _PRETRAINED["folder"] = pretrain_sentiment_blind(tmp_path_factory.mktemp("blind") / "model")
    return _PRETRAINED["folder"]


def negative_recipe(tmp_path: Path, model_dir: Path, train_rows: int = 200, **training) -> dict:
    recipe = tiny_recipe_dict(tmp_path, "full", training={"epochs": 6, "batch_size": 32, "learning_rate": 3e-3,
                                                          "seed": 0, "num_threads": 1, **training})
    recipe["model"] = {"name": str(model_dir), "tokenizer": MINILM}
    write_table(tmp_path / "train.csv", sentiment_rows(train_rows, seed=1))
    write_table(tmp_path / "eval.csv", sentiment_rows(100, seed=2))
    return recipe


@pytest.fixture(scope="module")
def blind_model(tmp_path_factory) -> Path:
    return sentiment_blind_model(tmp_path_factory)


def test_conflicting_pretraining_is_reported_as_negative_transfer_risk(blind_model, tmp_path):
    from adaptkit.judge.advise import advise

    report = advise(Recipe.from_dict(negative_recipe(tmp_path, blind_model)), strategies=["full"], probe_steps=0,
                    log=lambda _: None)
    transfer = report.transferability
    assert report.transfer_verdict == "features suggest harm" and report.transfer_risk is True
    # the figures back the words: random weights separate sentiment, the pre-trained ones do not
    assert transfer["random"]["probe_accuracy"] > 0.85
    assert transfer["pretrained"]["probe_accuracy"] < 0.65
    assert transfer["pretrained"]["logme"] < transfer["random"]["logme"]
    # the bag-of-words baseline, cross-validated on the probe's rows, reads the sentiment words directly
    bag = report.baselines["ngram_linear"]
    assert bag["folds"] == 3 and bag["rows"] == transfer["rows"] and bag["accuracy"] > 0.9
    assert any("fine-tuning must beat" in f and f"{bag['accuracy']:.3f}" in f for f in report.findings)
    assert transfer["probe_difference"]["mean"] < -0.2
    assert "WORSE than random" in report.findings[0]
    assert f"{transfer['pretrained']['probe_accuracy']:.3f}" in report.findings[0]


def test_features_that_cannot_tell_are_never_called_harm(tmp_path):
    """Keyword-labelled text that random features separate as well as 'pretrained' ones (here: another random draw).

    Both probes are strong; the difference is within noise. That is "cannot tell", not a risk of
    negative transfer: fine-tuning decides, and the sentence says to run compare.
    """
    from transformers import AutoConfig, BertModel

    from adaptkit.judge.advise import advise

    settings = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    import torch

    torch.manual_seed(123)
    folder = tmp_path / "random-but-saved"
    BertModel(AutoConfig.for_model("bert", **settings)).save_pretrained(folder, safe_serialization=True)
    recipe = negative_recipe(tmp_path, folder, train_rows=240)
    report = advise(Recipe.from_dict(recipe), strategies=["frozen_head"], probe_steps=0, log=lambda _: None)
    transfer = report.transferability
    assert transfer["pretrained"]["probe_accuracy"] > 0.85 and transfer["random"]["probe_accuracy"] > 0.85
    assert report.transfer_verdict == "features cannot tell" and report.transfer_risk is None
    assert "fine-tuning decides" in report.findings[0] and "adaptkit compare" in report.findings[0]
    assert "harm" not in report.findings[0] and "negative" not in report.findings[0]
    assert [p["rows"] for p in transfer["probe_curve"]] == [60, 120, 240]
    assert any("linear probe on the pretrained features" in f for f in report.findings)


def _messy_rows() -> tuple[list[dict], list[dict]]:
    train = sentiment_rows(60, seed=3)
    for row in train[:45]:
        row["label"] = 1  # imbalance: mostly positive
    train[50] = dict(train[0])  # an exact duplicate
    train[51] = {"text": train[0]["text"], "label": 0}  # same text, other label
    train[12]["text"] = " ".join(["word"] * 80)  # longer than max_length=32 tokens
    evaluation = sentiment_rows(20, seed=4)
    evaluation[0] = dict(train[5])  # leaked into eval
    return train, evaluation


def test_data_findings_name_each_problem_in_plain_words(tmp_path):
    from adaptkit.judge.advise import advise

    train, evaluation = _messy_rows()
    recipe = tiny_recipe_dict(tmp_path, "full")
    write_table(tmp_path / "train.csv", train)
    write_table(tmp_path / "eval.csv", evaluation)
    report = advise(Recipe.from_dict(recipe), strategies=["full", "lora", "frozen_head"], probe_steps=1,
                    log=lambda _: None)
    data = report.data
    assert data["train_examples"] == 60
    assert data["duplicate_train_rows"] == 2 and data["duplicate_rows_with_conflicting_labels"] >= 1
    assert data["eval_rows_also_in_train"] >= 1
    assert data["imbalance_ratio"] > 3
    assert 0 < data["truncated_fraction"] < 0.1
    text = "\n".join(report.findings)
    assert "Only 60 training examples" in text
    assert "imbalanced" in text and "also appear in the training data" in text and "repeat" in text
    by_name = {s.strategy: s for s in report.strategies}
    assert by_name["full"].trainable == by_name["full"].total > 100 * by_name["lora"].trainable
    # no claim from a parameter count: nothing measured says how many weights 60 rows can train
    assert not any("can pin down" in f or f.startswith("Strategy full") for f in report.findings)
    # cost: a frozen backbone needs no backward pass through it, full fine-tuning does (6N vs ~2N)
    assert by_name["full"].flops_per_epoch > 2.5 * by_name["frozen_head"].flops_per_epoch
    assert all(s.seconds_per_epoch and s.seconds_per_epoch > 0 for s in report.strategies)
    assert all(s.cpu_seconds_per_epoch and s.energy_wh_per_epoch > 0 for s in report.strategies)
    # built from a config: no pretrained weights, and the report says so instead of comparing
    assert report.transfer_verdict == "not assessed"


def test_a_strategy_that_fails_is_skipped_with_its_reason(tmp_path, monkeypatch, capsys):
    from adaptkit import Strategy
    from adaptkit.judge.advise import advise
    from adaptkit.plugin.registry import get_registry

    class Broken(Strategy):
        name = "broken"

        def wrap(self, model, context):
            raise RuntimeError("cannot wrap this family")

    monkeypatch.setitem(get_registry().strategies, "broken", Broken)
    report = advise(Recipe.from_dict(tiny_recipe_dict(tmp_path, "full")), strategies=["broken", "full"],
                    probe_steps=0)
    by_name = {s.strategy: s for s in report.strategies}
    # advise wraps through the same pre-flight as run and plan: the reason names the strategy and the cause
    assert by_name["broken"].skipped.startswith("PreflightError: strategy 'broken' cannot be applied")
    assert "RuntimeError: cannot wrap this family" in by_name["broken"].skipped
    assert by_name["full"].skipped is None and by_name["full"].trainable > 0
    assert "skipping strategy broken: PreflightError" in capsys.readouterr().out


def test_cli_writes_json_and_refuses_to_overwrite_silently(tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tmp_path, "lora"))
    output = tmp_path / "advice.json"
    assert main(["advise", str(path), "--output", str(output), "--strategies", "lora,full", "--probe-steps", "1"]) == 0
    saved = json.loads(output.read_text())
    assert [s["strategy"] for s in saved["strategies"]] == ["lora", "full"]
    assert saved["data"]["train_examples"] == 96 and saved["findings"]
    assert "strategies: size and cost per epoch" in capsys.readouterr().out
    assert main(["advise", str(path), "--output", str(output), "--probe-steps", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    default = main(["advise", str(path), "--strategies", "lora", "--probe-steps", "0"])
    assert default == 0 and (tmp_path / "run-advice.json").is_file()


def test_cli_unknown_strategy_exits_2_naming_the_closest(tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tmp_path, "lora"))
    assert main(["advise", str(path), "--strategies", "lorra", "--output", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'lorra'" in err and "did you mean 'lora'" in err
    assert not (tmp_path / "a.json").exists()


@pytest.mark.slow
def test_minilm_on_sst2_is_positive_transfer(tmp_path, monkeypatch):
    """The shipped MiniLM on 300 shipped SST-2 rows: pretrained features clearly beat random ones."""
    from adaptkit.judge.advise import advise
    from adaptkit.recipe.loading import load_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml")
    recipe.data.max_train_samples = 300
    recipe.output.dir = tmp_path / "run"
    report = advise(recipe, strategies=[recipe.strategy.name], probe_steps=1, max_feature_rows=300,
                    log=lambda _: None)
    transfer = report.transferability
    assert report.transfer_verdict == "features favour transfer" and report.transfer_risk is False
    assert transfer["pretrained"]["probe_accuracy"] > transfer["random"]["probe_accuracy"] + 0.1
    assert transfer["pretrained"]["logme"] > transfer["random"]["logme"]
    assert "The features favour transfer" in report.findings[0]
    # 300 rows for 384 feature dimensions: the H-score cannot tell features from noise there, so it is withheld
    assert transfer["pretrained"]["h_score"] is None and "rows per dimension" in transfer["h_score_withheld"]
    assert [p["rows"] for p in transfer["probe_curve"]] == [75, 150, 300]

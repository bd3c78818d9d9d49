"""token_classification end to end: a tiny BERT from a config learns to tag names and places."""
from __future__ import annotations

import json
import random

import pytest

from conftest import MINILM, TINY_BERT

PEOPLE = [["alice"], ["bob", "marley"], ["carol"], ["dmitri", "ivanovich"], ["zelda"]]
PLACES = [["paris"], ["new", "york"], ["zanzibar"], ["oslo"], ["buenos", "aires"]]
FILLER = ["the", "trip", "was", "long", "and", "we", "met", "in", "with", "today", "then", "left"]


def sentence(rng: random.Random) -> dict[str, list[str]]:
    tokens, tags = [], []
    for _ in range(rng.randint(2, 4)):
        tokens.append(rng.choice(FILLER))
        tags.append("O")
    for kind, names in (("PER", PEOPLE), ("LOC", PLACES)):
        name = rng.choice(names)
        at = rng.randint(0, len(tokens))
        tokens[at:at] = name
        tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
    return {"tokens": tokens, "tags": tags}


def write_jsonl(path, count: int, seed: int):
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(sentence(rng)) + "\n" for _ in range(count)))
    return path


def ner_recipe(tmp_path, strategy: str) -> dict:
    return {
        "model": {"config": dict(TINY_BERT), "tokenizer": MINILM},
        "task": {"type": "token_classification", "max_length": 32},
        "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", 160, 1)),
                 "eval": str(write_jsonl(tmp_path / "eval.jsonl", 32, 2))},
        "strategy": {"name": strategy},
        "training": {"epochs": 6, "batch_size": 16, "min_steps": 0, "learning_rate": 3e-3 if strategy == "full" else 1e-2,
                     "seed": 0, "warmup_ratio": 0.0},
        "output": {"dir": str(tmp_path / f"run-{strategy}")},
    }


def test_entity_spans_follow_conlleval_rules():
    from adaptkit_tasks.token_classification import entity_spans, span_scores

    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert entity_spans(["I-PER", "I-PER", "I-LOC"]) == {("PER", 0, 2), ("LOC", 2, 3)}  # lenient starts
    assert entity_spans(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}
    assert entity_spans(["S-LOC", "B-PER", "E-PER", "O"]) == {("LOC", 0, 1), ("PER", 1, 3)}
    # A half-found entity counts as a miss and a false alarm, not as a partial hit.
    scores = span_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]])
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert span_scores([["O"]], [["O"]])["f1"] == 0.0


def test_labels_sit_on_the_first_sub_token():
    import datasets
    from transformers import AutoTokenizer

    from adaptkit.engine.models import resolve_model_source
    from adaptkit_tasks.token_classification import TokenClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MINILM).location)
    task = TokenClassification()
    table = datasets.Dataset.from_list([{"tokens": ["zanzibar", "was", "dmitri"], "tags": ["B-LOC", "O", "B-PER"]}])
    task.setup(table)
    assert task.labels == ["O", "B-LOC", "B-PER"]
    row = task.preprocess(table, tokenizer)[0]
    words = tokenizer(["zanzibar", "was", "dmitri"], is_split_into_words=True).word_ids()
    assert len(words) > 5  # [CLS] [SEP] plus more than one piece for at least one word
    expected, previous = [], None
    for word in words:
        expected.append(-100 if word is None or word == previous else [1, 0, 2][word])
        previous = word
    assert row["labels"] == expected
    assert sorted(v for v in row["labels"] if v != -100) == [0, 1, 2]
    unlabelled = task.preprocess(table.remove_columns("tags"), tokenizer)[0]
    assert [v != -100 for v in unlabelled["labels"]] == [v != -100 for v in expected]


def test_mismatched_tags_are_a_data_error():
    import datasets
    from transformers import AutoTokenizer

    from adaptkit.errors import DataError
    from adaptkit.engine.models import resolve_model_source
    from adaptkit_tasks.token_classification import TokenClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MINILM).location)
    task = TokenClassification({"labels": ["O", "B-PER"]})
    table = datasets.Dataset.from_list([{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match="2 words but 1 tags"):
        task.preprocess(table, tokenizer)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_run_tags_entities_and_reloads(tmp_path, strategy):
    import adaptkit

    result = adaptkit.run(ner_recipe(tmp_path, strategy), progress=False)
    metrics = result.eval
    assert {"precision", "recall", "f1", "accuracy", "loss"} <= set(metrics)
    history = result.metrics["history"]
    assert history[-1]["eval_f1"] > history[0]["eval_f1"] or history[0]["eval_f1"] > 0.9
    assert metrics["f1"] > (0.9 if strategy == "full" else 0.7)
    assert metrics["accuracy"] > 0.8
    predictor = adaptkit.load(result.output_dir)
    rows = [{"tokens": ["we", "met", "alice", "in", "oslo"]}, {"tokens": ["then", "bob", "marley", "left"]}]
    tags = predictor.predict(rows)
    assert [len(t) for t in tags] == [5, 4]
    assert all(tag in {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"} for row in tags for tag in row)
    if strategy == "full":
        assert tags[0] == ["O", "O", "B-PER", "O", "B-LOC"]
        assert tags[1] == ["O", "B-PER", "I-PER", "O"]
    # predict_file keeps each row's tags a list: JSON in a CSV cell, a list in JSON Lines.
    import csv
    import json

    from adaptkit.engine.predict import predict_file

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert predict_file(result.output_dir, source, tmp_path / "tags.jsonl") == 2
    written = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    assert [w["prediction"] for w in written] == tags and written[0]["tokens"] == rows[0]["tokens"]
    predict_file(result.output_dir, source, tmp_path / "tags.csv")
    with (tmp_path / "tags.csv").open() as handle:
        assert [json.loads(r["prediction"]) for r in csv.DictReader(handle)] == tags


def test_eval_loss_is_the_mean_over_labelled_tokens_as_the_model_computes_it():
    """From per-row sums and counts, so splitting rows over processes cannot bias it."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from adaptkit_tasks.token_classification import TokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(**{**TINY_BERT, "num_labels": 3})).eval()
    labels = torch.tensor([[-100, 0, 1, 2, -100, -100], [-100, 2, 2, -100, -100, -100], [-100, 1, 0, 0, 1, -100]])
    batch = {"input_ids": torch.randint(5, 90, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long),
             "labels": labels}
    task = TokenClassification({"labels": ["O", "B-PER", "I-PER"]})
    with torch.no_grad():
        outputs = model(**batch)
    whole = task.compute_metrics(**task.batch_outputs(outputs, batch))
    assert whole["loss"] == pytest.approx(float(outputs.loss), rel=1e-5)
    # rows split 1 + 2 (two processes) and gathered: the same figure
    parts = [task.batch_outputs(model(**{k: v[rows] for k, v in batch.items()}), {"labels": labels[rows]})
             for rows in (slice(0, 1), slice(1, 3))]
    gathered = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    assert task.compute_metrics(**gathered)["loss"] == pytest.approx(float(outputs.loss), rel=1e-5)

"""question_answering end to end: SQuAD's metrics, long contexts in overlapping windows with answers
mapped through offsets, unanswerable questions, every strategy, compare, and an export that predicts
with plain transformers what ``adaptkit predict`` does."""
from __future__ import annotations

import json
import random
import re

import pytest

from conftest import MINILM, TINY_BERT, as_checkpoint, write_recipe

NAMES = ["zelda", "marco", "priya", "oslo", "kenji", "amara", "lucia", "tariq", "ingrid", "pablo"]
FILLER = ["the ship sailed north .", "rain fell all night .", "the crew was tired .", "a bird sang loudly .",
          "bread was baked early .", "the road turned west .", "nobody spoke at dinner .", "the lamp flickered ."]
QUESTION = "who is the captain ?"


def squad_rows(count: int, seed: int, unanswerable: float = 0.0) -> list[dict]:
    """SQuAD-shaped rows a tiny model can learn: the answer is the name after "the captain is", among
    3-8 filler sentences (40-60 tokens: two windows of 48); with ``unanswerable`` that share has none."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        parts = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        name = rng.choice(NAMES)
        answered = rng.random() >= unanswerable
        if answered:
            parts.insert(rng.randint(0, len(parts)), f"the captain is {name} .")
        context = " ".join(parts)
        start = context.find(f"the captain is {name}") + len("the captain is ")
        rows.append({"question": QUESTION, "context": context,
                     "answers": {"text": [name], "answer_start": [start]} if answered
                     else {"text": [], "answer_start": []}})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def qa_recipe(folder, strategy: str = "full", unanswerable: float = 0.0, train: int = 160, evaluate: int = 40,
              **training) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "model": {"config": dict(TINY_BERT), "tokenizer": MINILM},
        "task": {"type": "question_answering", "max_length": 48, "stride": 16, "max_answer_length": 8,
                 "unanswerable": unanswerable > 0},
        "data": {"train": str(write_jsonl(folder / "train.jsonl", squad_rows(train, 1, unanswerable))),
                 "eval": str(write_jsonl(folder / "eval.jsonl", squad_rows(evaluate, 2, unanswerable)))},
        "strategy": {"name": strategy},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 0, "min_steps": 0,
                     "warmup_ratio": 0.0, "max_steps": 3, **training},
        "output": {"dir": str(folder / "run")},
    }


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from adaptkit.engine.models import resolve_model_source

    return AutoTokenizer.from_pretrained(resolve_model_source(MINILM).location)


def test_squad_normalisation_exact_match_and_f1():
    from adaptkit_tasks.squad_metrics import best_scores, normalize_answer, squad_scores

    assert normalize_answer("  The  Eiffel-Tower, in PARIS!") == "eiffeltower in paris"
    assert best_scores("the Eiffel Tower", ["Eiffel Tower", "tower"]) == (1.0, 1.0)
    em, f1 = best_scores("tower in paris", ["the eiffel tower"])
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert best_scores("", []) == (1.0, 1.0) and best_scores("paris", []) == (0.0, 0.0)
    scores = squad_scores(["paris", "", "rome"], [["Paris"], [], []], splits=True)
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["has_answer_f1"] == 1.0
    assert scores["no_answer_exact_match"] == 0.5


def test_long_contexts_split_into_windows_and_answers_map_back_through_offsets(tokenizer):
    import datasets

    from adaptkit_tasks.question_answering import KEY, NO_OFFSET, OFFSETS, QuestionAnswering

    task = QuestionAnswering({"max_length": 32, "stride": 8})
    rows = squad_rows(12, 5)
    encoded = task.preprocess(datasets.Dataset.from_list(rows), tokenizer)
    assert len(encoded) == len(rows)  # one row per question, all its windows inside
    assert max(len(row["input_ids"]) for row in encoded) >= 3
    batch = task.collate(tokenizer)([encoded[i] for i in range(len(encoded))])
    windows = sum(len(row["input_ids"]) for row in encoded)
    assert batch["input_ids"].shape[0] == windows == batch["labels"].shape[0]
    width = batch["input_ids"].shape[1]
    w = 0
    for row, raw in zip(encoded, rows):
        answer, start = raw["answers"]["text"][0], raw["answers"]["answer_start"][0]
        found = 0
        for _ in row["input_ids"]:
            offsets = batch["labels"][w, OFFSETS:OFFSETS + 2 * width].reshape(width, 2)
            s, e = int(batch["start_positions"][w]), int(batch["end_positions"][w])
            if s == 0:  # the answer is not wholly inside this window: the first token, the null answer
                assert e == 0
            else:
                found += 1
                assert raw["context"][int(offsets[s, 0]):int(offsets[e, 1])] == answer
                assert int(offsets[s, 0]) == start
            assert int(batch["labels"][w, KEY]) == row["question_key"]
            assert int(offsets[0, 0]) == NO_OFFSET  # [CLS] and the question are no part of the context
            w += 1
        assert found >= 1  # with a stride, some window holds the whole answer


def test_best_span_across_windows_threshold_and_length_limit():
    import torch

    from adaptkit_tasks.question_answering import KEY, OFFSETS, QuestionAnswering

    context = "aa bb cc dd ee"
    width = 4
    # two windows of one question: tokens 1-3 are context words (0-based char offsets)
    offsets = [[[-1, -1], [0, 2], [3, 5], [6, 8]], [[-1, -1], [6, 8], [9, 11], [12, 14]]]
    labels = torch.full((2, OFFSETS + 2 * width), -1, dtype=torch.long)
    labels[:, KEY] = 7
    labels[:, OFFSETS:] = torch.tensor(offsets).reshape(2, -1)
    QuestionAnswering._texts[7] = (context, ("dd ee",))
    start = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    task = QuestionAnswering({"max_answer_length": 5})
    found = task._best_spans(start, end, labels)
    assert found["span"].tolist() == [[6, 14]]  # "dd ee" from the second window beats "aa..cc" from the first
    assert task.compute_metrics(**{k: v for k, v in found.items() if k != "probability"}) == {
        "exact_match": 0.0, "f1": pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))}
    short = QuestionAnswering({"max_answer_length": 2})._best_spans(start, end, labels)
    assert short["span"].tolist() != [[6, 14]]  # three tokens are past the limit
    # with unanswerable, a null score above the best span by more than the threshold answers nothing
    start[:, 0], end[:, 0] = 5.0, 5.0
    assert QuestionAnswering({"unanswerable": True})._best_spans(start, end, labels)["span"].tolist() == [[-1, -1]]
    kept = QuestionAnswering({"unanswerable": True, "null_threshold": 10.0})._best_spans(start, end, labels)
    assert kept["span"].tolist() == [[6, 14]]
    assert QuestionAnswering()._best_spans(start, end, labels)["span"].tolist() == [[6, 14]]  # SQuAD 1: always


def test_flat_answer_columns_match_the_answers_dict(tokenizer):
    import datasets

    from adaptkit_tasks.question_answering import QuestionAnswering

    rows = squad_rows(6, 8)
    flat = [{"question": r["question"], "context": r["context"], "answer_text": r["answers"]["text"][0],
             "answer_start": r["answers"]["answer_start"][0]} for r in rows]
    nested = QuestionAnswering().preprocess(datasets.Dataset.from_list(rows), tokenizer)
    task = QuestionAnswering({"answer_text_column": "answer_text", "answer_start_column": "answer_start"})
    assert task.required_columns() == ["question", "context", "answer_text", "answer_start"]
    assert task.preprocess(datasets.Dataset.from_list(flat), tokenizer)["start_positions"] == nested["start_positions"]


def test_bad_answers_are_refused_with_file_and_line(tmp_path):
    from adaptkit.errors import RecipeError
    from adaptkit.recipe.loading import load_recipe

    recipe = qa_recipe(tmp_path)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    good = squad_rows(8, 3)
    shifted = [dict(r) for r in good]
    shifted[4] = {**good[4], "answers": {"text": good[4]["answers"]["text"],
                                         "answer_start": [good[4]["answers"]["answer_start"][0] + 2]}}
    unanswered = [dict(r) for r in good]
    unanswered[6] = {**good[6], "answers": {"text": [], "answer_start": []}}
    broken = [dict(r) for r in good]
    broken[2] = {**good[2], "answers": json.dumps({"text": ["x"]})}
    expected = [(shifted, r"train\.jsonl:5: answer '\w+' is not at character \d+ of the context \(it occurs at \d+\)"),
                (unanswered, r"train\.jsonl:7: no answer given: set task\.unanswerable: true"),
                (broken, r"train\.jsonl:3: column 'answers' must be \{\"text\": \[\.\.\.\], \"answer_start\"")]
    for rows, pattern in expected:
        write_jsonl(tmp_path / "train.jsonl", rows)
        with pytest.raises(RecipeError) as caught:
            load_recipe(path)
        assert re.search(pattern, str(caught.value)), str(caught.value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import adaptkit

    folder = tmp_path_factory.mktemp("qa")
    recipe = qa_recipe(folder, "full", epochs=5, max_steps=None)
    return recipe, adaptkit.run(recipe, progress=False)


@pytest.mark.slow
def test_a_tiny_model_learns_to_find_the_answer(trained):
    _, result = trained
    assert result.eval["exact_match"] >= 0.9 and result.eval["f1"] >= 0.9, result.eval
    assert result.metrics["best"]["metric"] == "f1"


@pytest.mark.slow
def test_the_export_predicts_with_plain_transformers_what_adaptkit_predict_does(trained, tokenizer):
    import torch
    from transformers import AutoModelForQuestionAnswering

    import adaptkit

    _, result = trained
    rows = [{"question": r["question"], "context": r["context"]} for r in squad_rows(12, 9)]
    predicted = adaptkit.load(result.output_dir).predict(rows)
    assert len(predicted) == len(rows)
    assert all(p["answer"] == row["context"][p["start"]:p["end"]] and 0 < p["score"] <= 1
               for p, row in zip(predicted, rows))
    model = AutoModelForQuestionAnswering.from_pretrained(result.output_dir / "model").eval()
    single = 0
    with torch.no_grad():
        for row, prediction in zip(rows, predicted):
            windows = tokenizer(row["question"], row["context"], truncation="only_second", max_length=48, stride=16,
                                return_overflowing_tokens=True)
            if len(windows["input_ids"]) != 1:
                continue  # several windows: the n-best search across them is the task's own (tested above)
            single += 1
            inputs = tokenizer(row["question"], row["context"], return_offsets_mapping=True, return_tensors="pt")
            offsets = inputs.pop("offset_mapping")[0]
            out = model(**inputs)
            context = torch.tensor([side == 1 for side in inputs.sequence_ids(0)])
            start = int(out.start_logits[0].masked_fill(~context, -1e9).argmax())
            end = int(out.end_logits[0].masked_fill(~context, -1e9).argmax())
            assert (int(offsets[start, 0]), int(offsets[end, 1])) == (prediction["start"], prediction["end"])
    assert single >= 3


STRATEGIES = ["full", "lora", "ia3", "adapters", "partial_freeze", "frozen_head", "qlora"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_a_span_head_with_unanswerable_questions(tmp_path, strategy):
    import adaptkit

    if strategy == "qlora":
        pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes")
    result = adaptkit.run(qa_recipe(tmp_path, strategy, unanswerable=0.3, train=48, evaluate=16), progress=False)
    assert result.metrics["strategy"] == strategy
    assert {"exact_match", "f1", "has_answer_f1", "no_answer_f1"} <= set(result.eval)
    assert all(0.0 <= result.eval[k] <= 1.0 for k in ("exact_match", "f1", "has_answer_f1", "no_answer_f1"))
    assert any(line.startswith("export") for line in result.metrics["contract"]), result.metrics["contract"]


@pytest.mark.slow
def test_compare_judges_question_answering_in_f1(tmp_path):
    from adaptkit.judge.compare import compare
    from adaptkit.judge.tuning import SCRATCH

    recipe = as_checkpoint(qa_recipe(tmp_path, "full", train=64, max_steps=4), tmp_path / "pretrained")
    report = compare(recipe, ["full", SCRATCH], trials=1, bootstrap_rounds=100, output_dir=tmp_path / "compare",
                     log=lambda _: None)
    assert report.metric == "f1" and report.greater_is_better is True
    assert {row.strategy for row in report.rows} == {"full", SCRATCH}
    versus = report.per_size[-1]["versus_scratch"]
    rows = {row.strategy: row for row in report.rows}
    assert versus["difference"] == pytest.approx(rows["full"].metric - rows[SCRATCH].metric, abs=1e-4)
    assert any("no baseline" in note for note in report.baseline_notes)
    assert "f1 (95% CI; higher is better)" in (tmp_path / "compare" / "table.md").read_text()


def test_advise_sizes_and_times_each_strategy_and_says_no_baseline_serves(tmp_path):
    from adaptkit.judge.advise import advise
    from adaptkit.recipe.schema import Recipe

    report = advise(Recipe.from_dict(qa_recipe(tmp_path, train=32)), strategies=["lora", "frozen_head"],
                    probe_steps=1, log=lambda _: None)
    assert [s.strategy for s in report.strategies] == ["lora", "frozen_head"]
    assert all(s.skipped is None and s.probe_error is None and s.seconds_per_epoch > 0 for s in report.strategies), \
        [(s.skipped, s.probe_error) for s in report.strategies]
    assert "no baseline for task 'question_answering'" in report.baselines["note"]
    assert report.data["train_examples"] == 32 and report.data["duplicate_train_rows"] >= 0


@pytest.mark.slow
def test_predict_file_writes_the_answer_and_its_span(trained, tmp_path):
    import csv

    from adaptkit.engine.predict import predict_file

    _, result = trained
    rows = squad_rows(4, 11)
    source = write_jsonl(tmp_path / "rows.jsonl", [{"question": r["question"], "context": r["context"]} for r in rows])
    assert predict_file(result.output_dir, source, tmp_path / "out.csv") == 4
    written = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert list(written[0]) == ["question", "context", "prediction", "start", "end", "score"]
    for row, out in zip(rows, written):
        assert out["prediction"] == row["context"][int(out["start"]):int(out["end"])]
    assert sum(out["prediction"] == row["answers"]["text"][0] for row, out in zip(rows, written)) >= 3

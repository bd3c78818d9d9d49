"""``check_task``: every installed first-party task passes it, and it catches a broken task."""
from __future__ import annotations

import random
from typing import Any

import pytest

from adaptkit.errors import TaskContractViolation
from adaptkit.plugin.registry import get_registry
from adaptkit.testing import check_task

WORDS = "good bad film plot actor great awful fine dull sharp slow".split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _images(count: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    return [Image.fromarray(np.random.RandomState(i).randint(0, 255, (16, 16, 3), dtype=np.uint8)) for i in range(count)]


def _qa_rows(rng: random.Random) -> list[dict[str, Any]]:
    """SQuAD-shaped rows, one of them unanswerable (SQuAD 2.0)."""
    rows = []
    for i in range(4):
        name = rng.choice(WORDS)
        context = f"{_text(rng, 4)} it is {name} ."
        answers = {"text": [name], "answer_start": [context.rindex(name)]} if i else {"text": [], "answer_start": []}
        rows.append({"question": "what is it ?", "context": context, "answers": answers})
    return rows


def _cases() -> dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Options and a few labelled rows for each first-party task (a new task must be added here)."""
    rng = random.Random(0)
    return {
        "sequence_classification": (None, [{"text": _text(rng, 5), "label": ["pos", "neg"][i % 2]} for i in range(6)]),
        "token_classification": (None, [{"tokens": _text(rng, 4).split(),
                                         "tags": [rng.choice(["O", "B-X", "I-X"]) for _ in range(4)]}
                                        for _ in range(5)]),
        "causal_lm": ({"text_column": "text", "max_new_tokens": 3}, [{"text": _text(rng, 6)} for _ in range(4)]),
        "instruct": ({"format": "prompt_completion", "chat_template": "chatml", "max_new_tokens": 3},
                     [{"prompt": "rate " + _text(rng, 2), "completion": _text(rng, 1)} for _ in range(4)]),
        "image_classification": (None, [{"image": image, "label": ["cat", "dog"][i % 2]}
                                        for i, image in enumerate(_images(4))]),
        "regression": (None, [{"text": _text(rng, 5), "label": i * 0.5} for i in range(6)]),
        "preference": ({"chat_template": "chatml", "max_new_tokens": 3},
                       [{"prompt": "rate " + _text(rng, 2), "chosen": _text(rng, 1), "rejected": _text(rng, 1)}
                        for _ in range(4)]),
        "reward": ({"chat_template": "chatml"}, [{"prompt": "rate " + _text(rng, 2), "chosen": _text(rng, 1),
                                                  "rejected": _text(rng, 1)} for _ in range(4)]),
        "question_answering": ({"unanswerable": True, "max_length": 64, "stride": 16}, _qa_rows(rng)),
        "seq2seq": ({"max_new_tokens": 3}, [{"source": _text(rng, 4), "target": _text(rng, 2)} for _ in range(4)]),
        "image_to_text": ({"max_new_tokens": 3}, [{"image": image, "caption": f"a {['red', 'blue'][i % 2]} square"}
                                                  for i, image in enumerate(_images(4))]),
    }


def _first_party_tasks() -> dict[str, type]:
    registry = get_registry()
    return {name: cls for name, cls in registry.tasks.items()
            if (registry.plugin_for("task", name) or None) is not None
            and registry.plugin_for("task", name).distribution == "adaptkit"}


def test_every_first_party_task_has_a_case():
    assert set(_first_party_tasks()) == set(_cases())


@pytest.mark.parametrize("name", sorted(_cases()))
def test_first_party_task_passes_check_task(name):
    options, rows = _cases()[name]
    report = check_task(_first_party_tasks()[name], options, rows=rows)
    rules = {line.split(" - ")[0].split(": ")[1] for line in report.passed}
    assert rules == {"head", "batch", "metrics", "predict", "state"}
    assert report.kind == "task" and str(report).startswith(f"task {name!r} keeps the contract")


def _sequence_classification() -> type:
    return _first_party_tasks()["sequence_classification"]


def test_check_task_catches_a_task_that_drops_a_prediction():
    class DropsOne(_sequence_classification()):  # type: ignore[misc, valid-type]
        def predict_batch(self, model, batch):
            return super().predict_batch(model, batch)[:-1]

    options, rows = _cases()["sequence_classification"]
    with pytest.raises(TaskContractViolation) as caught:
        check_task(DropsOne, options, rows=rows, families=["bert"])
    assert caught.value.rule == "predict" and caught.value.family == "bert"
    assert "predict_batch returned 5 predictions for a batch of 6 rows" in str(caught.value)


def test_check_task_catches_undeclared_metrics_and_a_lost_state():
    base = _sequence_classification()

    class ExtraMetric(base):  # type: ignore[misc, valid-type]
        def compute_metrics(self, logits, labels):
            return {**super().compute_metrics(logits, labels), "secret": 1.0}

    class ForgetsLabels(base):  # type: ignore[misc, valid-type]
        def load_state(self, state):
            self.labels = list(reversed(state["labels"]))

    options, rows = _cases()["sequence_classification"]
    with pytest.raises(TaskContractViolation, match=r"rule 'metrics'.*'secret'"):
        check_task(ExtraMetric, options, rows=rows, families=["bert"])
    with pytest.raises(TaskContractViolation, match=r"rule 'state'.*after load_state"):
        check_task(ForgetsLabels, options, rows=rows, families=["bert"])


def test_check_task_catches_a_head_the_model_lacks():
    class WrongHead(_sequence_classification()):  # type: ignore[misc, valid-type]
        def head_modules(self, model):
            return ["classifier_that_is_not_there"]

    options, rows = _cases()["sequence_classification"]
    with pytest.raises(TaskContractViolation, match=r"rule 'head' on the tiny gpt2 model.*classifier_that_is_not_there"):
        check_task(WrongHead, options, rows=rows, families=["gpt2"])

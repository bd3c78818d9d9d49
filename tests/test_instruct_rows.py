"""Instruct rows with nothing to learn or score (issue 22, item 10): counted, named and left out of
training; refused when nothing is left to learn, or when max_length cuts every eval answer off
(that reported ``token_loss nan`` with exit 0 and wrote NaN into metrics.json and the card)."""
from __future__ import annotations

import pytest

from conftest import write_recipe
from test_instruct_kit import fruit_rows, write_jsonl
from test_instruct_train import recipe, tokenizer_dir  # noqa: F401 (a fixture)


def _unanswered(rows):
    """The same conversations without any assistant turn."""
    return [{"messages": [turn for turn in row["messages"][:2]]} for row in rows]


def test_training_rows_without_an_answer_are_counted_and_left_out(tmp_path, tokenizer_dir, capsys):  # noqa: F811
    import adaptkit

    spec = recipe(tmp_path, tokenizer_dir, "messages")
    rows = fruit_rows("messages", 64, 1)
    rows[3:13] = _unanswered(rows[3:13])
    spec["data"]["train"] = str(write_jsonl(tmp_path / "train.jsonl", rows))
    result = adaptkit.run(spec, progress=False)
    error = capsys.readouterr().err
    assert "warning: 10 of 64 training rows have no answer token to learn (rows 4, 5, 6, 7, 8, 9, 10, 11, ..." in error
    assert result.metrics["train_examples"] == 54


def test_training_with_only_empty_texts_is_refused_before_any_model(tmp_path, tokenizer_dir, capsys):  # noqa: F811
    from adaptkit.cli import main

    spec = recipe(tmp_path, tokenizer_dir, "text")
    spec["data"]["train"] = str(write_jsonl(tmp_path / "train.jsonl", [{"text": " "}] * 16))
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["run", str(path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "error: no training row has an answer token to learn: all 16 rows" in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_an_eval_set_whose_answers_max_length_cuts_off_is_refused_not_nan(tmp_path, tokenizer_dir, capsys):  # noqa: F811
    from adaptkit.cli import main

    spec = recipe(tmp_path, tokenizer_dir, "messages", max_length=12, train_on_inputs=True)
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["run", str(path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "error: no evaluation row has an answer token left to score: task.max_length (12) cuts off the " \
           "answer of all 8 eval rows" in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_compute_metrics_over_no_tokens_is_an_error_not_nan():
    import torch

    from adaptkit.errors import DataError
    from adaptkit_tasks.instruct import Instruct, InstructOptions

    task = Instruct(InstructOptions())
    with pytest.raises(DataError, match="no token to score"):
        task.compute_metrics(loss_sum=torch.zeros(3), tokens=torch.zeros(3))


NESTED_LOOPS = ("{% for m in messages %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                "{% endfor %}{{ m['content'] }}{% endfor %}")


@pytest.mark.parametrize("template, fragment", [
    (NESTED_LOOPS, "range() loops take more than 100,000 steps"),
    ("{{ messages[0]['content'] * 100000000 }}", "builds a str of"),
    ("{{ 9 ** 99999999 }}{{ messages }}", "it computes 9 ** 99999999"),
])
def test_a_chat_template_too_costly_to_render_fails_validate_at_once(tmp_path, tokenizer_dir, capsys,  # noqa: F811
                                                                     template, fragment):
    """Nested range(100000) loops compiled, passed validate and hung `run` with no output (item 6)."""
    import time

    from adaptkit.cli import main

    spec = recipe(tmp_path, tokenizer_dir, "messages", chat_template=template)
    path = write_recipe(tmp_path / "r.yaml", spec)
    started = time.monotonic()
    assert main(["validate", str(path)]) == 2
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err
    assert "task.chat_template: " in error and "chat template is too costly to render" in error and fragment in error


def test_a_tokenizers_own_costly_template_is_refused_when_the_tokenizer_is_loaded():
    from adaptkit.errors import AdaptkitError
    from adaptkit_tasks.chat_templates import install_template

    class Tokenizer:
        chat_template = NESTED_LOOPS

    with pytest.raises(AdaptkitError, match="the template of 'some/model': chat template is too costly"):
        install_template(Tokenizer(), None, "'some/model'")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_an_unknown_chat_role_fails_validate_naming_file_and_line(tmp_path, tokenizer_dir, capsys, split):  # noqa: F811
    from adaptkit.cli import main

    spec = recipe(tmp_path, tokenizer_dir, "messages")
    rows = fruit_rows("messages", 8, 3)
    rows[4]["messages"][2]["role"] = "robot"
    data = write_jsonl(tmp_path / f"{split}-bad.jsonl", rows)
    spec["data"][split] = str(data)
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["validate", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"data.{split}: {data}:5: row: messages, message 3: role 'robot' is not one of" in error
    assert "Traceback" not in error


def test_a_template_costly_only_on_real_content_is_refused_before_tokenizing(tmp_path, tokenizer_dir,  # noqa: F811
                                                                             capsys):
    """A template whose loops grow with a row's content passes the sample render at validate; the
    first training row, rendered under the same bounds, stops the run instead of a silent hang."""
    from adaptkit.cli import main

    template = ("{% for m in messages %}{% for i in range(m['content']|length * 10) %}{% for j in range(100) %}"
                "{% endfor %}{% endfor %}{{ m['content'] }}{% endfor %}")  # 15,150 steps on the sample, 200,000+ here
    spec = recipe(tmp_path, tokenizer_dir, "messages", chat_template=template)
    rows = fruit_rows("messages", 8, 1)
    rows[0]["messages"][1]["content"] = "a long question " * 10
    spec["data"]["train"] = str(write_jsonl(tmp_path / "train.jsonl", rows))
    path = write_recipe(tmp_path / "r.yaml", spec)
    assert main(["run", str(path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "training row 1: chat template is too costly to render" in error and "Traceback" not in error

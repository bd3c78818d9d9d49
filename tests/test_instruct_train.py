"""The instruct task end to end: each data layout trains with LoRA and QLoRA on tiny Llama- and
GPT-2-shaped decoders, exports, reloads and answers; plan refuses a tokenizer without a template."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import REPO
from test_instruct_kit import bpe_tokenizer, corpus, fruit_rows, tiny_config, write_jsonl

JINJA = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A trained BPE tokenizer with no chat template: recipes must name one."""
    folder = tmp_path_factory.mktemp("tokenizer")
    bpe_tokenizer(folder, corpus())
    return folder


def recipe(folder, tokenizer_dir, layout: str, strategy: str = "lora", family: str = "llama", **task):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "model": {"config": tiny_config(family, vocab), "tokenizer": str(tokenizer_dir)},
        "task": {"type": "instruct", "format": layout, "chat_template": "chatml", "max_length": 96,
                 "max_new_tokens": 3, **task},
        "data": {"train": str(write_jsonl(folder / "train.jsonl", fruit_rows(layout, 32, 1))),
                 "eval": str(write_jsonl(folder / "eval.jsonl", fruit_rows(layout, 8, 2)))},
        "strategy": {"name": strategy},
        "training": {"epochs": 1, "max_steps": 2, "batch_size": 16, "learning_rate": 1e-2, "seed": 0,
                     "warmup_ratio": 0.0},
        "output": {"dir": str(folder / "run")},
    }


def _questions(layout: str) -> list[dict]:
    """The same layout without the answer column or turn: what `predict` is given."""
    rows = fruit_rows(layout, 3, 5)
    if layout == "messages":
        return [{"messages": row["messages"][:-1]} for row in rows]
    answer = {"text": None, "prompt_completion": "completion", "alpaca": "output"}[layout]
    return [{k: v for k, v in row.items() if k != answer} for row in rows]


@pytest.mark.parametrize("layout,strategy,family,packing", [
    ("text", "lora", "gpt2", True), ("text", "qlora", "llama", False),
    ("prompt_completion", "lora", "llama", False), ("prompt_completion", "qlora", "gpt2", True),
    ("alpaca", "lora", "gpt2", False), ("alpaca", "qlora", "llama", True),
    ("messages", "lora", "llama", True), ("messages", "qlora", "gpt2", False),
])
def test_each_layout_trains_exports_and_answers(tmp_path, tokenizer_dir, layout, strategy, family, packing):
    import adaptkit

    spec = recipe(tmp_path, tokenizer_dir, layout, strategy, family, packing=packing,
                  **({"chat_template": JINJA} if layout == "alpaca" else {}))
    result = adaptkit.run(spec, progress=False)
    metrics = result.metrics
    assert metrics["task"] == "instruct" and metrics["export"]["kind"] == "adapter"
    # packed: 32 examples share fewer rows; unpacked: one row each
    assert (metrics["train_examples"] <= 16) if packing else (metrics["train_examples"] == 32)
    answer_tokens = {"text": None, "prompt_completion": 8 * 2, "alpaca": 8 * 2, "messages": 8 * 4}[layout]
    if answer_tokens:  # each colour is one BPE token plus <|im_end|>, and "\n" after it
        assert metrics["eval"]["tokens"] >= answer_tokens
    assert math.isfinite(metrics["eval"]["perplexity"]) and metrics["eval"]["perplexity"] > 1
    answers = adaptkit.load(result.output_dir).predict(_questions(layout))
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)


def test_answer_only_eval_counts_answer_tokens_exactly(tmp_path, tokenizer_dir):
    """Eval perplexity covers answers only: tokens = colour + <|im_end|> + newline per answer."""
    import adaptkit
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    result = adaptkit.run(recipe(tmp_path, tokenizer_dir, "messages", "lora", train_on_inputs=True), progress=False)
    expected = sum(len(tokenizer(turn["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"])
                   for row in fruit_rows("messages", 8, 2) for turn in row["messages"] if turn["role"] == "assistant")
    assert result.metrics["eval"]["tokens"] == expected  # train_on_inputs does not widen the eval loss


def test_plan_refuses_a_tokenizer_without_template_and_reports_packing(tmp_path, tokenizer_dir):
    from adaptkit.errors import AdaptkitError
    from adaptkit.engine.planning import plan, render_text
    from adaptkit.recipe.schema import Recipe

    spec = recipe(tmp_path, tokenizer_dir, "messages", packing=True)
    del spec["task"]["chat_template"]
    with pytest.raises(AdaptkitError, match="has no chat template, and the recipe gives none.*task.chat_template"):
        plan(Recipe.from_dict(spec))
    spec["task"]["chat_template"] = "zephyr"
    shown = render_text(plan(Recipe.from_dict(spec)))
    assert "no example attends to another" in shown
    spec["strategy"] = {"name": "prompt_tuning"}
    shown = render_text(plan(Recipe.from_dict(spec)))
    assert "packing: examples are NOT isolated" in shown and "peft drops position_ids" in shown


def test_run_without_template_stops_before_training(tmp_path, tokenizer_dir):
    import adaptkit
    from adaptkit.errors import AdaptkitError

    spec = recipe(tmp_path, tokenizer_dir, "alpaca")
    del spec["task"]["chat_template"]
    with pytest.raises(AdaptkitError, match="no chat template"):
        adaptkit.run(spec, progress=False)
    assert not (tmp_path / "run").exists()


def test_validate_names_the_line_of_a_bad_template(tmp_path, capsys):
    from adaptkit.cli import main

    text = (REPO / "recipes" / "instruct.yaml").read_text().replace("chat_template: chatml", "chat_template: chatlm")
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("../data/", f"{REPO}/data/"))
    assert main(["validate", str(path)]) == 2
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "chatlm" in row)
    error = capsys.readouterr().err
    assert f"bad.yaml:{line}: task.chat_template: " in error and "unknown chat template name 'chatlm'" in error
    assert "Traceback" not in error


def test_shipped_recipe_trains_and_predicts_a_conversation_file(tmp_path, monkeypatch, capsys):
    """recipes/instruct.yaml as shipped (fewer steps) learns, then `adaptkit predict` answers its conversation file."""
    from adaptkit.cli import main

    data = yaml.safe_load((REPO / "recipes" / "instruct.yaml").read_text())
    data["output"]["dir"] = str(tmp_path / "run")
    data["training"].update(max_steps=24)
    data["data"] = {key: str(REPO / "data" / "instruct" / f"{key}.jsonl") for key in ("train", "eval")}
    path = tmp_path / "instruct.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(REPO)  # model.tokenizer is a path from the repository root, as the README runs it
    assert main(["run", str(path), "--no-progress"]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[-1]["eval_perplexity"] < history[0]["eval_perplexity"] / 3  # answers are being learnt
    output = tmp_path / "answers.jsonl"
    assert main(["predict", str(tmp_path / "run"), "--input", str(REPO / "data/instruct/predict.jsonl"),
                 "--output", str(output)]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 6 and all(isinstance(row["prediction"], str) and row["messages"] for row in rows)

"""causal_lm end to end: a tiny GPT-2 from a config learns prompt -> response pairs."""
from __future__ import annotations

import json
import math
import random

import pytest

from conftest import MINILM, TINY_GPT2

COLOURS = {"apple": "red", "banana": "yellow", "grape": "purple", "lime": "green", "plum": "purple",
           "cherry": "red", "lemon": "yellow", "kiwi": "green"}
# The same fruits with other colours: what the LoRA run must learn on top of the full run's model.
SWAPPED = {"apple": "green", "banana": "red", "grape": "yellow", "lime": "red", "plum": "yellow",
           "cherry": "green", "lemon": "purple", "kiwi": "purple"}
QUESTIONS = [{"prompt": "what colour is a lime"}, {"prompt": "what colour is a apple"}]


def pair_rows(count: int, seed: int, colours: dict[str, str] = COLOURS) -> list[dict[str, str]]:
    rng = random.Random(seed)
    fruits = sorted(colours)
    return [{"prompt": f"what colour is a {f}", "response": colours[f]}
            for f in (rng.choice(fruits) for _ in range(count))]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def lm_recipe(folder, strategy: str, colours: dict[str, str] = COLOURS, model=None, **task):
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "model": model or {"config": {**TINY_GPT2, "vocab_size": 30522}, "tokenizer": MINILM},
        "task": {"type": "causal_lm", "prompt_column": "prompt", "response_column": "response",
                 "loss_on": "response", "max_length": 32, "max_new_tokens": 3, **task},
        "data": {"train": str(write_jsonl(folder / "train.jsonl", pair_rows(192, 1, colours))),
                 "eval": str(write_jsonl(folder / "eval.jsonl", pair_rows(32, 2, colours)))},
        "strategy": {"name": strategy},
        "training": {"epochs": 8, "batch_size": 16, "min_steps": 0, "learning_rate": 5e-3 if strategy == "full" else 1e-2,
                     "seed": 0, "warmup_ratio": 0.0},
        "output": {"dir": str(folder / "run")},
    }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A tiny GPT-2 fully fine-tuned from random weights on fruit -> colour answers."""
    import adaptkit

    return adaptkit.run(lm_recipe(tmp_path_factory.mktemp("full"), "full"), progress=False)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from adaptkit.engine.models import resolve_model_source

    return AutoTokenizer.from_pretrained(resolve_model_source(MINILM).location)


def _task(**options):
    from adaptkit_tasks.causal_lm import CausalLM

    return CausalLM({"prompt_column": "prompt", "response_column": "response", **options})


def test_loss_on_response_masks_the_prompt(tokenizer):
    import datasets

    table = datasets.Dataset.from_list([{"prompt": "what colour is a lime", "response": "green"}])
    response_ids = tokenizer("green", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    masked = _task(loss_on="response").preprocess(table, tokenizer)[0]
    full = _task(loss_on="all").preprocess(table, tokenizer)[0]
    prompt_len = len(masked["input_ids"]) - len(response_ids)
    assert prompt_len > 0 and masked["input_ids"] == full["input_ids"]
    assert masked["labels"][:prompt_len] == [-100] * prompt_len
    assert masked["labels"][prompt_len:] == response_ids == masked["input_ids"][prompt_len:]
    assert full["labels"] == full["input_ids"]


def test_options_refuse_ambiguous_layouts():
    from pydantic import ValidationError

    from adaptkit_tasks.causal_lm import CausalLMOptions

    with pytest.raises(ValidationError, match="text_column or"):
        CausalLMOptions(text_column="text", prompt_column="prompt", response_column="response")
    with pytest.raises(ValidationError, match="needs prompt_column"):
        CausalLMOptions(text_column="text", loss_on="response")
    with pytest.raises(ValidationError, match="must contain"):
        CausalLMOptions(prompt_column="p", response_column="r", template="Q: {question}")


def test_per_batch_token_loss_equals_the_models_own_loss(tokenizer):
    """Evaluation's reduced outputs reproduce the model's mean token loss exactly."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    task = _task(loss_on="response")
    table = datasets.Dataset.from_list(pair_rows(6, 3))
    batch = task.collate(tokenizer)([row for row in task.preprocess(table, tokenizer)])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=30522, n_embd=32, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        outputs = model(**batch)
    metrics = task.compute_metrics(**task.batch_outputs(outputs, batch))
    assert metrics["token_loss"] == pytest.approx(float(outputs.loss), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(float(outputs.loss)), rel=1e-5)
    assert metrics["tokens"] == int((batch["labels"][:, 1:] != -100).sum())


def test_prompt_tuning_token_loss_skips_the_virtual_tokens(tokenizer):
    """peft prompt tuning prepends its virtual tokens to the logits (rows x (virtual + tokens) x vocab):
    evaluation scores the real tokens only, and equals peft's own loss (it crashed on the shapes)."""
    import datasets
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config

    task = _task(loss_on="response")
    table = datasets.Dataset.from_list(pair_rows(6, 3))
    batch = task.collate(tokenizer)([row for row in task.preprocess(table, tokenizer)])
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=30522, n_embd=32, n_layer=1, n_head=2))
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)).eval()
    with torch.no_grad():
        outputs = model(**batch)
    assert outputs.logits.shape[1] == batch["input_ids"].shape[1] + 5
    metrics = task.compute_metrics(**task.batch_outputs(outputs, batch))
    assert metrics["token_loss"] == pytest.approx(float(outputs.loss), rel=1e-5)
    assert metrics["tokens"] == int((batch["labels"][:, 1:] != -100).sum())


def test_full_run_learns_responses_and_reloads(full_run):
    import adaptkit

    history = full_run.metrics["history"]
    # Untrained, the model is near-uniform over 30522 tokens (perplexity ~ 3e4); every response
    # is one colour token and an end token, fully determined by the fruit.
    assert history[0]["eval_perplexity"] > 5 * history[-1]["eval_perplexity"]
    assert full_run.eval["perplexity"] < 2.0
    assert full_run.eval["perplexity"] == pytest.approx(math.exp(full_run.eval["token_loss"]))
    assert full_run.metrics["task"] == "causal_lm" and full_run.metrics["export"]["kind"] == "model"
    answers = adaptkit.load(full_run.output_dir).predict(QUESTIONS)
    assert [a.split()[0] for a in answers] == ["green", "red"]


def test_lora_run_relearns_on_the_full_model_and_reloads(full_run, tmp_path):
    """LoRA adapts the full run's model (a pretrained base, loaded by folder) to new answers."""
    import adaptkit

    base = {"name": str(full_run.output_dir / "model"), "tokenizer": MINILM}
    result = adaptkit.run(lm_recipe(tmp_path, "lora", SWAPPED, model=base), progress=False)
    assert result.metrics["export"]["kind"] == "adapter"
    assert result.metrics["parameters"]["trainable"] < 0.05 * result.metrics["parameters"]["total"]
    assert result.eval["perplexity"] < 2.0
    answers = adaptkit.load(result.output_dir).predict(QUESTIONS)
    assert [a.split()[0] for a in answers] == ["red", "green"]  # the swapped colours, not the base's

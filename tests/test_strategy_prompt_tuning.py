"""The ``prompt_tuning`` strategy: virtual tokens that unwrap removes, leaving the trained head."""
from __future__ import annotations

import pytest
import torch

import adaptkit
from adaptkit.plugin.contract import architecture_signature, model_outputs
from adaptkit.testing import (FAMILIES, sample_batch as _batch, wrap_context as _context,
                              train_steps as _train_steps, check_strategy)
from adaptkit_prompt_tuning import PromptTuning


def test_check_strategy_passes():
    report = check_strategy(PromptTuning, {"num_virtual_tokens": 4})
    assert sum("removal" in line for line in report.passed) == 2


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_unwrap_returns_base_with_the_trained_head(family):
    torch.manual_seed(0)
    base = FAMILIES[family]()
    signature = architecture_signature(base)
    head = "classifier" if family == "bert" else "score"
    strategy = PromptTuning({"num_virtual_tokens": 4})
    model = strategy.wrap(base, _context(base, family))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("prompt_encoder" in n for n in trainable)
    assert all("prompt_encoder" in n or f"{head}.modules_to_save" in n for n in trainable), trainable
    before = model.get_base_model().get_submodule(head).original_module.weight.detach().clone()
    _train_steps(strategy, model)
    trained = model.get_base_model().get_submodule(head).modules_to_save["default"].weight.detach().clone()
    unwrapped = strategy.unwrap(model)
    assert architecture_signature(unwrapped) == signature
    assert torch.equal(unwrapped.get_submodule(head).weight, trained)
    assert not torch.equal(trained, before)
    assert not any(p.requires_grad for p in unwrapped.parameters())


def test_prefix_tuning_is_refused_for_a_classifier_at_plan_naming_the_upstream_issue(tiny_recipe):
    """peft 0.21 refuses prefix tuning on transformers 5 sequence classifiers (their forward takes ``cache``,
    not ``past_key_values``): the generated strategy exists (it runs on causal LMs) and plan names the issue."""
    from adaptkit.recipe.schema import Recipe

    assert {"prompt_tuning", "prefix_tuning"} <= set(adaptkit.list_strategies())
    recipe = {**tiny_recipe("lora"), "strategy": {"name": "prefix_tuning", "num_virtual_tokens": 4}}
    with pytest.raises(adaptkit.PreflightError, match=r"cannot train a SEQ_CLS model.*peft#1962.*causal_lm"):
        adaptkit.plan(Recipe.from_dict(recipe))


def test_num_virtual_tokens_must_be_positive():
    with pytest.raises(ValueError):
        PromptTuning({"num_virtual_tokens": 0})

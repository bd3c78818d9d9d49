"""The ``lora`` strategy and its kin (DoRA, rsLoRA, LoRA+): the contract, targets and LoRA+ groups."""
from __future__ import annotations

import pytest
import torch

from adaptkit import WrapContext
from adaptkit.errors import RecipeError
from adaptkit.testing import FAMILIES, wrap_context as _context, check_strategy
from adaptkit_lora import DEFAULT_TARGETS, Lora, LoraOptions, target_modules_for


@pytest.mark.parametrize("options", [None, {"use_dora": True}, {"use_rslora": True}],
                         ids=["lora", "dora", "rslora"])
def test_check_strategy_passes(options):
    report = check_strategy(Lora, options)
    passed = "\n".join(report.passed)
    # merge and unmerge verified by the contract on both families
    for family in ("bert", "gpt2"):
        assert f"{family}: equivalence" in passed
        assert f"{family}: signature" in passed
        assert f"{family}: export" in passed


def _wrapped(family: str, options=None):
    torch.manual_seed(0)
    base = FAMILIES[family]()
    strategy = Lora(options)
    return strategy, strategy.wrap(base, _context(base, family))


def test_loraplus_puts_b_matrices_in_a_faster_group():
    strategy, model = _wrapped("bert", {"loraplus_lr_ratio": 16})
    groups = strategy.parameter_groups(model, 1e-4, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    b_groups = [g for g in groups if any("lora_B" in names[id(p)] for p in g["params"])]
    assert b_groups and all(g["lr"] == pytest.approx(16e-4) for g in b_groups)
    assert all("lora_B" in names[id(p)] for g in b_groups for p in g["params"])
    others = [g for g in groups if g not in b_groups]
    assert all(g["lr"] == pytest.approx(1e-4) for g in others)
    assert any("lora_A" in names[id(p)] for g in others for p in g["params"])
    # every trainable parameter is in exactly one group; biases are not decayed
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    for group in groups:
        if any(p.ndim < 2 for p in group["params"]):
            assert group["weight_decay"] == 0.0


def test_without_loraplus_a_and_b_share_the_learning_rate():
    strategy, model = _wrapped("bert")
    assert {g["lr"] for g in strategy.parameter_groups(model, 1e-4, 0.0)} == {1e-4}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_default_targets_resolve_to_real_modules(family):
    targets = target_modules_for(family, None)
    assert targets == DEFAULT_TARGETS[family]
    _, model = _wrapped(family)
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == set(targets)  # every default target exists in the model, and only those are adapted
    # the task head is trained whole, never adapted
    assert not any("lora" in n for n, _ in model.named_parameters() if ".score." in n or ".classifier." in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters()) / 2


def test_gpt2_conv1d_is_adapted_without_a_layout_warning(recwarn):
    _wrapped("gpt2")
    assert not [w for w in recwarn if "fan_in_fan_out" in str(w.message)]


def test_unknown_family_falls_back_to_all_linear():
    assert target_modules_for("somethingnew", None) == "all-linear"
    assert target_modules_for("bert", ["query"]) == ["query"]


def test_train_head_false_freezes_the_head():
    strategy, model = _wrapped("bert", {"train_head": False})
    assert not [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]


def test_options_reject_bad_values():
    with pytest.raises(ValueError):
        LoraOptions(r=0)
    with pytest.raises(ValueError):
        LoraOptions(loraplus_lr_ratio=-1)
    with pytest.raises(ValueError):
        LoraOptions(rank=8)  # unknown key


def test_recipe_cannot_stack_strategies(tiny_recipe):
    """One strategy per recipe: a list, a combined name or a second strategy's keys are errors."""
    from adaptkit import Recipe

    for strategy in ({"name": ["partial_freeze", "lora"]}, {"name": "partial_freeze+lora"},
                     {"name": "lora", "strategies": ["partial_freeze"]}, {"name": "lora", "layers": 2}):
        with pytest.raises(RecipeError):
            Recipe.from_dict({**tiny_recipe("lora"), "strategy": strategy})
    with pytest.raises(RecipeError):
        Recipe.from_dict({**tiny_recipe("lora"), "strategy": [{"name": "partial_freeze"}, {"name": "lora"}]})


def test_check_strategy_passes_with_loraplus():
    check_strategy(Lora, {"loraplus_lr_ratio": 16}, families=["gpt2"])

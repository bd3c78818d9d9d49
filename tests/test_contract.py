"""The architecture-preserving contract: kept by the first-party strategies, enforced on others."""
from __future__ import annotations

import types

import pytest
import torch

import adaptkit
from adaptkit import Strategy, hookimpl
from adaptkit.plugin.contract import architecture_signature, check_signature
from adaptkit.errors import ContractViolation
from adaptkit.testing import check_strategy, tiny_bert


@pytest.mark.parametrize("name, options", [("full", None), ("full", {"layer_decay": 0.8}), ("lora", None)])
def test_first_party_strategies_keep_the_contract(name, options):
    report = check_strategy(adaptkit.get_strategy(name), options)
    passed = "\n".join(report.passed)
    for family in ("bert", "gpt2"):
        for rule in ("frozen", "export", "signature", "equivalence"):
            assert f"{family}: {rule}" in passed


class _FreezeBackbone(Strategy):
    """Shared by the broken strategies below: train the head only."""

    def wrap(self, model, context):
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(h) for h in context.head_modules))
        return model

    def unwrap(self, model):
        return model


class AddsALayer(_FreezeBackbone):
    name = "adds_a_layer"

    def wrap(self, model, context):
        model = super().wrap(model, context)
        model.extra_projection = torch.nn.Linear(4, 4)  # never removed by unwrap
        return model


class TouchesFrozenWeights(_FreezeBackbone):
    name = "touches_frozen"

    def wrap(self, model, context):
        model = super().wrap(model, context)
        embeddings = model.get_input_embeddings()

        def nudge(module, args):
            with torch.no_grad():
                module.weight.mul_(1.001)  # a frozen weight drifts on every forward

        embeddings.register_forward_pre_hook(nudge)
        return model


class ForgetsToMerge(Strategy):
    """Claims to merge but drops what it learned: merged outputs differ from trained ones."""

    name = "forgets_to_merge"
    export_kind = "adapter"

    def wrap(self, model, context):
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False,
                                                exclude_modules=list(context.head_modules)))

    def unwrap(self, model):
        return model.unload()

    def save(self, model, directory):
        model.save_pretrained(directory)
        return directory

    def load(self, base_model, directory):
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, directory)


class RemovalLeavesTrace(_FreezeBackbone):
    """Non-mergeable, but its removal leaves a scaled embedding behind."""

    name = "removal_leaves_trace"
    mergeable = False

    def wrap(self, model, context):
        model = super().wrap(model, context)
        model.get_input_embeddings().weight.requires_grad_(True)
        return model


@pytest.mark.parametrize("strategy, rule, parameter", [
    (AddsALayer, "signature", "extra_projection.weight"),
    (TouchesFrozenWeights, "frozen", "bert.embeddings.word_embeddings.weight"),
    (ForgetsToMerge, "equivalence", None),
    (RemovalLeavesTrace, "removal", None),
])
def test_broken_strategies_fail_with_the_rule_named(strategy, rule, parameter):
    with pytest.raises(ContractViolation) as caught:
        check_strategy(strategy, families=["bert"])
    assert caught.value.rule == rule
    assert f"rule '{rule}'" in str(caught.value)
    if parameter:
        assert caught.value.parameter == parameter
        assert parameter in str(caught.value)


def test_signature_catches_dtype_and_class_changes():
    base = tiny_bert()
    signature = architecture_signature(base)
    changed = tiny_bert()
    changed.classifier = changed.classifier.to(torch.float64)
    with pytest.raises(ContractViolation, match="classifier.weight.*torch.float64.*task head"):
        check_signature("x", signature, architecture_signature(changed), ["classifier"])
    swapped = tiny_bert()
    swapped.dropout = torch.nn.Identity()
    with pytest.raises(ContractViolation, match="'dropout' was Dropout, is now 'dropout' Identity"):
        check_signature("x", signature, architecture_signature(swapped))


def test_run_enforces_the_contract_and_writes_nothing(tiny_recipe, tmp_path, monkeypatch):
    """A strategy that breaks the contract at run time stops the run before any output appears."""
    import adaptkit.plugin.registry as plugins

    module = types.SimpleNamespace(
        adaptkit_register_strategies=hookimpl(lambda register: register(TouchesFrozenWeights)))
    registry = plugins.build_registry(extra_plugins=[("touches_frozen_plugin", module)])
    monkeypatch.setattr(plugins, "get_registry", lambda: registry)
    recipe = tiny_recipe("touches_frozen", training={"epochs": 1})
    with pytest.raises(ContractViolation) as caught:
        adaptkit.run(recipe, progress=False)
    assert caught.value.rule == "frozen"
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]

"""Contract gaps (issue 14, item 9): what the contract used to let through, now caught and blamed.

- the removal rule runs in every ``adaptkit run`` of a non-mergeable strategy, not only in the kit;
- buffers and module settings (LayerNorm eps, Dropout p, attention scaling) are in the signature;
- a wrap that returns None or changes the task head's shape stops before training, naming the plugin;
- the export is reloaded with plain transformers / peft, not with the strategy's own ``load``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptkit import Strategy
from adaptkit.engine.checkpoint import checkpoint_root
from adaptkit.cli import main
from adaptkit.plugin.contract import (architecture_signature, check_removal, check_signature, check_wrapped, head_shapes,
                               removal_reference)
from adaptkit.errors import ContractViolation
from adaptkit.plugin.registry import reset_registry
from adaptkit.engine.runner import run
from adaptkit.testing import sample_batch as _batch, check_strategy, tiny_bert, tiny_gpt2
from conftest import write_recipe
from plugin_fixtures import fake_distribution

QUIET = {"progress": False, "log": lambda _: None}

# A third-party distribution whose strategies each break the contract in one way.
SLOPPY = '''
import torch
from adaptkit import Strategy, hookimpl
from adaptkit_adapters import BottleneckAdapters


class _HeadOnly(Strategy):
    def wrap(self, model, context):
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(h) for h in context.head_modules))
        return model

    def unwrap(self, model):
        return model


class ReturnsNone(_HeadOnly):
    """Changes the model in place and forgets to return it."""
    name = "returns_none"

    def wrap(self, model, context):
        super().wrap(model, context)


class ShrinksHead(_HeadOnly):
    """Replaces the classifier by a one-output layer: the task has two labels."""
    name = "shrinks_head"

    def wrap(self, model, context):
        model = super().wrap(model, context)
        model.classifier = torch.nn.Linear(model.classifier.in_features, 1)
        return model


class ForgetsHooks(BottleneckAdapters):
    """Returns the base from unwrap without removing the adapters' forward hooks."""
    name = "forgets_hooks"

    def unwrap(self, model):
        return model.base


@hookimpl
def adaptkit_register_strategies(register):
    for cls in (ReturnsNone, ShrinksHead, ForgetsHooks):
        register(cls)
'''
ORIGIN = "from plugin 'sloppy' (distribution adaptkit-sloppy 0.2)"


@pytest.fixture
def sloppy(tmp_path, monkeypatch):
    """The sloppy distribution, installed for this test only."""
    fake_distribution(tmp_path / "site", "adaptkit-sloppy", "0.2", {"sloppy_strategies": SLOPPY},
                      {"sloppy": "sloppy_strategies"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reset_registry()
    yield
    reset_registry()


# ---------------------------------------------------------------------------- signature: buffers, settings

def _violation(changed: torch.nn.Module) -> ContractViolation:
    with pytest.raises(ContractViolation) as caught:
        check_signature("x", architecture_signature(tiny_bert()), architecture_signature(changed), ["classifier"])
    assert caught.value.rule == "signature"
    return caught.value


def test_signature_covers_buffers_and_module_settings():
    model = tiny_bert()
    model.bert.embeddings.LayerNorm.eps = 0.1
    caught = _violation(model)
    assert caught.parameter == "bert.embeddings.LayerNorm"
    assert "eps=1e-12 is now 0.1" in str(caught) and "eps=0.1, elementwise_affine" in str(caught)

    model = tiny_bert()
    model.bert.encoder.layer[1].output.dropout.p = 0.5
    assert "'bert.encoder.layer.1.output.dropout' (Dropout) changed its settings: (p=0.1" in str(_violation(model))

    model = tiny_bert()  # not in extra_repr: a plain scalar attribute of the attention module
    model.bert.encoder.layer[0].attention.self.scaling = 1.0
    assert "scaling=0.25 is now 1.0" in str(_violation(model))

    model = tiny_bert()
    model.bert.embeddings.position_ids = model.bert.embeddings.position_ids.to(torch.int32)
    caught = _violation(model)
    assert caught.parameter == "bert.embeddings.position_ids" and "'torch.int32'" in str(caught)

    model = tiny_bert()
    model.bert.encoder.register_buffer("scale", torch.ones(1))
    caught = _violation(model)
    assert caught.parameter == "bert.encoder.scale" and "buffer 'bert.encoder.scale' was added" in str(caught)

    model = tiny_bert()  # run state, not architecture: still the same signature
    model.bert.gradient_checkpointing = True
    assert architecture_signature(model) == architecture_signature(tiny_bert())


class _Frozen(Strategy):
    def wrap(self, model, context):
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(h) for h in context.head_modules))
        return model

    def unwrap(self, model):
        return model


class RetunesNorm(_Frozen):
    name = "retunes_norm"

    def wrap(self, model, context):
        model.bert.embeddings.LayerNorm.eps = 1e-3
        return super().wrap(model, context)


class NarrowsPositions(_Frozen):
    name = "narrows_positions"

    def wrap(self, model, context):
        model.bert.embeddings.position_ids = model.bert.embeddings.position_ids.to(torch.int32)
        return super().wrap(model, context)


class HeadOnlyModelFolder(_Frozen):
    """Declares a transformers model folder but writes only the head; its own load() hides that."""

    name = "head_only_folder"

    def save(self, model, directory):
        head = {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
        model.save_pretrained(directory, state_dict=head, safe_serialization=True)
        return directory

    def load(self, base_model, directory):
        from safetensors.torch import load_file

        base_model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")), strict=False)
        return base_model


@pytest.mark.parametrize("strategy, rule, parameter, words", [
    (RetunesNorm, "signature", "bert.embeddings.LayerNorm", "eps=1e-12 is now 0.001"),
    (NarrowsPositions, "signature", "bert.embeddings.position_ids", "torch.int32"),
    (HeadOnlyModelFolder, "export", None,
     "export reloaded with transformers AutoModelForSequenceClassification.from_pretrained"),
])
def test_the_kit_catches_settings_buffers_and_exports_only_its_own_load_reads(strategy, rule, parameter, words):
    with pytest.raises(ContractViolation) as caught:
        check_strategy(strategy, families=["bert"])
    assert caught.value.rule == rule and caught.value.parameter == parameter
    assert words in str(caught.value)
    # not installed: named by its class, so the author still knows which one
    assert f"[strategy class {__name__}.{strategy.__qualname__}, registered by no installed plugin]" \
        in str(caught.value)


# ---------------------------------------------------------------------------- right after wrap

def test_check_wrapped_finds_the_head_through_wrappers():
    base = tiny_bert()
    heads = head_shapes(base, ["classifier"])
    assert heads == {"classifier.weight": (3, 32), "classifier.bias": (3,)}
    from peft import LoraConfig, get_peft_model

    check_wrapped("x", get_peft_model(base, LoraConfig(r=2, target_modules=["query"],
                                                       modules_to_save=["classifier"])), heads)
    shrunk = tiny_bert()
    shrunk.classifier = torch.nn.Linear(32, 2)
    with pytest.raises(ContractViolation, match=r"'classifier.weight' from shape \(3, 32\) to \(2, 32\)"):
        check_wrapped("x", shrunk, heads)
    with pytest.raises(ContractViolation, match="wrap returned NoneType None, not a torch.nn.Module"):
        check_wrapped("x", None, heads)


def test_a_wrap_that_returns_none_stops_plan_with_the_plugin_named(sloppy, tiny_recipe, tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("returns_none"))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "strategy 'returns_none' broke the contract rule 'signature'" in err
    assert "wrap returned NoneType None" in err and ORIGIN in err
    assert "Traceback" not in err


def test_a_wrap_that_shrinks_the_head_stops_the_run_before_training(sloppy, tiny_recipe, tmp_path):
    recipe = tiny_recipe("shrinks_head", training={"epochs": 1})
    with pytest.raises(ContractViolation) as caught:
        run(recipe, **QUIET)
    message = str(caught.value)
    assert caught.value.rule == "signature" and caught.value.parameter == "classifier.weight"
    assert "from shape (2, 32) to (1, 32)" in message
    assert message.count("(distribution adaptkit-sloppy 0.2)") == 1 and ORIGIN in message
    assert not checkpoint_root(tmp_path / "run").exists()  # stopped before the first step
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- removal in a run

def test_removal_reference_compares_head_inputs_or_logits():
    batches = [_batch(1), _batch(2)]
    bert = tiny_bert().eval()
    reference = removal_reference(bert, batches, ["classifier"], max_values=10**9)
    assert [what for what, _ in reference[0]] == ["input of task head 'classifier'"]
    assert reference[0][0][1].shape == (6, 32)
    with torch.no_grad():
        bert.classifier.weight.add_(1.0)  # a trained head is not a trace of the strategy
    check_removal("x", reference, bert, batches, ["classifier"])
    gpt2 = tiny_gpt2().eval()
    reference = removal_reference(gpt2, batches, [], max_values=1)  # no head: logits; the cap keeps one batch
    assert len(reference) == 1 and reference[0][0][0] == "logits"
    gpt2.transformer.ln_f.register_forward_hook(lambda module, args, out: out * 1.0001)  # a leftover hook
    with pytest.raises(ContractViolation, match="rule 'removal'.*logits with the strategy removed"):
        check_removal("x", reference, gpt2, batches, [])


def test_a_run_checks_the_removal_rule_and_names_the_plugin(sloppy, tiny_recipe, tmp_path):
    recipe = tiny_recipe("forgets_hooks", training={"epochs": 1})
    with pytest.raises(ContractViolation) as caught:
        run(recipe, **QUIET)
    message = str(caught.value)
    assert caught.value.rule == "removal"
    assert "input of task head 'classifier' with the strategy removed, against the base before wrap" in message
    assert "eval batch 1 of 2 (16 rows)" in message and ORIGIN in message
    assert not (tmp_path / "run").exists()


def test_a_good_non_mergeable_run_states_removal_and_the_plain_peft_reload(tiny_recipe):
    result = run(tiny_recipe("prompt_tuning", training={"epochs": 1}), **QUIET)
    contract = "\n".join(result.metrics["contract"])
    assert "removal: with the strategy removed the model computes bit-exactly what the base computed " \
           "before wrap below the task head, on 32 eval rows" in contract
    assert "export: adapter/ reloads with peft PeftModel.from_pretrained on a freshly built base" in contract

"""The example plugin's own tests: the same conformance kit every adaptkit strategy runs."""
from __future__ import annotations

import pytest
import torch

from adaptkit.testing import build_family, check_strategy, strategy_checks, train_steps, wrap_context
from adaptkit_example import BitFit


def test_check_strategy_passes():
    report = check_strategy(BitFit)
    assert sum("equivalence" in line for line in report.passed) == 2


CHECKS = strategy_checks(BitFit)


@pytest.mark.parametrize("name, check", CHECKS, ids=[name for name, _ in CHECKS])
def test_contract(name, check):
    """Each rule on each family as its own test, so every failure shows (scikit-learn's shape)."""
    check()


def test_only_biases_and_head_train():
    torch.manual_seed(0)
    model = build_family("bert")
    BitFit().wrap(model, wrap_context(model, "bert"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)
    assert "classifier.weight" in trainable
    assert "bert.encoder.layer.0.attention.self.query.bias" in trainable
    assert "bert.encoder.layer.0.attention.self.query.weight" not in trainable


def test_weights_do_not_move_biases_do():
    torch.manual_seed(0)
    model = build_family("gpt2")
    strategy = BitFit({"train_head": False})
    strategy.wrap(model, wrap_context(model, "gpt2"))
    weight = model.transformer.h[0].mlp.c_fc.weight.clone()
    bias = model.transformer.h[0].mlp.c_fc.bias.clone()
    train_steps(strategy, model)
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, weight)
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.bias, bias)
    assert not model.score.weight.requires_grad

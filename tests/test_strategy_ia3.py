"""The ``ia3`` strategy: peft IA3 vectors, merged into the base weights by unwrap."""
from __future__ import annotations

import pytest
import torch

from adaptkit.testing import FAMILIES, wrap_context as _context, train_steps as _train_steps, check_strategy
from adaptkit_ia3 import IA3, IA3Options


def test_check_strategy_passes():
    report = check_strategy(IA3)
    assert sum("equivalence" in line for line in report.passed) == 2


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_only_scaling_vectors_and_head_train(family):
    torch.manual_seed(0)
    base = FAMILIES[family]()
    total = sum(p.numel() for p in base.parameters())
    model = IA3().wrap(base, _context(base, family))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("ia3_l" in n for n in trainable)
    assert all("ia3_l" in n or "modules_to_save" in n for n in trainable), trainable
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < total / 10


def test_explicit_targets_need_feedforward_modules():
    with pytest.raises(ValueError, match="feedforward_modules"):
        IA3Options(target_modules=["key"])
    IA3Options(target_modules=["key", "value"], feedforward_modules=[])


def test_unwrap_changes_base_weights():
    torch.manual_seed(0)
    base = FAMILIES["bert"]()
    before = base.bert.encoder.layer[0].attention.self.key.weight.detach().clone()
    strategy = IA3()
    model = strategy.wrap(base, _context(base, "bert"))
    _train_steps(strategy, model)
    merged = strategy.unwrap(model)
    assert not torch.equal(merged.bert.encoder.layer[0].attention.self.key.weight, before)

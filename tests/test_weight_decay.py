"""Which parameters get no weight decay is one rule, ``Strategy.no_weight_decay`` (issue 23 item 1):
the default groups, LoRA+'s and layer-wise decay's all ask it, so one override changes all three."""
from __future__ import annotations

import pytest

import adaptkit
from adaptkit.testing import build_family, wrap_context


def _undecayed(groups) -> set[int]:
    return {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


@pytest.mark.parametrize("name, options", [("full", None), ("full", {"layer_decay": 0.8}),
                                           ("lora", None), ("lora", {"loraplus_lr_ratio": 16})])
def test_every_parameter_groups_asks_the_one_rule(name, options):
    base = adaptkit.get_strategy(name)

    class DecayEmbeddingsToo(base):  # type: ignore[misc, valid-type]
        def no_weight_decay(self, parameter, param):
            return super().no_weight_decay(parameter, param) or "embeddings" in parameter

    for cls in (base, DecayEmbeddingsToo):
        model = build_family("bert")
        strategy = cls(options)
        model = strategy.wrap(model, wrap_context(model, "bert"))
        groups = strategy.parameter_groups(model, 1e-3, 0.01)
        named = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        expected = {i for i, n in named.items() if strategy.no_weight_decay(n, dict(model.named_parameters())[n])}
        assert _undecayed(groups) == expected
        assert all(g["weight_decay"] == 0.01 for g in groups if not {id(p) for p in g["params"]} & expected)
        if cls is DecayEmbeddingsToo and name == "full":
            assert any("word_embeddings" in named[i] for i in expected)
    # the default rule: vectors and norms
    model = build_family("bert")
    assert {n for n, p in model.named_parameters() if base().no_weight_decay(n, p)} == {
        n for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()}

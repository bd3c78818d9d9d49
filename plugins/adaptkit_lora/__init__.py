"""``lora``: low-rank adapters through peft; merges back into the base weights exactly.

Everything but the name is ``adaptkit.LowRankStrategy``, the public low-rank building block
that ``qlora`` subclasses too: no plugin imports another, and both stay one implementation.
"""
from __future__ import annotations

from adaptkit import LowRankOptions, LowRankStrategy, hookimpl

# The layer kinds a lora target_modules entry may name (peft's LoRA layer types).
LORA_LAYERS: tuple[str, ...] = LowRankStrategy.layer_kinds
# Attention and feed-forward projections per model family, adapted when the recipe names none.
DEFAULT_TARGETS = LowRankStrategy.default_targets
target_modules_for = LowRankStrategy.target_modules_for


class LoraOptions(LowRankOptions):
    """The ``lora`` recipe section: every low-rank option (rank, alpha, DoRA, rsLoRA, LoRA+, train_head)."""


class Lora(LowRankStrategy):
    """Low-rank adapters (LoRA, DoRA, rsLoRA, LoRA+) on attention and feed-forward layers."""

    name = "lora"
    Options = LoraOptions
    mergeable = True
    default_learning_rate = 5e-4
    layer_kinds = LORA_LAYERS


@hookimpl
def adaptkit_register_strategies(register):
    register(Lora)

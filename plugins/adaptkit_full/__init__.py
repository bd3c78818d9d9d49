"""``full``: every weight trains. The baseline every parameter-efficient method is judged by."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from adaptkit import Strategy, StrategyOptions, hookimpl


class FullOptions(StrategyOptions):
    layer_decay: float = Field(
        1.0, gt=0, le=1,
        description="Layer-wise learning-rate decay: block i of n trains at lr * decay**(n - i); 1 = off.")


class FullFineTune(Strategy):
    """Train all weights of the pretrained model (and the task head)."""

    name = "full"
    Options = FullOptions
    mergeable = True
    export_kind = "model"
    default_learning_rate = 3e-5
    # compare trains this strategy from random weights as its from-scratch baseline.
    trains_every_weight = True

    def wrap(self, model, context):
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def unwrap(self, model):
        return model

    def parameter_groups(self, model, learning_rate: float, weight_decay: float) -> list[dict[str, Any]]:
        decay = self.options.layer_decay
        if decay >= 1.0:
            return super().parameter_groups(model, learning_rate, weight_decay)
        from adaptkit import find_block_list

        blocks_path, count = find_block_list(model)
        groups: dict[tuple[float, bool], list] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            depth = _depth(name, blocks_path, count)
            scale = decay ** (count + 1 - depth)
            no_decay = self.no_weight_decay(name, param)  # the base class's one rule
            groups.setdefault((scale, no_decay), []).append(param)
        return [
            {"params": params, "lr": learning_rate * scale, "weight_decay": 0.0 if no_decay else weight_decay}
            for (scale, no_decay), params in sorted(groups.items(), key=lambda kv: kv[0])
        ]


def _depth(name: str, blocks_path: str, count: int) -> int:
    """0 for embeddings, i+1 for block i, count+1 for everything after the blocks (head)."""
    prefix = blocks_path + "."
    if prefix in name:
        rest = name.split(prefix, 1)[1]
        return int(rest.split(".", 1)[0]) + 1
    return 0 if "embed" in name or "wte" in name or "wpe" in name else count + 1


@hookimpl
def adaptkit_register_strategies(register):
    register(FullFineTune)

"""``partial_freeze``: freeze the embeddings and the first blocks; train the rest and the head.

Lower layers of a pretrained transformer hold general features that transfer as they are;
upper layers are more task-specific. Freezing the bottom saves memory and compute (no
gradients through frozen parameters, no optimizer state for them) and guards small datasets
against overwriting what the pretrained model knew. The block stack is found with
``adaptkit.find_block_list``, so BERT, GPT-2, Llama and ViT need no names here.

Torch is imported inside functions only, so listing plugins and validating recipes stay fast.
"""
from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Any, Optional, Union

from pydantic import Field, StrictInt, confloat, field_validator

from adaptkit import Strategy, StrategyOptions, families, hookimpl

if TYPE_CHECKING:
    import torch

# Share of the blocks frozen when the recipe says nothing, per family (config.model_type), and
# the share for other families: measured defaults kept in adaptkit.families.
DEFAULT_FRACTIONS: dict[str, float] = families.FREEZE_FRACTIONS
DEFAULT_FRACTION = families.FREEZE_FRACTION


class PartialFreezeOptions(StrategyOptions):
    freeze_blocks: Optional[Union[StrictInt, confloat(ge=0, le=1)]] = Field(
        None, description="Blocks frozen from the bottom: an integer count (e.g. 4), or a float fraction "
                          "of the stack (e.g. 0.5, rounded down). Default: the family's fraction when no "
                          "freeze_patterns are given, none when they are.")
    freeze_embeddings: bool = Field(
        True, description="Freeze everything before the first block (token, position and patch embeddings).")
    freeze_patterns: list[str] = Field(
        default_factory=list,
        description="Extra parameters to freeze: shell globs matched against module or parameter names "
                    "(e.g. '*.attention.*'), or regular expressions prefixed 're:' (e.g. 're:layer\\.1\\.'). "
                    "A pattern matching nothing is an error; the task head is never frozen by a pattern.")
    train_head: bool = Field(True, description="Train the task head.")

    @field_validator("freeze_blocks", mode="before")
    @classmethod
    def _count_or_fraction(cls, value: Any) -> Any:
        # YAML's `yes` / `true` would otherwise read as the fraction 1.0 and freeze every block.
        if isinstance(value, bool):
            raise ValueError("freeze_blocks must be a count (e.g. 4) or a fraction (e.g. 0.5), not a boolean")
        if isinstance(value, int) and value < 0:
            raise ValueError("freeze_blocks must be a count >= 0 or a fraction in [0, 1]")
        return value

    @field_validator("freeze_patterns")
    @classmethod
    def _valid_regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as error:
                    raise ValueError(f"freeze_patterns: {pattern!r} is not a valid regular expression: {error}")
        return patterns


def pattern_matches(pattern: str, parameter: str) -> bool:
    """Whether ``pattern`` selects ``parameter``: by the name itself or by any module holding it."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], parameter) is not None
    parts = parameter.split(".")
    names = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def blocks_to_freeze(setting: Union[int, float, None], count: int, model_type: str, patterns: list[str]) -> int:
    """How many blocks, from the bottom, the options freeze on a stack of ``count`` blocks."""
    if setting is None:
        if patterns:
            return 0
        setting = DEFAULT_FRACTIONS.get(model_type, DEFAULT_FRACTION)
    if isinstance(setting, float):
        return int(setting * count)
    if setting > count:
        raise ValueError(f"partial_freeze: freeze_blocks is {setting}, but this model has only {count} blocks "
                         f"(0 to {count} can be frozen; a fraction such as 0.5 adapts to any depth)")
    return setting


def _block_index(name: str, prefix: str) -> Optional[int]:
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


class PartialFreeze(Strategy):
    """Freeze embeddings and the lowest blocks (count, fraction or name patterns); train the rest."""

    name = "partial_freeze"
    Options = PartialFreezeOptions
    mergeable = True
    export_kind = "model"
    default_learning_rate = 5e-5
    head_options = ("train_head",)

    def frozen_names(self, model: "torch.nn.Module", context: Any) -> list[str]:
        """The parameter names these options freeze on ``model``, in model order."""
        from adaptkit import find_block_list

        opts = self.options
        path, count = find_block_list(model)
        frozen_count = blocks_to_freeze(opts.freeze_blocks, count, context.model_type, opts.freeze_patterns)
        prefix = path + "."
        heads = list(context.head_modules)
        unmatched = set(opts.freeze_patterns)
        frozen: list[str] = []
        before_blocks = True
        for name, _ in model.named_parameters():
            index = _block_index(name, prefix)
            if index is not None:
                before_blocks = False
            is_head = any(name == h or name.startswith(h + ".") for h in heads)
            if is_head:
                if not opts.train_head:
                    frozen.append(name)
                continue
            hits = {p for p in opts.freeze_patterns if pattern_matches(p, name)}
            unmatched -= hits
            if (hits or (index is not None and index < frozen_count)
                    or (before_blocks and index is None and opts.freeze_embeddings)):
                frozen.append(name)
        if unmatched:
            raise ValueError(f"partial_freeze: freeze_patterns {sorted(unmatched)} match no parameter of "
                             f"{type(model).__name__} outside the task head (blocks are at {path!r})")
        return frozen

    def wrap(self, model: "torch.nn.Module", context: Any) -> "torch.nn.Module":
        frozen = set(self.frozen_names(model, context))
        for name, param in model.named_parameters():
            param.requires_grad_(name not in frozen)
        return model

    def unwrap(self, model: "torch.nn.Module") -> "torch.nn.Module":
        return model


@hookimpl
def adaptkit_register_strategies(register):
    register(PartialFreeze)

"""``partial_freeze``: freeze the embeddings and the first blocks; train the rest and the head.

Lower layers of a pretrained transformer hold general features that transfer as they are;
upper layers are more task-specific. Freezing the bottom saves memory and compute (no
gradients through frozen parameters, no optimizer state for them) and guards small datasets
against overwriting what the pretrained model knew. The block stack is found with
``adaptkit.find_block_list``, so BERT, GPT-2, Llama and ViT need no names here.

On an encoder–decoder model (a ViT+GPT-2 captioner, T5, BART) ``freeze_blocks`` counts in the
encoder's stack and ``freeze_embeddings`` freezes what comes before it (patch or token
embeddings); the decoder trains whole unless ``freeze_decoder_blocks`` freezes its first blocks
too (and then, with ``freeze_embeddings``, its own embeddings). "Freeze the encoder's early
blocks, train its later blocks and the decoder" is ``freeze_blocks: N`` alone.

Torch is imported inside functions only, so listing plugins and validating recipes stay fast.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

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
    freeze_decoder_blocks: Optional[Union[StrictInt, confloat(ge=0, le=1)]] = Field(
        None, description="Encoder-decoder models only: blocks of the decoder frozen from the bottom (a count "
                          "or a fraction, as freeze_blocks). Default: none, the whole decoder trains.")
    freeze_embeddings: bool = Field(
        True, description="Freeze everything before the first block (token, position and patch embeddings); "
                          "on an encoder-decoder model, before the encoder's first block, and before the "
                          "decoder's when freeze_decoder_blocks freezes some of its blocks.")
    freeze_patterns: list[str] = Field(
        default_factory=list,
        description="Extra parameters to freeze: shell globs matched against module or parameter names "
                    "(e.g. '*.attention.*'), or regular expressions prefixed 're:' (e.g. 're:layer\\.1\\.'). "
                    "A pattern matching nothing is an error; the task head is never frozen by a pattern.")
    train_head: bool = Field(True, description="Train the task head.")

    @field_validator("freeze_blocks", "freeze_decoder_blocks", mode="before")
    @classmethod
    def _count_or_fraction(cls, value: Any, info: Any) -> Any:
        # YAML's `yes` / `true` would otherwise read as the fraction 1.0 and freeze every block.
        if isinstance(value, bool):
            raise ValueError(f"{info.field_name} must be a count (e.g. 4) or a fraction (e.g. 0.5), not a boolean")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"{info.field_name} must be a count >= 0 or a fraction in [0, 1]")
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


def blocks_to_freeze(setting: Union[int, float, None], count: int, model_type: str, patterns: list[str],
                     option: str = "freeze_blocks", where: str = "this model") -> int:
    """How many blocks, from the bottom, the options freeze on a stack of ``count`` blocks."""
    if setting is None:
        if patterns:
            return 0
        setting = DEFAULT_FRACTIONS.get(model_type, DEFAULT_FRACTION)
    if isinstance(setting, float):
        return int(setting * count)
    if setting > count:
        raise ValueError(f"partial_freeze: {option} is {setting}, but {where} has only {count} blocks "
                         f"(0 to {count} can be frozen; a fraction such as 0.5 adapts to any depth)")
    return setting


@dataclass(frozen=True)
class Stack:
    """One block stack and what the options freeze of it: its first ``frozen`` blocks, and with
    ``embeddings`` the parameters of its ``scope`` that come before its first block."""

    path: str
    count: int
    frozen: int
    embeddings: bool
    scope: Callable[[str], bool]


def _common_root(model: "torch.nn.Module", decoder_path: str, encoder_path: str) -> str:
    """The decoder's root: the shortest prefix of its stack's path that is not a prefix of the encoder's
    (``decoder`` of ``decoder.transformer.h``; ``model.decoder`` of ``model.decoder.layers``)."""
    parts = decoder_path.split(".")
    for end in range(1, len(parts) + 1):
        root = ".".join(parts[:end])
        if not (encoder_path == root or encoder_path.startswith(root + ".")):
            return root
    return decoder_path


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

    def stacks(self, model: "torch.nn.Module", context: Any) -> list[Stack]:
        """The block stacks the options freeze from the bottom: the model's one stack, or on an
        encoder–decoder model its encoder's (``freeze_blocks``) and its decoder's (``freeze_decoder_blocks``)."""
        from adaptkit import find_block_list

        opts = self.options
        try:
            decoder_path, decoder_count = find_block_list(model, "decoder")
            encoder_path, encoder_count = find_block_list(model, "encoder")
        except ValueError:
            if opts.freeze_decoder_blocks is not None:
                raise ValueError(f"partial_freeze: freeze_decoder_blocks applies to encoder-decoder models; this "
                                 f"{type(model).__name__} has one stack of blocks ({find_block_list(model)[0]!r}), "
                                 f"which freeze_blocks counts in") from None
            path, count = find_block_list(model)
            frozen = blocks_to_freeze(opts.freeze_blocks, count, context.model_type, opts.freeze_patterns)
            return [Stack(path, count, frozen, opts.freeze_embeddings, lambda name: True)]
        # The default share follows the encoder's family (a VisionEncoderDecoder's config names it).
        config = getattr(model, "config", None)
        family = getattr(getattr(config, "encoder", None), "model_type", None) or context.model_type
        encoder_frozen = blocks_to_freeze(opts.freeze_blocks, encoder_count, family, opts.freeze_patterns,
                                          "freeze_blocks", f"this model's encoder ({encoder_path!r})")
        decoder_frozen = blocks_to_freeze(opts.freeze_decoder_blocks or 0, decoder_count, family, [],
                                          "freeze_decoder_blocks", f"this model's decoder ({decoder_path!r})")
        decoder_root = _common_root(model, decoder_path, encoder_path)
        in_decoder = (lambda name: name.startswith(decoder_root + ".")) if decoder_root else (lambda name: False)
        return [Stack(encoder_path, encoder_count, encoder_frozen, opts.freeze_embeddings,
                      lambda name: not in_decoder(name)),
                Stack(decoder_path, decoder_count, decoder_frozen, opts.freeze_embeddings and decoder_frozen > 0,
                      in_decoder)]

    def frozen_names(self, model: "torch.nn.Module", context: Any) -> list[str]:
        """The parameter names these options freeze on ``model``, in model order."""
        opts = self.options
        stacks = self.stacks(model, context)
        heads = list(context.head_modules)
        unmatched = set(opts.freeze_patterns)
        frozen: list[str] = []
        started = [False] * len(stacks)  # whether a stack's first block has been passed, in model order
        for name, _ in model.named_parameters():
            in_block = False
            for i, stack in enumerate(stacks):
                index = _block_index(name, stack.path + ".")
                if index is not None:
                    started[i], in_block = True, True
                    if index < stack.frozen:
                        in_block = "frozen"
            is_head = any(name == h or name.startswith(h + ".") for h in heads)
            if is_head:
                if not opts.train_head:
                    frozen.append(name)
                continue
            hits = {p for p in opts.freeze_patterns if pattern_matches(p, name)}
            unmatched -= hits
            embedding = not in_block and any(stack.embeddings and not started[i] and stack.scope(name)
                                             for i, stack in enumerate(stacks))
            if hits or in_block == "frozen" or embedding:
                frozen.append(name)
        if unmatched:
            paths = " and ".join(repr(stack.path) for stack in stacks)
            raise ValueError(f"partial_freeze: freeze_patterns {sorted(unmatched)} match no parameter of "
                             f"{type(model).__name__} outside the task head (blocks are at {paths})")
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

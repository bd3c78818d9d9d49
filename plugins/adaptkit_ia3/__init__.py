"""``ia3``: IA3 through peft: learned vectors rescale keys, values and feed-forward activations.

Fewer trainable values than LoRA (one per channel of each adapted layer). The rescaling is
a per-channel multiplication of a linear layer's weights, so ``unwrap`` merges it into the
base weights (peft ``merge_and_unload``) and the merged model computes what the trained one did.
"""
from __future__ import annotations

from typing import Optional, Union

from pydantic import Field, model_validator

from adaptkit import PeftStrategy, StrategyOptions, hookimpl

# The layer kinds peft's IA3 can rescale, by class name: the ones a target_modules entry may name.
IA3_LAYERS = ("Linear", "Conv1D", "Conv2d", "Conv3d")


class IA3Options(StrategyOptions):
    target_modules: Optional[Union[list[str], str]] = Field(
        None, description="Modules (names or a regex) to rescale; peft's per-family defaults when absent "
                          "(keys, values and the feed-forward output).")
    feedforward_modules: Optional[Union[list[str], str]] = Field(
        None, description="Which of target_modules are feed-forward layers (their input is rescaled, not "
                          "their output); required when target_modules is set.")
    train_head: bool = Field(True, description="Train the task head (peft modules_to_save).")

    @model_validator(mode="after")
    def _both_or_neither(self) -> "IA3Options":
        if self.target_modules is not None and self.feedforward_modules is None:
            raise ValueError("feedforward_modules must be given with target_modules (use [] if none are)")
        if self.feedforward_modules is not None and self.target_modules is None:
            raise ValueError("target_modules must be given with feedforward_modules")
        return self


class IA3(PeftStrategy):
    """IA3: learned per-channel rescaling of keys, values and feed-forward layers; merges exactly."""

    name = "ia3"
    Options = IA3Options
    mergeable = True
    # IA3's vectors start at 1 and need a large step to move; the paper trains at 3e-3.
    default_learning_rate = 3e-3
    head_options = ("train_head",)

    def peft_config(self, context):
        from peft import IA3Config

        opts = self.options
        heads = list(context.head_modules)
        return IA3Config(task_type=context.peft_task_type, target_modules=opts.target_modules,
                         feedforward_modules=opts.feedforward_modules,
                         fan_in_fan_out=context.model_type == "gpt2",  # GPT-2 stores weights as Conv1D
                         modules_to_save=heads if opts.train_head and heads else None,
                         exclude_modules=heads or None)

    def check_targets(self, model, context) -> None:
        """Each ``target_modules`` and ``feedforward_modules`` entry must match a module; the
        feed-forward ones must also be targets (peft would drop or refuse them)."""
        from adaptkit import TargetModuleError, resolve_targets

        opts = self.options
        targets = resolve_targets(model, opts.target_modules, self.name, kinds=IA3_LAYERS,
                                  exclude=context.head_modules)
        feedforward = resolve_targets(model, opts.feedforward_modules, self.name, option="feedforward_modules",
                                      kinds=IA3_LAYERS, exclude=context.head_modules)
        targeted = {name for names in targets.values() for name in names}
        for entry, names in feedforward.items():
            if not set(names) & targeted:
                raise TargetModuleError(f"strategy 'ia3': feedforward_modules entry {entry!r} is not among the "
                                        f"modules target_modules selects; add it to target_modules too")

    def wrap(self, model, context):
        from peft import get_peft_model

        self.check_targets(model, context)
        return get_peft_model(model, self.peft_config(context))


@hookimpl
def adaptkit_register_strategies(register):
    register(IA3)

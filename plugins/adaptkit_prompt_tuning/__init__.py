"""``prompt_tuning``: trained virtual tokens through peft, base weights untouched.

Prompt tuning prepends learned embeddings to the input. They cannot be folded into the base
weights, so the strategy is non-mergeable: ``unwrap`` removes the virtual tokens and returns the base model with the
trained task head put back in its place (peft trains the head as a ``ModulesToSaveWrapper``
copy), so the signature is exactly the base one and, apart from the head, so are the outputs.

``prefix_tuning`` (learned keys and values in every attention layer) is not registered: with
peft 0.21 and transformers 5, the sequence-classification models (BERT, GPT-2, ...) no longer
accept ``past_key_values``, and peft refuses with "Model does not support past key values
which are required for prefix tuning". ``_VirtualTokens`` is the base it would share.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from adaptkit import PeftStrategy, StrategyOptions, hookimpl


def restore_trained_heads(model):
    """The base model of a peft prompt-learning model, each ModulesToSaveWrapper replaced by its trained module."""
    from peft.utils import ModulesToSaveWrapper

    base = model.get_base_model()
    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            trained = module.modules_to_save[module.active_adapter] if isinstance(module.active_adapter, str) \
                else module.modules_to_save[module.active_adapters[0]]
            for param in trained.parameters():
                param.requires_grad_(False)
            setattr(base.get_submodule(parent_name), child, trained)
    return base


class _VirtualTokens(PeftStrategy):
    """A peft prompt-learning method: peft builds the model, unwrap strips it, save/load are peft's."""

    mergeable = False

    def unwrap(self, model):
        return restore_trained_heads(model)


class PromptTuningOptions(StrategyOptions):
    num_virtual_tokens: PositiveInt = Field(20, description="Learned embeddings prepended to every input.")
    init: Literal["sample_vocab", "random"] = Field(
        "sample_vocab", description="Start the virtual tokens from random vocabulary embeddings, or random values.")


class PromptTuning(_VirtualTokens):
    """Prompt tuning: learned input embeddings prepended to every example; the base is untouched."""

    name = "prompt_tuning"
    Options = PromptTuningOptions
    # Soft prompts need large steps (the paper uses 0.3 with Adafactor); the head shares this rate.
    default_learning_rate = 1e-2

    def positions_added(self) -> int:
        return self.options.num_virtual_tokens

    def peft_config(self, context):
        from peft import PromptTuningConfig, PromptTuningInit

        init = PromptTuningInit.SAMPLE_VOCAB if self.options.init == "sample_vocab" else PromptTuningInit.RANDOM
        return PromptTuningConfig(task_type=context.peft_task_type, num_virtual_tokens=self.options.num_virtual_tokens,
                                  prompt_tuning_init=init, modules_to_save=list(context.head_modules) or None)


@hookimpl
def adaptkit_register_strategies(register):
    register(PromptTuning)

"""``prompt_tuning``: trained virtual tokens through peft, base weights untouched.

Prompt tuning prepends learned embeddings to the input. They cannot be folded into the base
weights, so the strategy is non-mergeable: ``unwrap`` removes the virtual tokens and returns the base model with the
trained task head put back in its place (peft trains the head as a ``ModulesToSaveWrapper``
copy), so the signature is exactly the base one and, apart from the head, so are the outputs.

``prefix_tuning`` and ``p_tuning`` come from the peft-methods plugin (``adaptkit_peft_methods.prompt``),
which says where they run.

peft builds a prompt-learning model per task type (SEQ_CLS, CAUSAL_LM, SEQ_2_SEQ_LM, TOKEN_CLS,
QUESTION_ANS, FEATURE_EXTRACTION); a task that maps to none (an image captioner) is refused at
``plan`` with that reason, not with peft's ``KeyError: None`` from inside ``get_peft_model``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from adaptkit import PeftStrategy, PreflightError, StrategyOptions, WrapContext, hookimpl


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

    def preflight(self, context: WrapContext) -> None:
        if context.peft_task_type is None:
            raise PreflightError(
                f"strategy {self.name!r} cannot train a {context.model_type} model for task {context.task!r}: peft "
                f"builds prompt learning for a task type (sequence classification, causal or seq2seq LM, token "
                f"classification, question answering, feature extraction) and this task has none; its virtual "
                f"tokens are prepended to token inputs. Use lora, partial_freeze or full here")

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

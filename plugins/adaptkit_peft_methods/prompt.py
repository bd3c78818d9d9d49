"""Prefix tuning and p-tuning: peft's prompt-learning methods that adaptkit has no strategy for yet.

Measured with peft 0.21.2 and transformers 5.25 on tiny BERT, Llama and GPT-2 models:

- ``p_tuning`` (a small encoder makes the virtual tokens) runs on every text task: sequence
  classification on BERT, Llama and GPT-2, causal LM on Llama and GPT-2.
- ``prefix_tuning`` (learned keys and values in every attention layer, fed as ``past_key_values``)
  runs on causal language models only. For a classifier (``SEQ_CLS``, ``TOKEN_CLS``,
  ``QUESTION_ANS``) peft checks that the model's forward, or its backbone's, names a
  ``past_key_values`` argument (``peft_model.py``, ``_prefix_tuning_forward``); transformers 5 renamed
  that argument to ``cache`` on every model, so peft refuses with "Model does not support past key
  values which are required for prefix tuning". The causal-LM path passes ``past_key_values`` on
  without that check, and transformers 5 still accepts it there. Upstream: peft's open issue
  huggingface/peft#1962 (prompt learning and the transformers cache rework) and
  huggingface/transformers#26578 (task heads without ``past_key_values``). adaptkit refuses
  prefix tuning of a classifier at ``plan`` (``preflight``) naming both, rather than at the first step.

Both are non-mergeable: the virtual tokens cannot be folded into base weights, so ``unwrap``
removes them and puts the trained task head back in place (peft trains it as a
``ModulesToSaveWrapper`` copy). Both prepend positions, so they count against the position table.
"""
from __future__ import annotations

from typing import Any, ClassVar

from adaptkit import PreflightError, WrapContext

from adaptkit_peft_methods.catalog import Method, peft_methods
from adaptkit_peft_methods.strategy import PeftMethod, make_strategy, restore_trained_heads

# Methods generated here, and the peft task types each can serve (None: every one).
PROMPT_METHODS: dict[str, tuple[str, ...] | None] = {
    "p_tuning": None,
    "prefix_tuning": ("CAUSAL_LM", "SEQ_2_SEQ_LM"),
}
PREFIX_UPSTREAM = ("peft 0.21.2 checks classifier forwards for a past_key_values argument, which transformers 5 "
                   "renamed to cache (huggingface/peft#1962, huggingface/transformers#26578)")


class PromptMethod(PeftMethod):
    """A peft prompt-learning method: virtual tokens or prefixes, removed (not merged) by ``unwrap``."""

    mergeable: ClassVar[bool] = False
    # Virtual tokens start from noise and move slowly: prompt methods train at ~10x LoRA's rate.
    default_learning_rate: ClassVar[float] = 1e-2
    task_types: ClassVar[tuple[str, ...] | None] = None

    def positions_added(self) -> int:
        return int(getattr(self.options, "num_virtual_tokens", 0) or 0)

    def preflight(self, context: WrapContext) -> None:
        if self.task_types is not None and context.peft_task_type not in self.task_types:
            raise PreflightError(
                f"strategy {self.name!r} cannot train a {context.peft_task_type or context.task} model: peft says "
                f"\"Model does not support past key values which are required for prefix tuning\" ({PREFIX_UPSTREAM}); "
                f"it runs on causal language models (task causal_lm or instruct); use p_tuning or prompt_tuning here")

    def wrap(self, model: Any, context: WrapContext) -> Any:
        self.preflight(context)
        if context.peft_task_type is None and getattr(model, "main_input_name", "input_ids") == "input_ids":
            # (a model of other inputs is refused by the wrap for those, the more exact reason); else peft's
            # get_peft_model fails with KeyError: None
            raise PreflightError(
                f"strategy {self.name!r} cannot train a {context.model_type} model for task {context.task!r}: peft "
                f"builds prompt learning for a task type (sequence classification, causal or seq2seq LM, token "
                f"classification, question answering, feature extraction) and this task has none")
        return super().wrap(model, context)

    def unwrap(self, model: Any) -> Any:
        return restore_trained_heads(model)


def prompt_strategies() -> dict[str, type[PeftMethod]]:
    """The prompt-learning strategies this plugin makes (those of ``PROMPT_METHODS`` peft has)."""
    found: dict[str, Method] = peft_methods()
    made = {}
    for name, task_types in PROMPT_METHODS.items():
        if name in found:
            cls = make_strategy(found[name], base=PromptMethod)
            cls.task_types = task_types
            made[name] = cls
    return made

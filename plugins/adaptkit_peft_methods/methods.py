"""Which of peft's methods become strategies here, and why the others do not.

Left out, each for a stated reason (``SKIPPED``): the methods adaptkit already serves under its own
name, and those that cannot be trained from one recipe section. The prompt-learning methods
(virtual tokens or key/value prefixes rather than adapted layers) are not generated as layer tuners:
``adaptkit_peft_methods.prompt`` says which of them run here.
"""
from __future__ import annotations

from typing import Any

from adaptkit_peft_methods.catalog import Method, peft_methods

# peft method name -> why it gets no generated strategy.
SKIPPED: dict[str, str] = {
    "lora": "served by adaptkit's own 'lora' and 'qlora' strategies",
    "ia3": "served by adaptkit's own 'ia3' strategy",
    "prompt_tuning": "served by adaptkit's own 'prompt_tuning' strategy",
    "xlora": "X-LoRA mixes LoRA adapters trained before (adapters=); it is not trained from one recipe section",
    "poly": "Poly routes by a task id every batch must carry (task_ids=); adaptkit's tasks give none",
}

# Options peft declares with an empty default (None, []) yet cannot run without: a recipe that
# leaves them out is refused at validate, not deep inside peft at the first forward pass.
NEEDS: dict[str, dict[str, str]] = {
    "adaption_prompt": {"adapter_len": "the number of adapter tokens per layer",
                        "adapter_layers": "how many of the top layers get adapter tokens"},
    "trainable_tokens": {"token_indices": "the ids of the tokens whose embeddings train"},
    "prefix_tuning": {"num_virtual_tokens": "the learned key/value positions in front of every input"},
    "p_tuning": {"num_virtual_tokens": "the learned embeddings prepended to every input"},
}

# Options that take the run's optimizer step count (``WrapContext.total_steps``) when a recipe leaves them
# out: method -> option. AdaLoRA schedules its rank budget over ``total_step`` steps; a guessed count
# would end the schedule early (ranks frozen before training ends) or never reach its target ranks.
RUN_STEPS: dict[str, str] = {"adalora": "total_step"}

# Options whose peft default assumes widths a model may not have, fitted to the model when a recipe
# leaves them out: method -> option. C3A's circulant blocks and VB-LoRA's vectors must divide the in and
# out features of every adapted layer; peft's 256 divides 768 and 4096 but not MiniLM's 384, so both
# refused the shipped model.
FITTED_TO_WIDTHS: dict[str, str] = {"c3a": "block_size", "vblora": "vector_length"}

# Methods that adapt whole blocks and find them by peft's own search for a decoder stack (a ModuleList
# named ``layers`` or ``h``): on another stack (BERT's ``encoder.layer``) peft refuses ("Unable to
# automatically find a nn.ModuleList of decoder layers"), so a recipe without target_modules gets the
# model's block list (``adaptkit.find_block_list``) as a pattern of its blocks.
BLOCK_TARGETS: set[str] = {"shadow"}
PEFT_STACK_NAMES = ("layers", "h")

# Methods that feed the backbone token ids (peft's Shadow builds its side network from input_ids;
# trainable tokens retrains rows of the input embedding): a model whose input is not token ids
# (an image model, main_input_name "pixel_values") is refused at wrap with this reason.
TOKEN_INPUT: dict[str, str] = {
    "shadow": "peft's Shadow network reads input_ids",
    "trainable_tokens": "trainable tokens retrain rows of a token embedding",
    "prefix_tuning": "peft's prompt learning prepends to token inputs",
    "p_tuning": "peft's prompt learning prepends to token inputs",
}

# What the conformance kit (``adaptkit.check_strategy``, ``adaptkit plugins --check``) trains each method
# with on its 32-wide, 2-layer models: peft's defaults assume real widths (C3A's blocks of 256, VB-LoRA's
# vectors of 256, MiSS's rank 64 exceed 32 inputs), and the NEEDS options must be given.
KIT_OPTIONS: dict[str, dict[str, Any]] = {
    "adalora": {"total_step": 3}, "c3a": {"block_size": 8}, "miss": {"r": 8}, "road": {"group_size": 8},
    "shira": {"r": 2}, "vblora": {"vector_length": 8, "num_vectors": 16}, "waveft": {"n_frequency": 64},
    "adaption_prompt": {"adapter_len": 4, "adapter_layers": 1}, "trainable_tokens": {"token_indices": [1, 2, 3]},
    "prefix_tuning": {"num_virtual_tokens": 4}, "p_tuning": {"num_virtual_tokens": 4},
}


def layer_methods() -> dict[str, Method]:
    """The methods this plugin generates a strategy for: peft's, less ``SKIPPED`` and prompt learning."""
    return {name: m for name, m in peft_methods().items() if name not in SKIPPED and not m.prompt_learning}

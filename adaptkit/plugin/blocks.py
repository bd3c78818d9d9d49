"""Find a model's repeated blocks without knowing its family by name.

BERT keeps them at ``encoder.layer``, GPT-2 at ``transformer.h``, Llama at ``model.layers``,
ViT at ``vit.encoder.layer`` (``vit.layers`` from transformers 5.2x on): in every case the blocks are the longest ``nn.ModuleList``
whose items share one class. Strategies that treat "early" and "late" layers differently
(partial freezing, layer-wise learning-rate decay) use this instead of hard-coded names.
"""
from __future__ import annotations

import torch


def find_block_list(model: torch.nn.Module) -> tuple[str, int]:
    """Qualified name and length of the model's main stack of transformer blocks."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 1:
            continue
        classes = {type(item) for item in module}
        if len(classes) != 1:
            continue
        if best is None or len(module) > best[1]:
            best = (name, len(module))
    if best is None:
        raise ValueError(f"found no stack of repeated blocks in {type(model).__name__}")
    return best

"""Find a model's repeated blocks without knowing its family by name.

BERT keeps them at ``encoder.layer``, GPT-2 at ``transformer.h``, Llama at ``model.layers``,
ViT at ``vit.encoder.layer`` (``vit.layers`` from transformers 5.2x on): in every case the blocks are the longest ``nn.ModuleList``
whose items share one class. Strategies that treat "early" and "late" layers differently
(partial freezing, layer-wise learning-rate decay) use this instead of hard-coded names.

An encoder–decoder model (``config.is_encoder_decoder``: T5, BART, a ``VisionEncoderDecoderModel``)
has two stacks, one on each side; ``part="encoder"`` or ``part="decoder"`` finds the one under the
module the model's own ``get_encoder()`` / ``get_decoder()`` return, so "the encoder's first blocks"
means the same on ViT+GPT-2 (``encoder.layers``), T5 (``encoder.block``), BART
(``model.encoder.layers``) and BLIP (``vision_model.encoder.layers``: ``families.SIDES`` names its
sides). Without ``part`` the longest stack of the whole model is returned, as before.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

from adaptkit.plugin.families import SIDES

PARTS = ("encoder", "decoder")


def _side_root(model: torch.nn.Module, part: str) -> Optional[str]:
    """Qualified name of the module holding ``part`` ("" for the model itself), or None where the model
    has no separate encoder and decoder. A family in ``families.SIDES`` (BLIP: ``vision_model`` and
    ``text_decoder``) names its sides there: its config does not call it an encoder-decoder."""
    config = getattr(model, "config", None)
    sides = SIDES.get(getattr(config, "model_type", None))
    if sides is not None:
        name = sides[PARTS.index(part)]
        return name if isinstance(getattr(model, name, None), torch.nn.Module) else None
    if not getattr(config, "is_encoder_decoder", False):
        return None
    getter = getattr(model, f"get_{part}", None)
    try:
        side = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError):
        side = None
    if not isinstance(side, torch.nn.Module) or side is model:
        return None
    return next((name for name, module in model.named_modules() if module is side), None)


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """Whether ``model`` has an encoder and a decoder, each with its own block stack."""
    return _side_root(model, "encoder") is not None and _side_root(model, "decoder") is not None


def find_block_list(model: torch.nn.Module, part: Optional[Literal["encoder", "decoder"]] = None) -> tuple[str, int]:
    """Qualified name and length of the model's main stack of transformer blocks.

    ``part``: on an encoder–decoder model, the stack of its encoder or of its decoder; a model
    without both sides raises ``ValueError`` (say so to the user: the option that asked for it
    applies to encoder–decoder models only).
    """
    prefix = ""
    if part is not None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {part!r}")
        root = _side_root(model, part)
        if root is None:
            raise ValueError(f"{type(model).__name__} is not an encoder-decoder model: it has no separate {part}")
        prefix = root + "." if root else ""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 1 or not name.startswith(prefix):
            continue
        classes = {type(item) for item in module}
        if len(classes) != 1:
            continue
        if best is None or len(module) > best[1]:
            best = (name, len(module))
    if best is None:
        where = f" in its {part} ({prefix[:-1] or 'the model'})" if part else ""
        raise ValueError(f"found no stack of repeated blocks in {type(model).__name__}{where}")
    return best

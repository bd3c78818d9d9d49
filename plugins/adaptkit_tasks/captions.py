"""The pieces of captioning that are not the task class: reading captions and images, the
processor that carries both, caption labels, and one batch of generated captions.

Kept apart from ``image_to_text`` so each piece reads on its own: the data rules (one row per
image and caption, several captions per image, bad rows named), and generation (the same call
for evaluation and ``predict``, so the scores judge what ``predict`` writes).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from adaptkit_tasks.padding import IGNORE


def captions_of(value: Any) -> Optional[list[str]]:
    """A cell's captions: a text is one caption, a list (JSONL) several; None: no caption column value."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return [str(value)]


def caption_problem(value: Any) -> Optional[str]:
    """Why a caption cell cannot be learnt, or None."""
    if isinstance(value, (list, tuple)):
        if not value:
            return "the list of captions is empty"
        bad = [i for i, item in enumerate(value) if not isinstance(item, str) or not item.strip()]
        return f"caption {bad[0] + 1} of the list is empty or not text" if bad else None
    if isinstance(value, dict):
        return "a caption must be text or a list of texts, not an object"
    if value is None or not str(value).strip():
        return "the caption is empty"
    return None


def resolve_image(value: Any, folder: Optional[Path]) -> Any:
    """A path cell as a file path: absolute as it is; relative, read from ``folder`` when the file is
    there, else from the working directory. Decoded images and datasets' dicts pass through."""
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_absolute() and folder is not None and (folder / path).exists():
            return folder / path
        return path
    return value


def image_key(pixels: "Any") -> int:
    """A stable 63-bit fingerprint of one image's pixel values: rows of the same image (one per
    caption) share it, in every process (Python's ``hash`` of bytes differs between processes)."""
    digest = hashlib.blake2b(pixels.detach().float().contiguous().cpu().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def caption_labels(tokenizer: Any, caption: str, max_length: int, end: Optional[int]) -> list[int]:
    """The caption's token ids, cut to ``max_length`` with the end token last: what the decoder learns
    (the start token is the decoder's first input, never a label)."""
    ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
    if end is None:
        return ids[:max_length]
    return ids[:max_length - 1] + [end]


def generator(model: Any) -> Any:
    """The module whose ``generate`` runs the model as wrapped: accelerate's DDP wrapper holds it in
    ``module``; a strategy that keeps its additions beside the base (bottleneck adapters as forward
    hooks on ``base``) has none of its own, and the base's ``generate`` passes through those hooks.
    peft's models forward ``generate`` themselves."""
    import torch

    inner = getattr(model, "module", model)
    while not hasattr(inner, "generate"):
        inner = next((getattr(inner, name) for name in ("base", "base_model", "model")
                      if isinstance(getattr(inner, name, None), torch.nn.Module)), None)
        if inner is None:
            raise TypeError(f"{type(model).__name__} has no generate method, nor a wrapped model that has one")
    return inner


def generate_captions(model: Any, pixel_values: Any, settings: dict[str, Any], end: Optional[int]) -> Any:
    """Token ids generated for each row (start token dropped, padded with -100 after the end token).

    Rows showing the same image (one per reference caption) are generated once: the pixels'
    fingerprints pick one row per image.
    """
    import torch

    keys = [image_key(row) for row in pixel_values]
    first: dict[int, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    unique = list(first.values())
    with torch.no_grad():
        output = generator(model).generate(pixel_values=pixel_values[unique], **settings)
    output = output[:, 1:]  # the decoder start token
    if end is not None:
        ended = (output == end).int().cumsum(dim=1)
        after = (ended - (output == end).int()) > 0  # positions past the first end token
        output = output.masked_fill(after, IGNORE)
    place = {key: i for i, key in enumerate(first)}
    return output[[place[key] for key in keys]]


def decode(tokenizer: Any, ids: Any, end: Optional[int]) -> str:
    """One row of ids as text: up to the end token, padding and special tokens left out."""
    tokens = [int(t) for t in ids if int(t) != IGNORE]
    if end is not None and end in tokens:
        tokens = tokens[:tokens.index(end)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()

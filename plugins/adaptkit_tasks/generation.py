"""Batched generation for ``predict``: prompts left-padded into one batch, greedy by default.

A decoder continues from the last position of each row, so prompts are padded on the left
(right padding would make it continue from pad tokens); ``generate`` derives position ids
from the attention mask, so a padded row computes what it would alone.
"""
from __future__ import annotations

from typing import Any, Optional


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """``input_ids`` and ``attention_mask`` with every prompt flush right."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        if prompt:
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
    return ids, mask


def tokens_that_fit(model: Any, prompt_width: int, max_new_tokens: int) -> int:
    """``max_new_tokens``, capped where the model's position table ends (``adaptkit.position_limit``).

    ``max_new_tokens`` is a most, and a model with a learned position table (GPT-2's 1024) cannot
    generate past it: transformers failed with an index error mid-predict. A prompt that already
    fills the table leaves nothing to generate: that is an error naming both numbers.
    """
    from adaptkit import DataError, position_limit

    limit = position_limit(getattr(model, "config", None) or {})
    if limit is None:
        return max_new_tokens
    if prompt_width >= limit:
        raise DataError(f"a prompt of {prompt_width} tokens fills this model's {limit} positions, leaving none to "
                        f"generate; set task.max_length below {limit}")
    return min(max_new_tokens, limit - prompt_width)


def generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
             stop: list[int], temperature: float = 0.0, top_p: float = 1.0,
             pad_id: Optional[int] = None) -> list[str]:
    """The decoded continuation of each prompt, cut at its first stop token.

    ``temperature`` 0 is greedy decoding (deterministic); above 0 samples, with ``top_p``
    nucleus filtering. An empty prompt starts from the first stop token (the end token),
    since a decoder cannot continue nothing.
    """
    import torch

    pad = pad_id if pad_id is not None else (getattr(tokenizer, "pad_token_id", None) or 0)
    prompts = [p if p else stop[:1] or [pad] for p in prompts]
    ids, mask = left_pad(prompts, pad)
    max_new_tokens = tokens_that_fit(model, ids.shape[1], max_new_tokens)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    with torch.no_grad():
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                max_new_tokens=max_new_tokens, eos_token_id=stop or None, pad_token_id=pad,
                                use_cache=True, **sampling)
    results = []
    for row in output[:, ids.shape[1]:].tolist():
        cut = next((i for i, token in enumerate(row) if token in stop), len(row))
        results.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return results

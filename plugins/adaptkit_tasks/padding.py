"""Batching token sequences of different lengths: the label value losses skip, and right padding.

Every generative task (causal LM, instruct, seq2seq, captioning, preference, packing) pads the same
way and masks the same labels; each module had its own ``IGNORE = -100`` and its own padding loop.
"""
from __future__ import annotations

from typing import Any, Sequence

IGNORE = -100  # the label torch's cross entropy (ignore_index) and transformers' losses skip


def right_padded(sequences: Sequence[Sequence[int]], fill: int) -> Any:
    """The sequences as one ``(rows, longest)`` long tensor: each row's values first, ``fill`` after.
    Right padding keeps a row's position ids 0..n-1, as training saw them."""
    import torch

    out = torch.full((len(sequences), max(len(s) for s in sequences)), fill, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        out[i, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return out


def padded_ids(rows: Sequence[dict[str, Any]], pad: int) -> dict[str, Any]:
    """``input_ids`` right-padded with ``pad`` and the ``attention_mask`` that marks the real tokens."""
    ids = [row["input_ids"] for row in rows]
    return {"input_ids": right_padded(ids, pad), "attention_mask": right_padded([[1] * len(i) for i in ids], 0)}

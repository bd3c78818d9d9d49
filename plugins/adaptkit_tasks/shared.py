"""Helpers more than one task module of this package uses, public here.

They used to be private functions of one task module imported by another (``instruct`` took
``causal_lm``'s token helpers, ``image_classification`` took ``sequence_classification``'s
macro-F1): a private name crossing modules breaks silently when its owner renames it. A module
of their own says they are shared, and neither task depends on the other's internals.
"""
from __future__ import annotations

from typing import Any, Optional


def end_token(tokenizer: Any) -> Optional[int]:
    """The id that ends a text: eos for decoders' tokenizers, [SEP] for BERT-style ones."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def start_tokens(tokenizer: Any) -> list[int]:
    """A BOS prefix where the tokenizer has a distinct one (llama); none where BOS is EOS (gpt2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None and bos != getattr(tokenizer, "eos_token_id", None) else []


def macro_f1(predicted: Any, actual: Any, num_labels: int) -> float:
    """Mean F1 over the classes that occur (predicted or actual); 0.0 when none does."""
    import torch

    scores = []
    for label in range(num_labels):
        tp = ((predicted == label) & (actual == label)).sum().item()
        fp = ((predicted == label) & (actual != label)).sum().item()
        fn = ((predicted != label) & (actual == label)).sum().item()
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(torch.tensor(scores).mean()) if scores else 0.0

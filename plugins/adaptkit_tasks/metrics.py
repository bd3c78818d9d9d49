"""Metrics more than one classification task reports (``sequence_classification``, ``image_classification``)."""
from __future__ import annotations

from typing import Any


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

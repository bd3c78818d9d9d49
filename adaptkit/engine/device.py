"""Where a run trains, decided in one place: the model loader (a quantized base is placed as it
loads), the accelerator, ``advise``'s step timing and ``compare``'s energy figures all ask here.

A GPU is used when CUDA has one and the recipe does not say ``training.device: cpu``; each launched
process takes the GPU its ``LOCAL_RANK`` names. torch is imported inside the functions: the recipe
checks that import this module stay torch-free.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def runs_on_cpu(training: Any) -> bool:
    """Whether a run of this ``training`` section trains on the CPU (no CUDA, or ``device: cpu``)."""
    import torch

    return training.device == "cpu" or not torch.cuda.is_available()


def training_device(training: Any) -> "torch.device":
    """This process's device: ``cuda:LOCAL_RANK`` when it trains on a GPU, else the CPU."""
    import torch

    if runs_on_cpu(training):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))

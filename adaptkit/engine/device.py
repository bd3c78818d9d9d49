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


def native_bf16(training: Any) -> bool:
    """Whether the device a run trains on multiplies bf16 matrices in hardware: a GPU of compute
    capability 8.0 or later (Ampere on), or a CPU with AMX tiles (Sapphire Rapids on), where oneDNN
    runs bf16 matmuls natively. Elsewhere bf16 is emulated and no faster than fp32.

    torch has no public test for AMX; ``torch.cpu._is_amx_tile_supported`` is what its own CPU
    autocast tests use, read with a fallback so a torch without it means "no".
    """
    import torch

    if not runs_on_cpu(training):
        return torch.cuda.get_device_capability(training_device(training))[0] >= 8
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def mixed_precision(training: Any) -> str:
    """``training.mixed_precision`` as accelerate takes it, decided once for the run, plan and advise:
    ``auto`` is bf16 where the device computes it natively (``native_bf16``: measured 1.66x the
    examples/s of fp32 for MiniLM + LoRA on this repository's AMX CPU), full precision elsewhere; fp16
    needs a GPU, so on a CPU it is full precision (the accelerator says so in the log)."""
    precision = training.mixed_precision
    if precision == "auto":
        return "bf16" if native_bf16(training) else "no"
    if precision == "fp16" and runs_on_cpu(training):
        return "no"
    return precision


def training_device(training: Any) -> "torch.device":
    """This process's device: ``cuda:LOCAL_RANK`` when it trains on a GPU, else the CPU."""
    import torch

    if runs_on_cpu(training):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))

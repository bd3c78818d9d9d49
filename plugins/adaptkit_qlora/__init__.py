"""``qlora``: LoRA on a base whose weights are stored in 4-bit (NF4 or FP4) by bitsandbytes.

The core hands every strategy an already-loaded full-precision model, so quantization
happens in ``wrap``: each ``nn.Linear`` (and GPT-2's ``Conv1D``) becomes a bitsandbytes
``Linear4bit`` and, by default, each ``nn.Embedding`` an ``Embedding4bit``, built from the
module's own weights. The task head and any module named in ``skip_modules`` stay in full
precision. LoRA (every option of the ``lora`` strategy: both subclass ``adaptkit.LowRankStrategy``,
so neither plugin imports the other) then trains on top of the frozen 4-bit weights.

``unwrap`` de-quantizes each 4-bit module back to its original class and dtype and merges
the adapter into those de-quantized weights, so the result has the base signature exactly
and computes what the trained 4-bit model computed (it does not re-quantize: a merged
4-bit model would carry a second rounding error and a non-base module tree).

bitsandbytes and torch are imported inside functions: validating a recipe never loads them.

Laid out as PEFT lays out a tuner: ``config`` (the options), ``quantization`` (bitsandbytes:
quantize, de-quantize, the FSDP version), ``strategy`` (the ``QLora`` class); this module
registers it and re-exports their names.
"""
from __future__ import annotations

from adaptkit import hookimpl
from adaptkit_qlora.config import QLoraOptions
from adaptkit_qlora.quantization import (bitsandbytes_available, context_has_conv1d, dequantize_model,
                                         forget_quantization, fsdp_version, quant_state_of, quantize_model,
                                         tied_output)
from adaptkit_qlora.strategy import MERGE_TOLERANCE, QLora

__all__ = ["MERGE_TOLERANCE", "QLora", "QLoraOptions", "bitsandbytes_available", "context_has_conv1d",
           "dequantize_model", "forget_quantization", "fsdp_version", "quant_state_of", "quantize_model",
           "tied_output"]


@hookimpl
def adaptkit_register_strategies(register):
    register(QLora)

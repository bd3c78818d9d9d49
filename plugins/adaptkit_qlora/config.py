"""qlora's options: the recipe's ``strategy`` section for ``qlora`` (every ``lora`` option, from
``adaptkit.LowRankOptions``, plus how the base is quantized). Imports neither torch nor bitsandbytes."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from adaptkit import LowRankOptions


class QLoraOptions(LowRankOptions):
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: NF4 (normal float, the QLoRA choice) or FP4.")
    double_quant: bool = Field(
        True, description="Quantize the per-block scales too (saves ~0.4 bit per weight).")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the 4-bit weights are de-quantized to for each matmul; "
                               "bfloat16 is faster on GPUs, float32 is exact and the CPU default.")
    quantize_embeddings: bool = Field(
        True, description="Store the frozen input embeddings in 4-bit too; on small encoders the "
                          "vocabulary table is half of the model.")
    skip_modules: list[str] = Field(
        default_factory=list,
        description="Modules (qualified names or name suffixes) kept in full precision, besides the task head.")

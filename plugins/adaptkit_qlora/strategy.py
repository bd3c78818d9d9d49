"""The ``qlora`` strategy: LoRA (``adaptkit.LowRankStrategy``) on a base ``adaptkit_qlora.quantization``
stores in 4-bit; what it tells the core (tolerance, quantization, the base's loading arguments) and
the pre-flight that refuses what cannot run."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from adaptkit import LowRankStrategy, PreflightError
from adaptkit_qlora.config import QLoraOptions
from adaptkit_qlora.quantization import (as_list, bitsandbytes_available, context_has_conv1d, torch_dtype,
                                         dequantize_model, forget_quantization, fp32_modules, fsdp_version,
                                         quantize_model, tied_output)

# merged-against-wrapped tolerance per compute dtype. The merged model uses exactly the
# de-quantized weights the 4-bit kernels used, so the 4-bit rounding itself is not part of it;
# what remains is the wrapped model's activation precision. Largest differences measured
# (benchmarks/qlora_memory.py on all-MiniLM-L6-v2 after 5 steps at lr 1e-3; the conformance
# models after 3 steps at lr 1e-2): float32 9e-8 / 6e-8, bfloat16 4.4e-4 / 3.2e-4,
# float16 8.5e-5 / 5.8e-5. Each tolerance leaves about 10x headroom over the worst.
MERGE_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-3, "float16": 1e-3}


class QLora(LowRankStrategy):
    """LoRA on a 4-bit (NF4/FP4) base: the QLoRA recipe; the base takes ~0.14x its float32 memory."""

    name = "qlora"
    Options = QLoraOptions
    mergeable = True
    export_kind = "adapter"
    default_learning_rate = 5e-4
    # float32 compute (the default); instances use MERGE_TOLERANCE[compute_dtype].
    merge_tolerance = MERGE_TOLERANCE["float32"]
    # The class-level answer (listings, compare); instances name their own type and compute dtype.
    quantization = "4-bit (bitsandbytes)"
    quantization_bits = 4  # what the plan's memory estimate reads (the text above is for people)

    def __init__(self, options: QLoraOptions | dict[str, Any] | None = None):
        super().__init__(options)
        self.merge_tolerance = MERGE_TOLERANCE[self.options.compute_dtype]
        # What the plan table shows: the 4-bit type and the compute dtype.
        self.quantization = f"{self.options.quant_type} 4-bit (bitsandbytes), {self.options.compute_dtype} compute"
        self._keep: list[str] = []

    def kept_modules(self, context, model=None) -> list[str]:
        """Modules left in full precision: the task head (its shape follows the task), ``skip_modules``,
        an output layer that shares its weight with the input embeddings (a tied ``lm_head``:
        quantizing one copy would quantize, or untie, the other), and what the architecture keeps
        in float32 (``fp32_modules``: T5's ``wo``)."""
        return (list(context.head_modules) + list(self.options.skip_modules) + tied_output(model)
                + fp32_modules(model))

    def load_kwargs(self, head_modules: list[str], dtype, model=None) -> dict[str, Any]:
        """What ``from_pretrained`` needs to load the base directly in 4-bit (called by the core's
        ``build_model``): a ``BitsAndBytesConfig`` with this strategy's data type, double
        quantization and compute dtype, the kept modules skipped. transformers then quantizes each
        layer as it reads it, so the full-precision model is never held (benchmarks/qlora_memory.py)."""
        if not bitsandbytes_available():
            return {}  # preflight refuses the run with the install command
        from transformers import BitsAndBytesConfig

        keep = list(head_modules) + list(self.options.skip_modules) + tied_output(model)
        return {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.options.quant_type,
            bnb_4bit_use_double_quant=self.options.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(self.options.compute_dtype),
            bnb_4bit_quant_storage=self.quant_storage(dtype), llm_int8_skip_modules=keep or None)}

    def quant_storage(self, dtype) -> Any:
        """The dtype the packed 4-bit bytes are stored as: uint8, or under FSDP the base's own float
        dtype ``dtype`` (the same bytes, viewed), so that FSDP shards them like every other weight.
        Not the compute dtype: with bf16 storage beside a float32 base, a 2-process FSDP2 run with
        bf16 compute changed the bits of frozen float32 biases (the frozen contract stopped it,
        measured on CPU); with the base's dtype every parameter of an FSDP unit has one dtype."""
        import torch

        return dtype if fsdp_version() and isinstance(dtype, torch.dtype) and dtype.is_floating_point \
            else torch.uint8

    def peft_config(self, context):
        config = super().peft_config(context)
        # Linear4bit stores every weight output-major, GPT-2's Conv1D included once quantized.
        config.fan_in_fan_out = False
        return config

    def preflight(self, context) -> None:
        """Refuse what cannot run, before the model is loaded: no bitsandbytes, or FSDP version 1.

        FSDP2 runs: under it the 4-bit bytes are stored as the base's float dtype (``quant_storage``),
        which ``fully_shard`` shards and gathers like any float weight, and bitsandbytes restores
        each layer's quantization state from the module (``fix_4bit_weight_quant_state_from_module``).
        Proven on CPUs over gloo: 2 processes train the adapter 1 process trains (tests/test_fsdp_qlora.py).
        """
        if not bitsandbytes_available():
            raise PreflightError("strategy 'qlora' needs bitsandbytes, which is not installed; install it with: "
                                 "pip install bitsandbytes (or use strategy 'lora' on the full-precision model)")
        distributed = context.distributed  # typed: its text is for people, never parsed
        if distributed is None or not distributed.fsdp:
            return
        version = fsdp_version() or distributed.fsdp_version
        if version != 2:
            raise PreflightError(
                f"strategy 'qlora' cannot run with distributed setting {str(distributed)!r}: FSDP version 1 is not "
                "supported with a 4-bit base (unproven: on CPUs FSDP1 stops for every strategy with torch's "
                "'Inconsistent compute device and `device_id`: cpu vs cpu:0', torch/distributed/fsdp/"
                "_init_utils.py _get_compute_device). Use DDP, or set distributed.fsdp.version: 2 (qlora then "
                "stores the 4-bit weights as the base's float dtype, which FSDP2 shards)")
        if self.options.compute_dtype != "float32":
            raise PreflightError(
                f"strategy 'qlora' under FSDP needs compute_dtype: float32 (got {self.options.compute_dtype}): "
                "bitsandbytes' Linear4bit.forward casts a frozen bias in place to the compute dtype "
                "(`bias.data = bias.data.to(x.dtype)`, bitsandbytes/nn/modules.py), which under fully_shard "
                "changed frozen float32 bias bits (measured on CPUs). Use compute_dtype: float32, or DDP")

    def wrap(self, model, context):
        from peft import get_peft_model

        self.check_targets(model, context)  # before quantizing: a misspelt name fails fast
        self._keep = self.kept_modules(context, model)
        quantize_model(model, self.options, self._keep, float_storage=fsdp_version() is not None)
        return get_peft_model(model, self.peft_config(context))

    def unwrap(self, model):
        """Merge the adapter into a de-quantized copy of the base: the base signature, not re-quantized."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        config = copy.deepcopy(model.peft_config["default"])
        state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        base = forget_quantization(dequantize_model(model.unload()))
        # De-quantized GPT-2 projections are Conv1D again (input-major weights).
        config.fan_in_fan_out = context_has_conv1d(base)
        again = get_peft_model(base, config)
        set_peft_model_state_dict(again, state)
        return again.merge_and_unload()

    def load(self, base_model, directory: Path):
        """Quantize a fresh base exactly as ``wrap`` did, then load the adapter onto it with peft."""
        from peft import PeftModel, PeftConfig

        config = PeftConfig.from_pretrained(directory)
        # lora's config excludes the task head from adaptation and lists it in modules_to_save.
        heads = {*(config.modules_to_save or []), *as_list(config.exclude_modules)}
        keep = sorted(heads) + list(self.options.skip_modules) + tied_output(base_model) + fp32_modules(base_model)
        quantize_model(base_model, self.options, keep)
        return PeftModel.from_pretrained(base_model, directory)

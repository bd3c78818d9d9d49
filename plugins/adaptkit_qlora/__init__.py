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
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from adaptkit import LowRankOptions, LowRankStrategy, PreflightError, hookimpl

# The attribute a quantized module carries to remember what it replaced (class, dtype, extras).
_ORIGIN = "_adaptkit_qlora_origin"

# merged-against-wrapped tolerance per compute dtype. The merged model uses exactly the
# de-quantized weights the 4-bit kernels used, so the 4-bit rounding itself is not part of it;
# what remains is the wrapped model's activation precision. Largest differences measured
# (benchmarks/qlora_memory.py on all-MiniLM-L6-v2 after 5 steps at lr 1e-3; the conformance
# models after 3 steps at lr 1e-2): float32 9e-8 / 6e-8, bfloat16 4.4e-4 / 3.2e-4,
# float16 8.5e-5 / 5.8e-5. Each tolerance leaves about 10x headroom over the worst.
MERGE_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-3, "float16": 1e-3}


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


def _named(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` or one of its ancestors is one of ``patterns`` (exactly or as a suffix)."""
    parts = name.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return any(p in prefixes or any(q.endswith("." + p) for q in prefixes) for p in patterns)


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _dtype(name: str):
    import torch

    return getattr(torch, name)


_EMBEDDING_CLASS: Any = None


def _embedding4bit_class():
    """bitsandbytes' ``Embedding4bit`` that can be saved: peft's adapter export and any checkpoint
    call ``model.state_dict()``, which the stock class refuses. It writes the packed weight and
    its quantization state, as ``Linear4bit`` does."""
    global _EMBEDDING_CLASS
    if _EMBEDDING_CLASS is None:
        import bitsandbytes as bnb
        from torch import nn

        class Embedding4bit(bnb.nn.Embedding4bit):
            def _save_to_state_dict(self, destination, prefix, keep_vars):
                nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
                # Under FSDP the weight is a DTensor shard without its state; Linear4bit then
                # writes the weight alone too (the module keeps the state: ``quant_state_of``).
                state = getattr(self.weight, "quant_state", None)
                for key, value in (state.as_dict(packed=True) if state is not None else {}).items():
                    destination[prefix + "weight." + key] = value if keep_vars else value.detach()

        _EMBEDDING_CLASS = Embedding4bit
    return _EMBEDDING_CLASS


def quantize_model(model, options: QLoraOptions, keep: Iterable[str], float_storage: bool = False):
    """Replace linear layers (and embeddings) outside ``keep`` by 4-bit bitsandbytes modules, in place.

    A pretrained base is normally loaded 4-bit already (``QLora.load_kwargs``: transformers
    quantizes each layer as it reads it); its ``Linear4bit`` layers are kept as they are and only
    tagged for ``dequantize_model``, and what transformers does not quantize (embeddings) is done
    here. A model built from a config (or loaded without the strategy's arguments) is quantized
    here from its own weights, to the same bytes: both use bitsandbytes' ``quantize_4bit``.
    ``float_storage`` (under FSDP) stores the packed bytes as the model's own float dtype rather
    than uint8 (the same bytes, viewed): FSDP then shards them like every other weight.
    """
    import bitsandbytes as bnb
    import torch
    from transformers.pytorch_utils import Conv1D

    keep = list(keep)
    compute = _dtype(options.compute_dtype)
    # the dtype the full-precision parts were loaded in (model.dtype): 4-bit weights are uint8
    # (or, with float storage, this dtype; a bias, a LoRA factor or the head is never 4-bit)
    loaded = next((p.dtype for p in model.parameters() if p.is_floating_point() and
                   not isinstance(p, bnb.nn.Params4bit)), torch.float32)
    stored = loaded if float_storage else torch.uint8
    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):  # quantized as it loaded (from_pretrained): keep its bytes
            module.support_avx512bf16_for_cpu = False
            if getattr(module, _ORIGIN, None) is None:
                source = getattr(module, "source_cls", None) or torch.nn.Linear
                setattr(module, _ORIGIN, {"cls": source, "dtype": loaded})
            continue
        if not name or _named(name, keep):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            transposed = isinstance(module, Conv1D)
            weight = module.weight.detach()
            weight = weight.t() if transposed else weight
            out_features, in_features = weight.shape
            new = bnb.nn.Linear4bit(in_features, out_features, bias=module.bias is not None, compute_dtype=compute,
                                    compress_statistics=options.double_quant, quant_type=options.quant_type,
                                    quant_storage=stored, device="meta")
            new.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False,
                                           compress_statistics=options.double_quant,
                                           quant_type=options.quant_type, quant_storage=stored,
                                           module=new).to(weight.device)
            # bitsandbytes repacks CPU weights for its AVX512-bf16 kernel on the first no-grad forward:
            # that rewrites the frozen 4-bit bytes in place (breaking the frozen rule), switches the
            # scales to bf16 and fails on layers narrower than one block. Keep the portable format.
            new.support_avx512bf16_for_cpu = False
            if module.bias is not None:
                new.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=False)
            setattr(new, _ORIGIN, {"cls": type(module), "dtype": module.weight.dtype})
        elif isinstance(module, torch.nn.Embedding) and options.quantize_embeddings:
            weight = module.weight.detach()
            new = _embedding4bit_class()(module.num_embeddings, module.embedding_dim, dtype=weight.dtype,
                                       quant_type=options.quant_type, quant_storage=stored, device="meta")
            new.quant_storage = stored
            # No double quantization here: Embedding4bit's row-wise lookup (bitsandbytes 0.50)
            # reads the block scales as plain floats and returns wrong rows when they are nested.
            new.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, compress_statistics=False,
                                           quant_type=options.quant_type, quant_storage=stored,
                                           module=new).to(weight.device)
            setattr(new, _ORIGIN, {"cls": type(module), "dtype": weight.dtype,
                                   "padding_idx": module.padding_idx})
        else:
            continue
        setattr(parent, child, new)
    return model


def quant_state_of(module):
    """A 4-bit module's quantization state: on its weight, or, once FSDP has replaced the weight by
    a plain tensor (sharded, gathered), the copy bitsandbytes keeps on the module itself."""
    state = getattr(module.weight, "quant_state", None)
    return state if state is not None else module.quant_state


def dequantize_model(model):
    """Put every module ``quantize_model`` replaced back as its original class, in its original dtype."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        origin = getattr(module, _ORIGIN, None)
        if origin is None:
            continue
        weight = dequantize_4bit(module.weight.data, quant_state_of(module)).to(origin["dtype"])
        parent_name, _, child = name.rpartition(".")
        cls = origin["cls"]
        if issubclass(cls, torch.nn.Embedding):
            new = cls(weight.shape[0], weight.shape[1], padding_idx=origin["padding_idx"],
                      dtype=origin["dtype"], device=weight.device)
            new.weight = torch.nn.Parameter(weight, requires_grad=False)
        elif issubclass(cls, Conv1D):
            new = cls(weight.shape[0], weight.shape[1])
            new.weight = torch.nn.Parameter(weight.t().contiguous(), requires_grad=False)
        else:
            new = cls(weight.shape[1], weight.shape[0], bias=module.bias is not None, dtype=origin["dtype"],
                      device=weight.device)
            new.weight = torch.nn.Parameter(weight, requires_grad=False)
        if getattr(module, "bias", None) is not None and hasattr(new, "bias"):
            new.bias = torch.nn.Parameter(module.bias.detach().to(origin["dtype"]).clone(), requires_grad=False)
        new.train(module.training)
        setattr(model.get_submodule(parent_name), child, new)
    return model


def tied_output(model) -> list[str]:
    """The name of an output layer whose weight is the input embedding's (a tied lm_head), if any."""
    if model is None or not hasattr(model, "get_output_embeddings"):
        return []
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or inputs is None or getattr(output, "weight", None) is not getattr(inputs, "weight", None):
        return []
    return [name for name, module in model.named_modules() if module is output][:1]


# What transformers marks on a model it loaded quantized; the merged (de-quantized) model is a
# plain full-precision model again, so it must not claim to be quantized (save_pretrained would
# write a quantization_config that makes every later load quantize it).
_QUANTIZED_MARKS = ("hf_quantizer", "is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method", "is_quantized")


def forget_quantization(model):
    """Remove transformers' quantization marks from a de-quantized model and its config."""
    for module in model.modules():
        for mark in _QUANTIZED_MARKS:
            if mark in vars(module):
                delattr(module, mark)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    return model


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes is installed, without importing it (its import takes a second)."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def fsdp_version() -> int | None:
    """The FSDP version this process trains under (1 or 2), or None when it does not shard.

    Read from accelerate's shared state, which the accelerator (made before the model is built,
    ``adaptkit.engine.runner``) fills, and which ``shard_on_cpus`` switches to FSDP on CPUs.
    """
    import sys

    if "accelerate" not in sys.modules:
        return None
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = PartialState._shared_state
    if shared.get("distributed_type") != DistributedType.FSDP:
        return None
    from accelerate.state import AcceleratorState

    plugin = AcceleratorState._shared_state.get("fsdp_plugin")
    return int(getattr(plugin, "fsdp_version", 1) or 1)


def context_has_conv1d(model) -> bool:
    """Whether the model's projections are transformers' Conv1D (GPT-2 family)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


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
        and an output layer that shares its weight with the input embeddings (a tied ``lm_head``:
        quantizing one copy would quantize, or untie, the other)."""
        return list(context.head_modules) + list(self.options.skip_modules) + tied_output(model)

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
            bnb_4bit_compute_dtype=_dtype(self.options.compute_dtype),
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
        heads = {*(config.modules_to_save or []), *_as_list(config.exclude_modules)}
        keep = sorted(heads) + list(self.options.skip_modules) + tied_output(base_model)
        quantize_model(base_model, self.options, keep)
        return PeftModel.from_pretrained(base_model, directory)


@hookimpl
def adaptkit_register_strategies(register):
    register(QLora)

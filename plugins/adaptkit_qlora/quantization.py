"""qlora's quantization: loading and storing the frozen base in 4-bit with bitsandbytes, and back.

``quantize_model`` replaces each ``nn.Linear`` (and GPT-2's ``Conv1D``) by a bitsandbytes
``Linear4bit`` and, by default, each ``nn.Embedding`` by an ``Embedding4bit``, built from the
module's own weights (or keeps what ``from_pretrained`` already loaded 4-bit); ``dequantize_model``
puts back each module's original class and dtype. bitsandbytes and torch are imported inside
functions: validating a recipe never loads them.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Iterable

from adaptkit_qlora.config import QLoraOptions

# The attribute a quantized module carries to remember what it replaced (class, dtype, extras).
_ORIGIN = "_adaptkit_qlora_origin"


def _named(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` or one of its ancestors is one of ``patterns`` (exactly or as a suffix)."""
    parts = name.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return any(p in prefixes or any(q.endswith("." + p) for q in prefixes) for p in patterns)


def as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def torch_dtype(name: str):
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
    compute = torch_dtype(options.compute_dtype)
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


def fp32_modules(model) -> list[str]:
    """Modules the architecture keeps in float32 (transformers' ``_keep_in_fp32_modules``): T5's
    feed-forward output ``wo``, whose forward casts its input to the weight's dtype (uint8 once
    quantized: "result type Float can't be cast to ... Byte"). ``from_pretrained`` with a
    BitsAndBytesConfig leaves them unquantized itself; quantizing a built model must too."""
    return list(getattr(model, "_keep_in_fp32_modules", None) or [])


def tied_output(model) -> list[str]:
    """The names of every module whose weight is tied to another module's (a tied ``lm_head`` and its
    embedding; T5's encoder and decoder ``embed_tokens`` sharing ``shared``; BLIP's text decoder and its
    prediction layer): all stay in full precision. Quantizing any one of them (an embedding, with
    ``quantize_embeddings``) gave two tensors where the base has one, and the merged model came out
    untied (``tie_word_embeddings: false``, a second vocabulary-sized matrix), against the contract."""
    if model is None:
        return []
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if name and weight is not None:
            holders.setdefault(id(weight), []).append(name)
    return list(dict.fromkeys(name for names in holders.values() if len(names) > 1 for name in names))


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
    return importlib.util.find_spec("bitsandbytes") is not None


def fsdp_version() -> int | None:
    """The FSDP version this process trains under (1 or 2), or None when it does not shard.

    Read from accelerate's shared state, which the accelerator (made before the model is built,
    ``adaptkit.engine.runner``) fills, and which ``shard_on_cpus`` switches to FSDP on CPUs.
    """
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

"""Build the task model from its source: load dtype, attention, device map, a strategy's own loading
(4-bit), random initialisation, gradient checkpointing, and the tolerances merged weights get.

Where the files come from (plugins, local folders, the Hub cache, the Hub) is
``adaptkit.plugin.sources``; its names are re-exported here for the engine's callers.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Optional

from adaptkit.engine.device import runs_on_cpu, training_device
from adaptkit.errors import ModelSourceError, RecipeError
from adaptkit.plugin.sources import (HUB_HOST, ModelSource, check_weight_files, load_config,  # noqa: F401
                                     load_tokenizer, quiet_hf_logging, resolve_model_source)



















DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_dtype(recipe, config=None):
    """The torch dtype ``model.dtype`` asks for; "auto" is the checkpoint's own (config.dtype), else fp32."""
    import torch

    name = recipe.model.dtype
    if name == "auto":
        found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(found, torch.dtype):
            return found
        return getattr(torch, str(found).replace("torch.", "")) if isinstance(found, str) else torch.float32
    return getattr(torch, DTYPES[name])


def check_device_map(recipe, num_processes: int = 1) -> None:
    """Refuse ``model.device_map`` with several processes or a ``distributed`` section: each process
    would place the whole model over the same devices, and DDP/FSDP expect one whole model copy (or
    shard) per process. The one place this rule lives; ``plan`` (one process, the recipe's section)
    and every run (``build_model``, with the processes launched) ask it."""
    from adaptkit.engine.distributed import distributed_setting

    if recipe.model.device_map is None:
        return
    where = recipe.where('model', 'device_map')
    if num_processes > 1:
        raise RecipeError(f"{where}: device_map spreads one model over the devices of "
                          f"a single process, and this run has {num_processes} processes; remove model.device_map "
                          f"(use distributed: fsdp to shard a large model across processes), or launch one process")
    distributed = distributed_setting(recipe, num_processes)
    if distributed is not None:
        raise RecipeError(f"{where}: device_map spreads one model over the devices of a "
                          f"single process and cannot be combined with the distributed section ({distributed}); "
                          f"remove one of them (distributed: fsdp shards a large model across processes)")


@contextmanager
def default_dtype(dtype):
    """Build a config model directly in ``dtype`` (from_config's own dtype argument does this)."""
    import torch

    previous = torch.get_default_dtype()
    if dtype is not None and dtype.is_floating_point:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(recipe, task, tokenizer, source: ModelSource | None, seed: int, strategy=None):
    """The task model: pretrained weights, or the same architecture freshly initialised.

    The seed is set right before construction, so a random initialisation (and a new task
    head) is the same every time: exports can be re-loaded onto an identical base. The
    recipe's ``model.dtype``, ``attn_implementation`` and ``device_map`` apply here. A
    ``strategy`` may ask for more ``from_pretrained`` arguments through
    ``load_kwargs(head_modules, dtype)`` (qlora: a 4-bit ``BitsAndBytesConfig``, so the base is
    quantized as it loads and no full-precision copy is ever held).
    """
    from transformers import set_seed

    from adaptkit.engine.distributed import world_size
    from adaptkit.plugin.strategy import Strategy

    section = recipe.model
    check_device_map(recipe, world_size())
    config = load_config(recipe, source)
    pad_token_id = getattr(tokenizer, "pad_token_id", None)  # an image processor has none
    if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id
    if section.attn_implementation is not None:
        config._attn_implementation = section.attn_implementation
    dtype = load_dtype(recipe, config)
    from_config = section.config is not None or section.init == "random"
    set_seed(seed)
    kwargs: dict = {"trust_remote_code": section.trust_remote_code}
    reference = None
    if not from_config:
        kwargs.update(revision=section.revision, local_files_only=source.local_files_only,
                      use_safetensors=None if section.allow_pickle else True, dtype=dtype)
        if section.attn_implementation is not None:
            kwargs["attn_implementation"] = section.attn_implementation
        if section.device_map is not None:
            kwargs["device_map"] = section.device_map
        if strategy is not None and type(strategy).load_kwargs is not Strategy.load_kwargs:
            with default_dtype(dtype):
                meta = _meta_model(task, config, section.trust_remote_code)
            extra = strategy.load_kwargs(list(task.head_modules(meta)), dtype, meta)
            if extra:
                reference = meta
                if "device_map" not in kwargs:  # a quantized model is placed as it loads, on the training device
                    kwargs["device_map"] = {"": _training_device(recipe)}
                kwargs.update(extra)
    try:
        with default_dtype(dtype if from_config else None):
            model = task.build_model(source.location if source else "", config, from_config, **kwargs)
    except OSError as exc:
        raise ModelSourceError(f"cannot load model {section.name!r}: {str(exc).splitlines()[0]}") from None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    resizable = hasattr(tokenizer, "__len__") and hasattr(embeddings, "num_embeddings")  # not an image model
    if from_config and section.name is None and resizable:
        if embeddings.num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    if reference is not None:  # plain dict entry: an nn.Module attribute would become a submodule
        model.__dict__["_adaptkit_full_precision"] = reference
    return model


def full_precision_reference(model):
    """The architecture the contract holds an export to: for a base loaded quantized (qlora's
    4-bit ``from_pretrained``), the weightless full-precision model of the same config that
    ``build_model`` kept; otherwise the model itself."""
    return model.__dict__.get("_adaptkit_full_precision", model)


def _training_device(recipe):
    """Where this process trains, as ``device_map`` spells it: a GPU index, or "cpu"."""
    device = training_device(recipe.training)
    return device.index if device.type == "cuda" else "cpu"


def _meta_model(task, config, trust_remote_code: bool = False):
    """A weightless (meta) copy of the task model: head names, tied layers, the full-precision signature."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        meta = task.build_model("", copy.deepcopy(config), True, trust_remote_code=trust_remote_code)
    return meta.eval()  # from_pretrained returns a model in eval mode


def gradient_checkpointing_problem(model) -> Optional[str]:
    """Why the wrapped ``model`` cannot recompute activations, or None. ``adaptkit plan`` asks it of
    the wrapped meta model, so what stops ``run`` (frozen_head's cached-feature model) stops plan."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        return (f"this {type(inner).__name__} does not support gradient checkpointing in transformers; "
                f"set training.gradient_checkpointing: false")
    return None


def half_training_on_cpu_problem(model, recipe) -> Optional[str]:
    """Why training the wrapped ``model`` would diverge: float16 trainable weights on a CPU, or None.

    The CPU has no float16 arithmetic of its own and no loss scaling is applied, so the updates of
    float16 weights under- and overflow: ``model.dtype: fp16`` diverged at step 3 whatever the
    learning rate, and the error blamed the rate. bfloat16 keeps float32's range and trains.
    """
    import torch

    if not runs_on_cpu(recipe.training):
        return None
    if any(p.requires_grad and p.dtype == torch.float16 for p in model.parameters()):
        return ("float16 weights are trained on a CPU, which diverges whatever the learning rate (no float16 "
                "arithmetic or loss scaling there); use model.dtype: bf16 or fp32 on a CPU, or train on a GPU")
    return None


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in backward (``training.gradient_checkpointing``), PEFT included.

    Non-reentrant checkpointing (``use_reentrant=False``) computes gradients for adapter weights
    inside a block even when the block's input needs none; input gradients are enabled as well
    (what peft's ``prepare_model_for_kbit_training`` does) for frozen-embedding models, so a
    reentrant setting elsewhere cannot silently drop the adapters' gradients. The KV cache is
    off: it is useless in training and transformers refuses it with checkpointing.
    """
    problem = gradient_checkpointing_problem(model)
    if problem:
        raise RecipeError(f"training.gradient_checkpointing: {problem}")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    embeddings = inner.get_input_embeddings() if hasattr(inner, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is not None and not weight.requires_grad and hasattr(inner, "enable_input_require_grads"):
        inner.enable_input_require_grads()
    if hasattr(getattr(inner, "config", None), "use_cache"):
        inner.config.use_cache = False


# Merge tolerance floor by the base's storage dtype. Merging a LoRA delta into bf16 weights rounds
# each merged weight to 8 significant bits (fp16: 11), so the merged model cannot match the
# trained one more closely than that: measured 1.2e-4 on the tiny test BERT in bf16; the floors
# leave room for larger logits on real models.
HALF_MERGE_TOLERANCE = {"torch.bfloat16": 2e-2, "torch.float16": 3e-3}


def merge_tolerance(strategy, model) -> float:
    """The strategy's merge tolerance, raised to the rounding floor of a bf16/fp16 base (``model.dtype``)."""
    tolerance = float(strategy.merge_tolerance)
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    for dtype in frozen:
        tolerance = max(tolerance, HALF_MERGE_TOLERANCE.get(dtype, 0.0))
    return tolerance

"""Resolve a recipe's model name to something loadable, and refuse what is unsafe.

Order: a plugin's ``adaptkit_resolve_model`` answer (e.g. a model a package ships), then a
local folder, then a Hugging Face Hub id. A Hub id that is neither cached nor reachable fails
at once with a message saying so, instead of retrying for half a minute inside the Hub client.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adaptkit.errors import ModelSourceError

HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``location`` is a folder or a Hub id; ``origin`` says how."""

    name: str
    location: str
    origin: str  # "plugin", "local", "hub-cache", "hub"
    local_files_only: bool


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_on_hub(name: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
    found = try_to_load_from_cache(name, "config.json", revision=revision)
    return isinstance(found, str)


def check_weight_files(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle-only checkpoints unless the recipe allows them: pickle can run code."""
    has_safetensors = any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json"))
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    if not has_safetensors and pickled and not allow_pickle:
        raise ModelSourceError(
            f"model folder {folder} holds only pickle weights ({', '.join(sorted(pickled))}); loading "
            f"them can run arbitrary code. Convert them to safetensors, or set 'model.allow_pickle: "
            f"true' in the recipe if you trust their source"
        )


def resolve_model_source(name: str, revision: str | None = None, allow_pickle: bool = False) -> ModelSource:
    """Find ``name``: plugin answer, local folder, Hub cache, then the Hub itself."""
    from adaptkit.plugin.registry import get_registry

    answer = get_registry().manager.hook.adaptkit_resolve_model(name=name)
    if answer:
        folder = Path(answer)
        check_weight_files(folder, allow_pickle)
        return ModelSource(name, str(folder), "plugin", True)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model folder {path} has no config.json: it is not a transformers model folder")
        check_weight_files(path, allow_pickle)
        return ModelSource(name, str(path.resolve()), "local", True)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelSourceError(f"model folder {name!r} does not exist")
    if _cached_on_hub(name, revision):
        return ModelSource(name, name, "hub-cache", True)
    if not _hub_reachable():
        raise ModelSourceError(
            f"model {name!r} is not a local folder, not in the Hugging Face cache, and the Hub "
            f"({HUB_HOST}) cannot be reached from this machine. Download it where there is a "
            f"network (`huggingface-cli download {name} --local-dir DIR`) and set model.name to DIR"
        )
    return ModelSource(name, name, "hub", False)


def quiet_hf_logging() -> None:
    """Silence library chatter that says nothing actionable (weights newly initialised for a head)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*newly initialized.*")


def load_tokenizer(recipe, source: ModelSource | None):
    """The recipe's tokenizer, with a padding token guaranteed (decoders often lack one)."""
    from transformers import AutoTokenizer

    section = recipe.model
    if section.tokenizer is not None and Path(section.tokenizer).expanduser().is_dir():
        # A tokenizer folder (a run's tokenizer/) has no config.json, so it is not a model source.
        folder = Path(section.tokenizer).expanduser().resolve()
        tok_source = ModelSource(section.tokenizer, str(folder), "local", True)
    elif section.tokenizer is not None:
        tok_source = resolve_model_source(section.tokenizer, section.revision, section.allow_pickle)
    else:
        tok_source = source
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tok_source.location, revision=section.revision, local_files_only=tok_source.local_files_only,
            trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load a tokenizer from {tok_source.name!r}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_config(recipe, source: ModelSource | None):
    from transformers import AutoConfig

    section = recipe.model
    if section.config is not None:
        settings = dict(section.config)
        model_type = settings.pop("model_type")
        try:
            return AutoConfig.for_model(model_type, **settings)
        except (ValueError, KeyError) as exc:
            raise ModelSourceError(f"model.config: {exc}") from None
    try:
        return AutoConfig.from_pretrained(source.location, revision=section.revision,
                                          local_files_only=source.local_files_only,
                                          trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the config of {source.name!r}: {str(exc).splitlines()[0]}") from None


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


def check_device_map(recipe, num_processes: int) -> None:
    """Refuse ``model.device_map`` with several processes: each would place the whole model over
    the same devices, and DDP/FSDP expect one whole model copy (or shard) per process."""
    from adaptkit.errors import RecipeError

    if recipe.model.device_map is not None and num_processes > 1:
        raise RecipeError(f"{recipe.where('model', 'device_map')}: device_map spreads one model over the devices of "
                          f"a single process, and this run has {num_processes} processes; remove model.device_map "
                          f"(use distributed: fsdp to shard a large model across processes), or launch one process")


@contextmanager
def _default_dtype(dtype):
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
            with _default_dtype(dtype):
                meta = _meta_model(task, config, section.trust_remote_code)
            extra = strategy.load_kwargs(list(task.head_modules(meta)), dtype, meta)
            if extra:
                reference = meta
                if "device_map" not in kwargs:  # a quantized model is placed as it loads, on the training device
                    kwargs["device_map"] = {"": _training_device(recipe)}
                kwargs.update(extra)
    try:
        with _default_dtype(dtype if from_config else None):
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
    """Where this process trains: its GPU (LOCAL_RANK) when there is one and the recipe allows, else the CPU."""
    import torch

    if recipe.training.device != "cpu" and torch.cuda.is_available():
        return int(os.environ.get("LOCAL_RANK", "0") or 0)
    return "cpu"


def _meta_model(task, config, trust_remote_code: bool = False):
    """A weightless (meta) copy of the task model: head names, tied layers, the full-precision signature."""
    import copy

    from accelerate import init_empty_weights

    with init_empty_weights():
        meta = task.build_model("", copy.deepcopy(config), True, trust_remote_code=trust_remote_code)
    return meta.eval()  # from_pretrained returns a model in eval mode


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in backward (``training.gradient_checkpointing``), PEFT included.

    Non-reentrant checkpointing (``use_reentrant=False``) computes gradients for adapter weights
    inside a block even when the block's input needs none; input gradients are enabled as well
    (what peft's ``prepare_model_for_kbit_training`` does) for frozen-embedding models, so a
    reentrant setting elsewhere cannot silently drop the adapters' gradients. The KV cache is
    off: it is useless in training and transformers refuses it with checkpointing.
    """
    from adaptkit.errors import RecipeError

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise RecipeError(f"training.gradient_checkpointing: this {type(inner).__name__} does not support gradient "
                          f"checkpointing in transformers; set training.gradient_checkpointing: false")
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

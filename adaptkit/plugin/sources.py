"""Where a model's files come from, and what reads them without building the model.

Order: a plugin's ``adaptkit_resolve_model`` answer (e.g. a model a package ships), then a
local folder, then a Hugging Face Hub id. A Hub id that is neither cached nor reachable fails
at once with a message saying so, instead of retrying for half a minute inside the Hub client.
Tasks load their tokenizer from a source (``Task.load_processor``), so this sits in the plugin
layer; the engine builds models from it.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from adaptkit.errors import ModelSourceError

# huggingface_hub, transformers and datasets are imported inside the functions: the registry and
# `adaptkit validate` import this module, and must not load them (transformers brings torch).

HUB_HOST = "huggingface.co"  # the default endpoint's host; where adaptkit connects is hub_endpoint()
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of a boolean variable


def hub_offline() -> bool:
    """Whether the Hub is to be left alone: ``HF_HUB_OFFLINE`` set true, read as huggingface_hub
    reads it (1/on/yes/true, any case), at the time of asking. The one place adaptkit decides it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def hub_endpoint() -> str:
    """The Hub's base URL, as the Hub client uses it: ``HF_ENDPOINT`` (a mirror, a private Hub), else
    https://huggingface.co."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}").rstrip("/")
    return str(constants.ENDPOINT).rstrip("/")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hub endpoint answers a TCP connect within ``timeout`` seconds, else why not
    (offline mode, DNS, refusal): one short probe instead of the Hub client's half minute of retries.
    Every question "can adaptkit reach the Hub?" is asked here (models, datasets, push, plugins)."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    url = urlparse(hub_endpoint())
    host, port = url.hostname or HUB_HOST, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``location`` is a folder or a Hub id; ``origin`` says how."""

    name: str
    location: str
    origin: str  # "plugin", "local", "hub-cache", "hub"
    local_files_only: bool


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


def _no_plugin_answer(name: str) -> str | None:
    return None


#: The installed plugins' folder for model ``name`` (the ``adaptkit_resolve_model`` hook), or None.
#: adaptkit.plugin.registry, which builds on this module, sets it when it is imported (and
#: ``import adaptkit`` imports it), so sources never imports the registry back.
plugin_model_folder: Callable[[str], "str | None"] = _no_plugin_answer


def resolve_model_source(name: str, revision: str | None = None, allow_pickle: bool = False) -> ModelSource:
    """Find ``name``: plugin answer, local folder, Hub cache, then the Hub itself."""
    answer = plugin_model_folder(name)
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
    if hub_unreachable() is not None:
        raise ModelSourceError(
            f"model {name!r} is not a local folder, not in the Hugging Face cache, and the Hub "
            f"({urlparse(hub_endpoint()).hostname or HUB_HOST}) cannot be reached from this machine. Download it where there is a "
            f"network (`huggingface-cli download {name} --local-dir DIR`) and set model.name to DIR"
        )
    return ModelSource(name, name, "hub", False)


def quiet_hf_logging() -> None:
    """Silence library chatter that says nothing actionable (weights newly initialised for a head)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # kernels (bitsandbytes' kernel hub) warns on every offline load that it skips a publisher check
    # adaptkit never asked for: every `adaptkit plan` printed it
    logging.getLogger("kernels").setLevel(logging.ERROR)
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

"""How a sequence head pools token states into one vector: declared, installed, undone.

Sentence-embedding checkpoints are trained to be read a particular way (all-MiniLM-L6-v2: the
mean of the last hidden states over real tokens, declared in sentence-transformers'
``modules.json`` and ``1_Pooling/config.json`` beside the weights), while transformers'
``*ForSequenceClassification`` heads read what the architecture reads (BERT: its pooler, a dense
layer and tanh on [CLS] that such checkpoints leave nearly untrained). A head on the wrong vector
starts from poor features; a frozen one never recovers.

``apply_pooling(model, mode)`` makes the head read ``mode`` instead, without changing a single
module or parameter (the architecture, and so the contract's signature, stays the base's):

- models whose backbone returns a ``pooler_output`` (BERT and its kin) get it replaced by the
  pooled vector, so the model's own dropout and classifier follow unchanged;
- models whose head reads the token states (RoBERTa's head reads position 0, a decoder's score
  reads the last real token) get every position replaced by the pooled vector, so whichever
  position the head reads, it reads the pooled one.

A head that reads a vector the model computed itself (DistilBERT's pre-classifier) cannot be
fed another one this way: the first forward pass says so.

The hooks are not saved by ``save_pretrained``: a plain ``from_pretrained`` of the export reads
the architecture's head again. ``apply_pooling`` on the loaded model restores what was trained
(``adaptkit predict`` does it from the run's recorded pooling); the model card says so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

# torch and transformers are imported inside the functions: adaptkit exports these names, and
# listing plugins or validating a recipe must not load torch.

POOLINGS = ("auto", "cls", "mean", "last", "pooler")
NATIVE = "pooler"  # the architecture's own head, unchanged
_ATTRIBUTE = "_adaptkit_pooling"  # the installed hooks, in the model's __dict__ (never a submodule)

# sentence-transformers' Pooling config keys -> the pooling here; others (max, mean_sqrt_len,
# weightedmean) have no counterpart and fall back to the architecture's head.
_SENTENCE_TRANSFORMERS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                          "pooling_mode_lasttoken": "last"}


def _read_json(location: str, filename: str, revision: Optional[str], local_files_only: bool) -> Optional[Any]:
    folder = Path(location)
    if folder.is_dir():
        path = folder / filename
    else:  # a Hub id: the cache (or the Hub when reachable), never an error for a missing file
        try:
            from transformers.utils import cached_file

            found = cached_file(location, filename, revision=revision, local_files_only=local_files_only,
                                _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False,
                                _raise_exceptions_for_gated_repo=False)
        except Exception:  # noqa: BLE001 - an unreadable declaration is no declaration
            return None
        if not found:
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def declared_pooling(location: Optional[str], revision: Optional[str] = None,
                     local_files_only: bool = True) -> tuple[Optional[str], str]:
    """The pooling a checkpoint declares beside its weights, and where that was read.

    sentence-transformers' ``modules.json`` names its Pooling module's folder (``1_Pooling``); that
    folder's ``config.json`` says which tokens are pooled. Returns ``(None, reason)`` when the
    checkpoint declares nothing this module can reproduce.
    """
    if not location:
        return None, "no checkpoint folder to read a declared pooling from"
    modules = _read_json(str(location), "modules.json", revision, local_files_only)
    folder = None
    if isinstance(modules, list):
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                folder = str(module.get("path") or "").strip("/")
                break
    if folder is None:
        return None, "the checkpoint declares no pooling (no sentence-transformers modules.json with a Pooling module)"
    config = _read_json(str(location), f"{folder}/config.json" if folder else "config.json", revision,
                        local_files_only)
    if not isinstance(config, dict):
        return None, f"modules.json names {folder}/ but its config.json is unreadable"
    chosen = [mode for key, mode in _SENTENCE_TRANSFORMERS.items() if config.get(key)]
    others = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _SENTENCE_TRANSFORMERS)
    if len(chosen) == 1 and not others:
        return chosen[0], f"{folder}/config.json (sentence-transformers) declares {chosen[0]} pooling"
    return None, (f"{folder}/config.json declares {', '.join(others + chosen) or 'no'} pooling, which adaptkit "
                  f"cannot reproduce as one head input")


def declare_pooling(folder: Path, mode: str, width: Optional[int] = None) -> None:
    """Write beside the weights in ``folder`` the sentence-transformers files ``declared_pooling`` reads
    (``modules.json``, ``1_Pooling/config.json``) for ``mode`` (cls, mean, last); ``pooler`` declares nothing.

    A model folder adaptkit writes from a trained model (a finished run merged to become the base of a
    new recipe) keeps the pooling that model was trained with: ``task.pooling: auto`` reads it back.
    """
    keys = {value: key for key, value in _SENTENCE_TRANSFORMERS.items()}
    if mode == NATIVE:
        return
    if mode not in keys:
        raise ValueError(f"declare_pooling: {mode!r} has no sentence-transformers declaration ({', '.join(keys)})")
    folder = Path(folder)
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    config: dict[str, Any] = {key: key == keys[mode] for key in _SENTENCE_TRANSFORMERS}
    if width is not None:
        config = {"word_embedding_dimension": int(width), **config}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def pool_hidden(hidden: Any, attention_mask: Optional[Any], mode: str) -> Any:
    """One vector per row from token states ``[rows, tokens, width]``; padding (mask 0) is ignored.

    ``mean``: the mean over real tokens; ``cls``: the first token; ``last``: the last real token
    (right or left padding alike).
    """
    import torch

    rows, length = hidden.shape[0], hidden.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones(rows, length, dtype=torch.long, device=hidden.device)
    if attention_mask.ndim != 2 or attention_mask.shape[1] != length:
        raise ValueError(f"pooling {mode!r} needs a [rows, tokens] attention mask matching the token states "
                         f"({tuple(hidden.shape[:2])}); got {tuple(attention_mask.shape)}")
    mask = attention_mask.to(hidden.device) > 0
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        positions = torch.arange(length, device=hidden.device)
        last = (positions * mask.long()).argmax(-1)
        return hidden[torch.arange(rows, device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r} (choose from {', '.join(POOLINGS)})")


class _Hooks:
    """The installed pooling: a forward hook on the backbone and a pre-hook on the head."""

    def __init__(self, mode: str, backbone: Any, head: Any):
        self.mode = mode
        self.pending = None  # the pooled vector waiting for the head (models without a pooler_output)
        # closures, not bound methods: a deep copy of the head (peft's modules_to_save) keeps calling
        # this object, which holds the vector the backbone pooled
        after = lambda module, args, kwargs, output: self.after_backbone(module, args, kwargs, output)  # noqa: E731
        before = lambda module, args: self.before_head(module, args)  # noqa: E731
        after._adaptkit_pooling = before._adaptkit_pooling = True  # found again on a deep copy of the model
        backbone.register_forward_hook(after, with_kwargs=True)
        if head is not None:
            head.register_forward_pre_hook(before)

    def after_backbone(self, module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", None)
        if hidden is None:
            hidden = output[0]
        pooled = pool_hidden(hidden, kwargs.get("attention_mask"), self.mode)
        native = getattr(output, "pooler_output", None)
        if native is not None:
            # ``+ 0 * native`` keeps the unused pooler in the graph (zero gradient), so DDP finds no unused
            # parameter; the value is the pooled vector exactly (the pooler ends in a bounded tanh).
            output.pooler_output = pooled.to(native.dtype) + 0 * native
            self.pending = None
        else:
            self.pending = pooled
        return output

    def before_head(self, module, args):
        pooled, self.pending = self.pending, None
        if pooled is None or not args:
            return None
        tokens = args[0]
        if getattr(tokens, "ndim", 0) != 3:
            raise ValueError(f"pooling {self.mode!r} cannot be applied to this model: its head reads a vector its "
                             f"own layers computed ({type(module).__name__} input of shape "
                             f"{tuple(getattr(tokens, 'shape', ()))}); set task.pooling: pooler")
        return (pooled.to(tokens.dtype)[:, None, :].expand(tokens.shape[0], tokens.shape[1], -1), *args[1:])

    @staticmethod
    def remove_from(model: Any) -> None:
        """Take this module's hooks off every submodule of ``model`` (a deep copy's included: its hooks
        are the same tagged functions, while handles would point at the original's)."""
        for module in model.modules():
            for hooks in (module._forward_hooks, module._forward_pre_hooks):
                for key in [k for k, fn in hooks.items() if getattr(fn, "_adaptkit_pooling", False)]:
                    del hooks[key]
                    getattr(module, "_forward_hooks_with_kwargs", {}).pop(key, None)


def _transformers_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def apply_pooling(model: Any, mode: str, head: Optional[str] = None) -> Any:
    """Make ``model``'s sequence head read ``mode`` pooling (``pooler``: the architecture's own head).

    ``head`` names the head module (default: the first of ``classifier``/``score``/
    ``classification_head`` found at the top). Idempotent; a peft-wrapped model is handled through
    its base. Returns the model.
    """
    if mode not in POOLINGS or mode == "auto":
        raise ValueError(f"apply_pooling needs a resolved pooling ({', '.join(p for p in POOLINGS if p != 'auto')}); "
                         f"got {mode!r}")
    inner = _transformers_model(model)
    installed = inner.__dict__.get(_ATTRIBUTE)
    if installed is not None:
        if installed.mode == mode:
            return model
        _Hooks.remove_from(inner)
        inner.__dict__.pop(_ATTRIBUTE, None)
    if mode == NATIVE:
        return model
    backbone = getattr(inner, "base_model", None)
    if backbone is None or backbone is inner:
        raise ValueError(f"pooling {mode!r}: {type(inner).__name__} has no separate backbone to pool")
    head_module = None
    names = [head] if head else ["classifier", "score", "classification_head", "logits_proj"]
    for name in names:
        if name and hasattr(inner, name):
            head_module = inner.get_submodule(name)
            break
    inner.__dict__[_ATTRIBUTE] = _Hooks(mode, backbone, head_module)
    return model


def model_pooling(model: Any) -> str:
    """The pooling installed on ``model`` by ``apply_pooling``; ``pooler`` when none is."""
    installed = _transformers_model(model).__dict__.get(_ATTRIBUTE)
    return installed.mode if installed is not None else NATIVE

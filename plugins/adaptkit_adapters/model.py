"""The adapter modules, the hooking wrapper, and the export format.

Export folder (``save_adapters``): ``adapters.safetensors`` (the adapter weights, keyed by
``<site with dots as __>.down.weight`` ...), ``head.safetensors`` (the trained task head,
under its names in the base model) and ``adapter_config.json`` (where each adapter sits,
its sizes and activation), enough for ``load_adapters`` to rebuild them on a fresh base.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from adaptkit_adapters import ADAPTER_FILE, CONFIG_FILE, DEFAULT_SITES, HEAD_FILE

FORMAT_VERSION = 1
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _width(module: nn.Module) -> int:
    """Output width of a projection: ``nn.Linear.out_features`` or GPT-2 ``Conv1D.nf``."""
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    if not width:
        raise ValueError(f"cannot tell the output width of {type(module).__name__}")
    return int(width)


def _guess_sites(block: nn.Module) -> tuple[Optional[str], Optional[str]]:
    """The last projection inside the attention sub-module, and the last one outside it."""
    attention = next((name for name, _ in block.named_modules()
                      if name and any(k in name.rsplit(".", 1)[-1].lower() for k in ("attn", "attention"))), None)
    projections = [name for name, module in block.named_modules() if _is_projection(module)]
    inside = [n for n in projections if attention and n.startswith(attention + ".")]
    outside = [n for n in projections if not (attention and n.startswith(attention + "."))
               and "cross" not in n.lower()]
    return (inside[-1] if inside else None), (outside[-1] if outside else None)


def _has_module(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


def find_sites(model: nn.Module, model_type: str, config: str, attention_output: Optional[str] = None,
               ffn_output: Optional[str] = None) -> dict[str, int]:
    """Qualified module names to hook, with their output widths, for every block of ``model``."""
    from adaptkit import find_block_list

    path, count = find_block_list(model)
    blocks = model.get_submodule(path)
    known = DEFAULT_SITES.get(model_type, (None, None))
    guessed = _guess_sites(blocks[0])

    def pick(explicit: Optional[str], default: Optional[str], guess: Optional[str]) -> Optional[str]:
        # The recipe's name is used as given (a wrong one is an error below). The family table
        # is tried next, but module names move between transformers versions (ViT's
        # attention.output.dense became attention.o_proj in 5.x), so the structural guess
        # takes over when the table's name is not in this model.
        if explicit:
            return explicit
        if default and _has_module(blocks[0], default):
            return default
        return guess

    attention = pick(attention_output, known[0], guessed[0])
    ffn = pick(ffn_output, known[1], guessed[1])
    wanted = [("ffn_output", ffn)] if config == "pfeiffer" else [("attention_output", attention), ("ffn_output", ffn)]
    sites: dict[str, int] = {}
    for index in range(count):
        for option, relative in wanted:
            if not relative:
                raise ValueError(f"adapters: found no {option.replace('_', ' ')} projection in the blocks of "
                                 f"{type(model).__name__}; name it with the {option!r} option")
            qualified = f"{path}.{index}.{relative}"
            try:
                module = model.get_submodule(qualified)
            except AttributeError:
                raise ValueError(f"adapters: {option} {relative!r} is not a module of block {index} "
                                 f"({path}.{index}) of {type(model).__name__}") from None
            sites[qualified] = _width(module)
    return sites


class Bottleneck(nn.Module):
    """``x + up(act(down(x)))``; ``up`` starts at zero, so a new adapter is exactly the identity."""

    def __init__(self, width: int, reduction_factor: int, non_linearity: str):
        super().__init__()
        hidden = max(1, width // reduction_factor)
        self.down = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(hidden, width)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x.to(self.down.weight.dtype)))).to(x.dtype)


def site_key(site: str) -> str:
    """A ``ModuleDict`` key for a module path (keys may not contain dots)."""
    return site.replace(".", "__")


class AdapterModel(nn.Module):
    """The base model plus adapters held beside it, applied through forward hooks.

    The base's own module tree is never touched: ``base`` is a child here, not a parent of
    the adapters, so ``remove()`` (drop the hooks) leaves exactly the original model.
    """

    def __init__(self, base: nn.Module, sites: dict[str, int], reduction_factor: int, non_linearity: str,
                 config: str, head_modules: list[str]):
        super().__init__()
        self.base = base
        self.settings = {"config": config, "reduction_factor": reduction_factor,
                         "non_linearity": non_linearity, "head_modules": list(head_modules)}
        self.sites = dict(sites)
        reference = next(base.parameters())
        self.adapters = nn.ModuleDict({
            site_key(site): Bottleneck(width, reduction_factor, non_linearity).to(reference.device)
            for site, width in sites.items()})
        self._handles = [base.get_submodule(site).register_forward_hook(self._hook(site_key(site)))
                         for site in sites]

    def _hook(self, key: str):
        def apply(module: nn.Module, args: Any, output: Any) -> Any:
            adapter = self.adapters[key]
            if isinstance(output, tuple):  # modules that return (hidden, extras...)
                return (adapter(output[0]), *output[1:])
            return adapter(output)
        return apply

    @property
    def config(self) -> Any:
        return self.base.config

    def get_base_model(self) -> nn.Module:
        """The transformers model the adapters hook into, under peft's name for it: what reaches through
        a wrapper (a task's pooling on a reloaded export, gradient checkpointing, a head's features)
        finds it the same way for peft's models and these. Without it, reloading a run whose head reads
        mean pooling (MiniLM's declared default) failed: "AdapterModel has no separate backbone"."""
        return self.base

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base(*args, **kwargs)

    def remove(self) -> nn.Module:
        """Remove every hook and return the base model, now computing exactly what it did before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.base


def save_adapters(model: AdapterModel, directory: Path) -> Path:
    """Write adapters, head and config as safetensors + JSON into ``directory``."""
    from safetensors.torch import save_file

    if not isinstance(model, AdapterModel):
        raise TypeError(f"adapters: expected the wrapped model from wrap(), got {type(model).__name__}")
    directory.mkdir(parents=True, exist_ok=True)
    adapters = {k: v.detach().cpu().contiguous() for k, v in model.adapters.state_dict().items()}
    save_file(adapters, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
    heads = model.settings["head_modules"]
    head_state = {k: v.detach().cpu().contiguous() for k, v in model.base.state_dict().items()
                  if any(k.startswith(h + ".") for h in heads)}
    if head_state:
        save_file(head_state, str(directory / HEAD_FILE), metadata={"format": "pt"})
    config = {"adaptkit_strategy": "adapters", "format_version": FORMAT_VERSION, **model.settings,
              "base_model_class": type(model.base).__name__,
              "sites": [{"module": site, "width": width} for site, width in model.sites.items()]}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_adapters(base: nn.Module, directory: Path) -> AdapterModel:
    """Reattach saved adapters (and the saved head) onto a freshly loaded base model."""
    from safetensors.torch import load_file

    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_FILE}: unsupported adapters format {config.get('format_version')!r}")
    if (directory / HEAD_FILE).exists():
        head_state = load_file(str(directory / HEAD_FILE))
        result = base.load_state_dict(head_state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{directory / HEAD_FILE}: head weights {result.unexpected_keys[:3]} do not belong "
                             f"to {type(base).__name__}")
    sites = {entry["module"]: int(entry["width"]) for entry in config["sites"]}
    model = AdapterModel(base, sites, config["reduction_factor"], config["non_linearity"], config["config"],
                         config["head_modules"])
    model.adapters.load_state_dict(load_file(str(directory / ADAPTER_FILE)), strict=True)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()

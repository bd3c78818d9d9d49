"""``adapters``: bottleneck adapters (Houlsby 2019, Pfeiffer 2020) attached by forward hooks.

An adapter is a small residual bottleneck, ``x + up(act(down(x)))``, applied to the output
of a block's attention projection and/or feed-forward output projection, before the block's
own residual add and normalisation. Houlsby places one after each; Pfeiffer only after the
feed-forward, at half the parameters and about the same accuracy.

No base module is replaced or changed: the adapters live in a wrapper module beside the
base (``AdapterModel``) and reach into it through ``register_forward_hook``. ``unwrap``
removes the hooks and returns the base itself, which then computes exactly what it did
before. Adapters are not mergeable (the non-linearity cannot be folded into a weight), so
the export is the adapter weights (safetensors), a small JSON config and the task head.

Torch is imported inside functions only, so listing plugins and validating recipes stay fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, PositiveInt

from adaptkit import Strategy, StrategyOptions, families, hookimpl

if TYPE_CHECKING:
    import torch

# Within one block: (attention output projection, feed-forward output projection), per family:
# the table is adaptkit.families.BLOCK_OUTPUTS. Families absent there are found by the heuristic
# in ``adaptkit_adapters.model.find_sites``.
DEFAULT_SITES: dict[str, tuple[str, str]] = families.BLOCK_OUTPUTS

CONFIG_FILE = "adapter_config.json"
ADAPTER_FILE = "adapters.safetensors"
HEAD_FILE = "head.safetensors"


class AdaptersOptions(StrategyOptions):
    config: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="houlsby: an adapter after attention and after the feed-forward of every block; "
                                "pfeiffer: after the feed-forward only (half the parameters).")
    reduction_factor: PositiveInt = Field(
        16, description="Hidden size divided by the bottleneck size: 16 on a 384-wide model gives 24 units.")
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = Field(
        "relu", description="Activation between the down- and up-projection.")
    train_head: bool = Field(True, description="Train the task head alongside the adapters.")
    attention_output: Optional[str] = Field(
        None, description="Module name, relative to a block, of the attention output projection "
                          "(e.g. 'attention.output.dense'); per-family default or found when absent.")
    ffn_output: Optional[str] = Field(
        None, description="Module name, relative to a block, of the feed-forward output projection "
                          "(e.g. 'output.dense'); per-family default or found when absent.")


class BottleneckAdapters(Strategy):
    """Houlsby / Pfeiffer bottleneck adapters, hooked onto the frozen base; removed exactly."""

    name = "adapters"
    Options = AdaptersOptions
    mergeable = False
    export_kind = "adapter"
    export_loader = "adaptkit_adapters.model.load_adapters (peft has no bottleneck adapters)"
    default_learning_rate = 1e-3
    head_options = ("train_head",)

    def wrap(self, model: "torch.nn.Module", context: Any) -> "torch.nn.Module":
        from adaptkit_adapters.model import AdapterModel, find_sites

        opts = self.options
        sites = find_sites(model, context.model_type, opts.config, opts.attention_output, opts.ffn_output)
        heads = list(context.head_modules) if opts.train_head else []
        for name, param in model.named_parameters():
            param.requires_grad_(any(name == h or name.startswith(h + ".") for h in heads))
        return AdapterModel(model, sites, opts.reduction_factor, opts.non_linearity, opts.config, heads)

    def unwrap(self, model: "torch.nn.Module") -> "torch.nn.Module":
        from adaptkit_adapters.model import AdapterModel

        return model.remove() if isinstance(model, AdapterModel) else model

    def save(self, model: "torch.nn.Module", directory: Path) -> Path:
        from adaptkit_adapters.model import save_adapters

        return save_adapters(model, Path(directory))

    def load(self, base_model: "torch.nn.Module", directory: Path) -> "torch.nn.Module":
        from adaptkit_adapters.model import load_adapters

        return load_adapters(base_model, Path(directory))


@hookimpl
def adaptkit_register_strategies(register):
    register(BottleneckAdapters)

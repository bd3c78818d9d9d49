"""A public building block for low-rank adaptation through peft: options, targets, wrap, LoRA+ groups.

Why this lives in the core: two first-party strategies train peft low-rank adapters, one on
the full-precision base and one on a 4-bit base, and they share every option (rank, alpha,
dropout, target modules, DoRA, rsLoRA, LoRA+, training the head), the per-family default
targets (``adaptkit.plugin.families.PROJECTIONS``), the target check and the optimizer groups. The 4-bit strategy used to import the
full-precision one's plugin package to reuse them, which made one plugin depend on another
(installing, versioning or replacing one changed the other). A plugin should depend only on
``adaptkit``'s public API, so the shared part is that API: ``LowRankStrategy`` and
``LowRankOptions``, which any plugin, first-party or not, subclasses. The strategies
themselves (their names, rates, quantization) stay in their plugins; this module names none.

No torch import at module level: plugins import this while recipes are validated.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

from pydantic import Field, PositiveInt, field_validator

from adaptkit.plugin.families import CONV1D_FAMILIES, PROJECTIONS
from adaptkit.plugin.strategy import PeftStrategy, StrategyOptions, WrapContext

if TYPE_CHECKING:
    import torch

# Each family's projections (adapted when the recipe names none) and which families store them
# as Conv1D: the per-family tables live in adaptkit.plugin.families; these names stay for importers.
DEFAULT_TARGETS: dict[str, list[str]] = PROJECTIONS

# Layer kinds peft's low-rank tuners can adapt, by class name (bitsandbytes' Linear4bit subclasses nn.Linear).
LOW_RANK_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


class LowRankOptions(StrategyOptions):
    """The recipe options of a peft low-rank adapter; a strategy's own options subclass this."""

    r: PositiveInt = Field(8, description="Rank of the update matrices.")
    alpha: float = Field(16, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout on the adapter input. Off by default, as in peft: it keeps a copy of every adapted "
        "layer's input for the backward pass, which on small models costs more memory than LoRA saves."))
    target_modules: Optional[Union[list[str], str]] = Field(
        None, description="Module names (or a regex) to adapt; per-family defaults when absent.")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed low-rank adaptation.")

    @field_validator("target_modules")
    @classmethod
    def _names_something(cls, value: Optional[Union[list[str], str]]) -> Optional[Union[list[str], str]]:
        """``[]`` or ``""`` would adapt nothing, yet was taken as "absent": the family's four default
        modules were adapted while the recipe and the run card recorded ``[]``."""
        if value is not None and (len(value) == 0 if isinstance(value, list) else not value.strip()):
            raise ValueError("an empty target_modules adapts nothing; leave the key out for this model "
                             "family's default modules, or name the modules to adapt")
        return value
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r), stabler at high rank.")
    loraplus_lr_ratio: Optional[float] = Field(
        None, gt=0, description="LoRA+: train the B matrices at this multiple of the learning rate.")
    train_head: bool = Field(True, description="Train the task head (peft modules_to_save).")


def target_modules_for(model_type: str, configured: Optional[Union[list[str], str]]) -> Union[list[str], str]:
    """The recipe's target modules, else the family's known projections, else peft's "all-linear"."""
    if configured:
        return configured
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    return "all-linear"


def freeze_saved_modules(model: "torch.nn.Module") -> None:
    """Freeze the copies peft trains whole (modules_to_save).

    peft's sequence-classification wrapper adds the classifier to modules_to_save on its own,
    so ``train_head: false`` must be enforced after wrapping, not only in the config.
    """
    for name, param in model.named_parameters():
        if ".modules_to_save." in name:
            param.requires_grad_(False)


class LowRankStrategy(PeftStrategy):
    """peft low-rank adapters (LoRA, DoRA, rsLoRA, LoRA+): subclass, set ``name`` and ``Options``.

    ``wrap`` checks every recipe-given target module, builds the ``LoraConfig`` and freezes the
    head copy when ``train_head`` is false; ``parameter_groups`` gives LoRA+'s faster B matrices.
    A subclass that changes the base first (quantizes it) overrides ``wrap`` and reuses the parts.
    """

    Options: ClassVar[type[StrategyOptions]] = LowRankOptions
    mergeable: ClassVar[bool] = True
    default_learning_rate: ClassVar[float] = 5e-4
    head_options: ClassVar[tuple[str, ...]] = ("train_head",)
    # The layer kinds a recipe's target_modules entry may name (checked before wrapping).
    layer_kinds: ClassVar[tuple[str, ...]] = LOW_RANK_LAYERS
    # Each family's attention and feed-forward projections, adapted when the recipe names none.
    default_targets: ClassVar[dict[str, list[str]]] = DEFAULT_TARGETS
    target_modules_for = staticmethod(target_modules_for)

    def peft_config(self, context: WrapContext) -> Any:
        from peft import LoraConfig

        opts = self.options
        return LoraConfig(
            r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
            target_modules=target_modules_for(context.model_type, opts.target_modules),
            use_dora=opts.use_dora, use_rslora=opts.use_rslora,
            fan_in_fan_out=context.model_type in CONV1D_FAMILIES,
            task_type=context.peft_task_type,
            modules_to_save=list(context.head_modules) if opts.train_head and context.head_modules else None,
            exclude_modules=list(context.head_modules) or None,
        )

    def check_targets(self, model: "torch.nn.Module", context: WrapContext) -> None:
        """Every ``target_modules`` entry the recipe gives must match a module (else TargetModuleError).

        The per-family defaults are not checked: they list both the transformers 4 and 5 names.
        """
        from adaptkit.plugin.targets import resolve_targets

        resolve_targets(model, self.options.target_modules, self.name, kinds=self.layer_kinds,
                        exclude=context.head_modules)

    def wrap(self, model: "torch.nn.Module", context: WrapContext) -> "torch.nn.Module":
        from peft import get_peft_model

        self.check_targets(model, context)
        model = get_peft_model(model, self.peft_config(context))
        if not self.options.train_head:
            freeze_saved_modules(model)
        return model

    def parameter_groups(self, model: "torch.nn.Module", learning_rate: float,
                         weight_decay: float) -> list[dict[str, Any]]:
        """LoRA+ (Hayou et al. 2024): the B matrices train ``loraplus_lr_ratio`` times faster than A.

        Which parameters get no weight decay is ``no_weight_decay``'s answer; empty groups are dropped.
        """
        ratio = self.options.loraplus_lr_ratio
        if not ratio:
            return super().parameter_groups(model, learning_rate, weight_decay)
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            fast = "lora_B" in name or "lora_embedding_B" in name
            no_decay = self.no_weight_decay(name, param)
            groups.setdefault((fast, no_decay), []).append(param)
        return [{"params": params, "lr": learning_rate * (ratio if fast else 1.0),
                 "weight_decay": 0.0 if no_decay else weight_decay}
                for (fast, no_decay), params in sorted(groups.items())]

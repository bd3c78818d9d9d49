"""``frozen_head``: a linear probe. The backbone is frozen; only the task head trains.

Because the backbone never changes, what it feeds the head is a pure function of the
example. The wrapped model therefore computes each example's head input once (in the
backbone's eval mode, so dropout cannot make it vary), keys it by a hash of the example's
unpadded inputs, and from then on runs only the head: the first epoch pays one forward pass
per example, every later epoch almost nothing. The training loop does not change: the
wrapper takes the same batch and returns the same ``loss`` / ``logits`` the model would.

Torch is imported inside functions only, so listing plugins and validating recipes stay fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field, PositiveFloat, PositiveInt

from adaptkit import Strategy, StrategyOptions, WrapContext, families, hookimpl

if TYPE_CHECKING:
    import torch

# A linear probe wants a much larger step than fine-tuning, scaled to its features: the rates
# measured per family, and the one for other families, are kept in adaptkit.families (with the
# measurements behind them).
DEFAULT_LEARNING_RATE = families.PROBE_LEARNING_RATE
LEARNING_RATES: dict[str, float] = families.PROBE_LEARNING_RATES


class FrozenHeadOptions(StrategyOptions):
    cache: bool = Field(
        True, description="Compute each example's backbone features once and reuse them in later epochs.")
    max_cached_examples: Optional[PositiveInt] = Field(
        None, description="Stop adding to the feature cache after this many examples (memory bound); "
                          "uncached examples run the backbone every time. Unbounded when absent.")
    learning_rate: Optional[PositiveFloat] = Field(
        None, description="Suggested learning rate for the head when the recipe sets none; "
                          "per-family default otherwise (linear probes want ~1e-3).")


class FrozenHead(Strategy):
    """Linear probe: frozen backbone, trained task head, backbone features cached per example.

    The features are whatever the task's head reads: for sequence classification, the pooling of
    ``task.pooling`` (the checkpoint's declared mean pooling for sentence-embedding models),
    installed by the task on the model, so the cache holds the pooled vector of each row."""

    name = "frozen_head"
    Options = FrozenHeadOptions
    mergeable = True
    export_kind = "model"
    default_learning_rate = DEFAULT_LEARNING_RATE

    def suggest_learning_rate(self, context: WrapContext) -> float:
        """The recipe's ``learning_rate`` option, else the family's rate (``LEARNING_RATES``), else
        ``DEFAULT_LEARNING_RATE``: a probe's best step follows the scale of the model's features.

        Asked before ``wrap``, so nothing here depends on, or changes, the wrapped model."""
        return self.options.learning_rate or LEARNING_RATES.get(context.model_type) or self.default_learning_rate

    def wrap(self, model: "torch.nn.Module", context: WrapContext) -> "torch.nn.Module":
        from adaptkit_frozen_head.cached import CachedHeadModel

        heads = list(context.head_modules)
        if not heads:
            raise ValueError("frozen_head needs a task head to train, and this task names none "
                             f"for the {type(model).__name__} model")
        for name, param in model.named_parameters():
            param.requires_grad_(any(name == h or name.startswith(h + ".") for h in heads))
        # Whatever the task: the wrapper caches only after the first labelled batch shows the model's
        # output and loss are what it rebuilds from a cached head input (one row of logits per
        # example); per-token heads and other losses train uncached, still a correct linear probe.
        cache = self.options.cache
        return CachedHeadModel(model, heads, cache=cache, max_cached=self.options.max_cached_examples)

    def before_training(self, model: "torch.nn.Module", batches: Any) -> None:
        """Compute every training row's backbone features once, in length-sorted batches."""
        warm = getattr(model, "warm", None)
        if callable(warm):
            warm(batches)

    def unwrap(self, model: "torch.nn.Module") -> "torch.nn.Module":
        from adaptkit_frozen_head.cached import CachedHeadModel

        if isinstance(model, CachedHeadModel):
            return model.release()
        return model

    def save(self, model, directory):
        self.unwrap_base(model).save_pretrained(directory, safe_serialization=True)
        return directory

    @staticmethod
    def unwrap_base(model: "torch.nn.Module") -> "torch.nn.Module":
        """The plain transformers model inside the wrapper, without clearing the cache."""
        return getattr(model, "base", model)


@hookimpl
def adaptkit_register_strategies(register):
    register(FrozenHead)

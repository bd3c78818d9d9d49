"""``bitfit``: train only the bias terms of the pretrained model, plus the task head.

BitFit (Ben Zaken et al., 2022) shows that on small and medium datasets, tuning the biases
alone (about 0.1% of a BERT's weights) comes close to full fine-tuning. Nothing is added to
the model, so it is trivially mergeable: the trained model *is* the merged model.

This package is an example of a third-party adaptkit plugin: it imports only adaptkit's
public API, registers its strategy through the ``adaptkit_register_strategies`` hook, and is
found through the ``adaptkit`` entry-point group declared in its own pyproject.toml.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from adaptkit import Strategy, StrategyOptions, WrapContext, hookimpl

__version__ = "0.1.0"


class BitFitOptions(StrategyOptions):
    train_head: bool = Field(True, description="Train the task head as well as the biases.")
    train_norm: bool = Field(False, description="Also train normalisation weights (LayerNorm / RMSNorm gains).")


class BitFit(Strategy):
    """Train only bias terms (and the task head); nothing added, so merging is the identity."""

    name = "bitfit"
    Options = BitFitOptions
    mergeable = True
    export_kind = "model"
    # Biases are few and start near zero: they need a larger step than full fine-tuning.
    default_learning_rate = 1e-3
    # train_head means nothing for a task without a head (a language model): the core refuses it there.
    head_options = ("train_head",)

    def trainable(self, name: str, context: WrapContext) -> bool:
        """Whether parameter ``name`` trains under these options."""
        in_head = any(name == h or name.startswith(h + ".") for h in context.head_modules)
        if in_head:
            return self.options.train_head
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            return True
        return self.options.train_norm and "norm" in name.lower()

    def wrap(self, model: Any, context: WrapContext) -> Any:
        for name, param in model.named_parameters():
            param.requires_grad_(self.trainable(name, context))
        return model

    def unwrap(self, model: Any) -> Any:
        return model


@hookimpl
def adaptkit_register_strategies(register):
    register(BitFit)

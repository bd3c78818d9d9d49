"""One adaptkit strategy class per peft tuner type, made from the method's config class.

``PeftMethod`` is the generic strategy: options are the config's own fields (``options``), the
config is built with the fields adaptkit decides (task type, head, weight layout, default
targets), ``wrap`` is ``get_peft_model``, ``unwrap`` merges where the method can and removes it
where it cannot, and ``after_step`` gives a method that needs a hook in the loop its call (AdaLoRA's
rank allocation: peft's ``update_and_allocate``). ``make_strategy`` subclasses it per method.

When peft cannot serve a model (no layer of a kind it adapts, a family its tables lack and the
recipe names no targets, an architecture it was written for only), ``wrap`` refuses with peft's
own message, named as the method's: ``adaptkit plan`` wraps on the meta device, so the refusal
comes before any weight is read.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar, Optional

from adaptkit import PeftStrategy, PreflightError, WrapContext, families, resolve_targets

from adaptkit_peft_methods.catalog import Method, peft_version
from adaptkit_peft_methods.methods import (BLOCK_TARGETS, FITTED_TO_WIDTHS, KIT_OPTIONS, NEEDS, PEFT_STACK_NAMES,
                                           RUN_STEPS, TOKEN_INPUT)
from adaptkit_peft_methods.options import HEAD_OPTION, config_kwargs, options_model

# Layer kinds a recipe's target_modules entry may name: every kind some peft tuner adapts.
TARGET_KINDS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention", "LayerNorm")


def config_class(method: Method) -> type:
    """peft's config class for ``method``, from peft's registry (imports peft)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return next(cls for kind, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
                if getattr(kind, "value", str(kind)).lower() == method.name)


def target_table(method: Method) -> Optional[dict[str, Any]]:
    """peft's default target modules per ``model_type`` for ``method``, if it has a table (imports peft)."""
    from peft.utils import constants

    return getattr(constants, f"TRANSFORMERS_MODELS_TO_{method.peft_type.replace('_', '')}_TARGET_MODULES_MAPPING",
                   None)


def put_back_heads(base: Any, freeze: bool = True) -> Any:
    """``base`` with each peft ``ModulesToSaveWrapper`` replaced by its trained copy (frozen if ``freeze``):
    the base architecture with the trained head. Some tuners' ``merge_and_unload`` leave the wrapper
    in place (LN tuning's), and prompt learning has no unload at all."""
    for name, module in list(base.named_modules()):
        copies = getattr(module, "modules_to_save", None)
        if copies is None or not hasattr(module, "original_module"):
            continue
        active = module.active_adapter if isinstance(module.active_adapter, str) else module.active_adapters[0]
        trained = copies[active]
        if freeze:
            for param in trained.parameters():
                param.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, child, trained)
    return base


def dividing_block(model: Any, heads: list[str], largest: int) -> Optional[int]:
    """The largest size, at most ``largest``, that divides the in and out features of every linear layer
    outside the heads (so whichever of them a method adapts, its blocks tile it); None without such layers.
    Shapes only: it works on the meta device."""
    import math

    import torch

    def in_head(name: str) -> bool:
        return any(name == head or name.startswith(head + ".") for head in heads)

    widths = [w for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and not in_head(name)
              for w in (module.in_features, module.out_features)]
    if not widths:
        return None
    common = math.gcd(*widths)
    return max(d for d in range(1, min(common, largest) + 1) if common % d == 0)


def restore_trained_heads(model: Any) -> Any:
    """The base model of a peft model whose additions were removed, with the trained head in place."""
    return put_back_heads(model.get_base_model())


def _norm_layers(model: Any) -> list[str]:
    """The leaf names of ``model``'s normalisation layers (LayerNorm, RMSNorm), found by class name:
    the family-independent choice for a method peft points at norms where its table has the family."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and "norm" in type(module).__name__.lower()})


class PeftMethod(PeftStrategy):
    """A peft tuner type as a strategy; ``method`` says which (set by ``make_strategy``)."""

    method: ClassVar[Method]
    default_learning_rate: ClassVar[float] = 5e-4

    # ------------------------------------------------------------------ the config

    def default_targets(self, model_type: str, model: Any = None) -> Any:
        """None (peft's own per-family table decides) where peft has this family and its entries name
        modules of ``model``; else adaptkit's projections of the family (``adaptkit.families.PROJECTIONS``),
        but only for methods that adapt the projections (peft's Llama entry names some of them);
        else None, and peft says what it lacks."""
        table = target_table(self.method)
        if table is None:
            return None
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()} if model is not None else None
        own = table.get(model_type)
        if own and (names is None or any(str(entry).rsplit(".", 1)[-1] in names for entry in own)):
            return None
        projections = families.PROJECTIONS
        llama = list(table.get("llama") or [])
        if llama and set(llama) <= set(projections["llama"]) and model_type in projections:
            chosen = projections[model_type]
            return [t for t in chosen if names is None or t in names] or chosen
        if llama and all("norm" in entry for entry in llama) and model is not None:
            return _norm_layers(model) or None  # a method that tunes normalisation layers (LN tuning)
        return None

    def peft_config(self, context: WrapContext, model: Any = None) -> Any:
        opts = self.options
        fields = self.method.field_names()
        kwargs = config_kwargs(opts)
        heads = list(context.head_modules)
        if "target_modules" in fields and kwargs.get("target_modules") is None:
            default = self.default_targets(context.model_type, model)
            if default is not None:
                kwargs["target_modules"] = default
        if "modules_to_save" in fields and heads and getattr(opts, HEAD_OPTION, False):
            kwargs["modules_to_save"] = heads
        if "exclude_modules" in fields and heads:
            given = kwargs.get("exclude_modules")
            if given is None:
                kwargs["exclude_modules"] = heads
            elif isinstance(given, list):
                kwargs["exclude_modules"] = [*given, *[h for h in heads if h not in given]]
        if "fan_in_fan_out" in fields:
            kwargs["fan_in_fan_out"] = context.model_type in families.CONV1D_FAMILIES
        if self.method.name in BLOCK_TARGETS and "target_modules" in fields and kwargs.get("target_modules") is None \
                and model is not None:
            from adaptkit import find_block_list  # torch: imported when a model is wrapped, not with the plugin

            try:
                stack, _ = find_block_list(model)
            except ValueError:  # no block stack: peft says what it lacks
                stack = ""
            if stack and stack.rsplit(".", 1)[-1] not in PEFT_STACK_NAMES:
                kwargs["target_modules"] = rf"{re.escape(stack)}\.\d+"  # peft full-matches a string pattern
        fitted = FITTED_TO_WIDTHS.get(self.method.name)
        if fitted in fields and fitted not in kwargs and model is not None:  # the recipe's own value wins
            default = next((f.default for f in self.method.fields if f.name == fitted), None)
            size = dividing_block(model, heads, default) if isinstance(default, int) else None
            if size is not None:
                kwargs[fitted] = size
        steps_option = RUN_STEPS.get(self.method.name)
        if steps_option in fields and kwargs.get(steps_option) is None:  # the recipe's own value wins
            if context.total_steps is None:
                raise PreflightError(
                    f"strategy {self.name!r} needs {steps_option}, the optimizer steps it schedules over, and this "
                    f"wrap was not told how many steps the run takes (WrapContext.total_steps: compare over several "
                    f"training-set sizes shares one model between them); set strategy.{steps_option} in the recipe")
            kwargs[steps_option] = context.total_steps
        return config_class(self.method)(task_type=context.peft_task_type, **kwargs)

    # ------------------------------------------------------------------ wrap / unwrap

    def refusal(self, context: WrapContext, exc: BaseException, what: str = "cannot adapt") -> PreflightError:
        """peft's reason for not serving this model, named as this strategy's."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PreflightError(f"strategy {self.name!r} (peft {peft_version()} {self.method.config_name}) "
                              f"{what} this {context.model_type} model: peft says: {reason}")

    def wrap(self, model: Any, context: WrapContext) -> Any:
        from peft import get_peft_model

        if self.name in TOKEN_INPUT and getattr(model, "main_input_name", "input_ids") != "input_ids":
            raise PreflightError(f"strategy {self.name!r} cannot adapt this {context.model_type} model: its input is "
                                 f"{model.main_input_name}, not token ids ({TOKEN_INPUT[self.name]})")
        self.check_targets(model, context)
        try:
            wrapped = get_peft_model(model, self.peft_config(context, model))
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError, AttributeError) as exc:
            raise self.refusal(context, exc) from exc
        if self.mergeable:
            self.check_mergeable(wrapped, context)
        if not getattr(self.options, HEAD_OPTION, True):
            for name, param in wrapped.named_parameters():
                if ".modules_to_save." in name:
                    param.requires_grad_(False)
        return wrapped

    def check_mergeable(self, model: Any, context: WrapContext) -> None:
        """Merge a copy of one adapted layer now, so a model this method cannot merge into (BEFT on
        layers without a bias: peft says "Base layer has no bias") is refused at wrap, not after training."""
        import copy

        layer = next((m for m in model.modules() if callable(getattr(m, "merge", None))
                      and callable(getattr(m, "get_base_layer", None))), None)
        if layer is None:
            return
        try:
            copy.deepcopy(layer).merge()
        except (ValueError, TypeError, NotImplementedError, RuntimeError, AttributeError) as exc:
            raise self.refusal(context, exc, "cannot merge into") from exc

    def check_targets(self, model: Any, context: WrapContext) -> None:
        """Every recipe-given ``target_modules`` entry must name a module (``adaptkit.resolve_targets``:
        the closest name is suggested), so a misspelt entry beside a correct one is not silently dropped.
        An entry naming a layer of a kind outside ``TARGET_KINDS`` (Llama's RMSNorm for LN tuning, a
        decoder block for Shadow) is left to peft, which knows what its method adapts."""
        from adaptkit import TargetModuleError

        given = getattr(self.options, "target_modules", None)
        if given is None:
            return
        try:
            resolve_targets(model, given, self.name, kinds=TARGET_KINDS, exclude=context.head_modules)
        except TargetModuleError:
            names = [name for name, _ in model.named_modules() if name]
            entries = [given] if isinstance(given, str) else list(given)

            def named(entry: str) -> bool:
                if isinstance(given, str):
                    return any(re.fullmatch(entry, n) for n in names)
                return any(n == entry or n.endswith("." + entry) for n in names)

            if not all(named(entry) for entry in entries):
                raise

    def unwrap(self, model: Any) -> Any:
        """Merge where the method can (peft ``merge_and_unload``), else remove it (``unload``; a tuner
        without one, such as adaption prompt's, has its layers disabled and the base taken out)."""
        if self.mergeable:
            return put_back_heads(model.merge_and_unload(), freeze=False)
        if callable(getattr(model.base_model, "unload", None)):
            return put_back_heads(model.unload())
        model.base_model.disable_adapter_layers()
        return restore_trained_heads(model)

    def after_step(self, model: Any, step: int) -> None:
        """A method with a per-step update (AdaLoRA's ``update_and_allocate``, which reads the
        gradients of the step just taken) gets it here; every other method does nothing."""
        update = getattr(getattr(model, "base_model", None), "update_and_allocate", None)
        if callable(update):
            update(step)


def _summary(method: Method) -> str:
    first = method.doc.rstrip(".")
    return f"peft {method.config_name}: {first}" if first else f"peft {method.config_name}"


def make_strategy(method: Method, base: type[PeftMethod] = PeftMethod) -> type[PeftMethod]:
    """The strategy class for ``method`` (a subclass of ``base``): its name, options model, mergeability
    and upstream version."""
    has_head = "modules_to_save" in method.field_names()
    attributes = {
        "name": method.name,
        "method": method,
        "Options": options_model(method, NEEDS.get(method.name)),
        "mergeable": method.mergeable and base.mergeable,
        "description": _summary(method),
        "upstream": f"peft {peft_version()}",
        "head_options": ("train_head",) if has_head else (),
        "conformance_options": KIT_OPTIONS.get(method.name),
        "__doc__": f"peft's {method.peft_type} tuner ({method.config_name}), generated from peft's registry.",
        "__module__": __name__,
    }
    return type("".join(p.title() for p in method.name.split("_")) + "Strategy", (base,), attributes)

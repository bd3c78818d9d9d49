"""A method's recipe options, built from its peft config dataclass (types, defaults, help text).

Why generated rather than written: peft ships some forty tuner types, each with a config dataclass
that already says every option's type, default and meaning (``metadata["help"]``). Copying them by
hand would drift with every peft release; reading the dataclass keeps the recipe schema, the
validation and the documentation one source with peft's own. pydantic's dataclass support cannot be
used directly: peft's configs carry fields adaptkit sets itself (task type, base model path, the
head's ``modules_to_save``) and types pydantic cannot check (``torch.dtype``), so the model is made
field by field, from the catalog's reading of the dataclass (no peft import: see ``catalog``).
"""
from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any, Optional

from pydantic import Field, create_model, model_validator

from adaptkit import StrategyOptions

from adaptkit_peft_methods.catalog import ConfigField, Method

# Config fields adaptkit sets from the run and never takes from a recipe: the task type and base
# path come from the model, inference_mode from train/predict, the head from the task (train_head),
# fan_in_fan_out from the family's weight layout, and the bookkeeping fields peft writes itself.
MANAGED_FIELDS = frozenset({
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
    "peft_version", "modules_to_save", "fan_in_fan_out",
    # prompt learning: peft reads these from the model's config when it wraps
    "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers",
})

HEAD_OPTION = "train_head"


_NAMESPACE = {name: getattr(typing, name) for name in ("Optional", "Union", "Literal", "Any", "List", "Dict",
                                                      "Tuple", "Set")}
_NAMESPACE.update({"list": list, "dict": dict, "tuple": tuple, "set": set, "str": str, "int": int, "float": float,
                   "bool": bool, "None": None})


@lru_cache(maxsize=None)  # peft's configs repeat a few dozen annotations over some 500 fields
def _annotation(text: str) -> Any:
    """The annotation a peft config's source gives, as a type pydantic validates; ``Any`` where it names
    something beyond builtins and typing (``torch.dtype``, peft's own enums) or pydantic cannot express it."""
    from pydantic import TypeAdapter

    try:
        annotation = eval(text, {"__builtins__": {}}, dict(_NAMESPACE))  # noqa: S307 - names limited to typing
        TypeAdapter(annotation).json_schema()
        return annotation
    except Exception:  # noqa: BLE001 - any type outside that namespace is taken as given
        return Any


def option_fields(method: Method) -> list[ConfigField]:
    """The config's fields a recipe may set (every field but ``MANAGED_FIELDS``), in peft's order."""
    return [f for f in method.fields if f.name not in MANAGED_FIELDS]


def _needing(name: str, needs: dict[str, str]) -> type[StrategyOptions]:
    """A base whose validator refuses an empty value for each of ``needs`` (option -> what it is)."""

    class Needs(StrategyOptions):
        @model_validator(mode="after")
        def _given(self):
            for option, what in needs.items():
                if getattr(self, option, None) in (None, [], {}, ""):
                    raise ValueError(f"strategy {name!r} needs {option} ({what}); peft cannot run without it")
            return self

    return Needs


def options_model(method: Method, needs: Optional[dict[str, str]] = None) -> type[StrategyOptions]:
    """A ``StrategyOptions`` subclass whose fields are ``method``'s config fields (see ``option_fields``).

    Unknown keys are refused (``extra="forbid"``: the recipe loader says "did you mean"); types and
    defaults are peft's, descriptions its help text; ``train_head`` is added where the method has
    ``modules_to_save``; each option of ``needs`` must be given. peft's own checks (``__post_init__``) run when the config is built at
    ``plan``/``run``.
    """
    fields: dict[str, Any] = {}
    for item in option_fields(method):
        annotation = _annotation(item.annotation)
        if item.default is None and annotation is not Any:
            annotation = Optional[annotation]
        description = item.help or f"peft {method.config_name}.{item.name} ({item.annotation})."
        fields[item.name] = (annotation, Field(item.default, description=description))
    if "modules_to_save" in method.field_names():
        fields[HEAD_OPTION] = (bool, Field(True, description="Train the task head (peft modules_to_save)."))
    base = _needing(method.name, needs) if needs else StrategyOptions
    return create_model(f"{''.join(p.title() for p in method.name.split('_'))}Options", __base__=base,
                        __doc__=f"The ``{method.name}`` recipe section: the options of peft's {method.config_name}.",
                        **fields)


def config_kwargs(options: StrategyOptions) -> dict[str, Any]:
    """The options the recipe set, as config arguments (peft's defaults and ``__post_init__`` decide the rest)."""
    data = options.model_dump(exclude_unset=True)
    data.pop(HEAD_OPTION, None)
    return data

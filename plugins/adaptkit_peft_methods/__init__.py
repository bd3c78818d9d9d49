"""Every peft tuner type as an adaptkit strategy, generated from peft's own registry.

``loha``, ``lokr``, ``oft``, ``boft``, ``vera``, ``fourierft``, ``adalora``, ``hra``, ``miss``,
``c3a``, ``randlora``, ``shira``, ``ln_tuning``, ``trainable_tokens``, ... : one strategy per
type in ``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING`` (``methods``), its options the config
class's own fields (``options``), built, wrapped, merged or removed by peft (``strategy``). A
newer peft adds its new methods here without a code change. Types left out and why:
``methods.SKIPPED``; the prompt-learning ones: ``prompt``.

Written as a third party would write it: it imports only ``adaptkit``.
"""
from __future__ import annotations

from adaptkit import hookimpl

from adaptkit_peft_methods.methods import layer_methods
from adaptkit_peft_methods.prompt import prompt_strategies
from adaptkit_peft_methods.strategy import PeftMethod, make_strategy

__all__ = ["PeftMethod", "make_strategy", "strategies"]


def strategies() -> dict[str, type[PeftMethod]]:
    """The generated strategy classes by name, made once per process."""
    global _MADE
    if _MADE is None:
        made = {name: make_strategy(method) for name, method in layer_methods().items()}
        made.update(prompt_strategies())
        _MADE = dict(sorted(made.items()))
    return _MADE


_MADE: dict[str, type[PeftMethod]] | None = None


@hookimpl
def adaptkit_register_strategies(register):
    for cls in strategies().values():
        register(cls)

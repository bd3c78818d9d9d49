"""Every hook adaptkit calls, in one place: this module is the plugin author's reference.

A plugin is any module named by an entry point in the ``adaptkit`` group. It implements
some of the hooks below with the ``adaptkit.hookimpl`` marker; the names of its functions
must match exactly (a misspelt ``adaptkit_*`` function is an error, not a silent no-op).
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("adaptkit")
hookimpl = pluggy.HookimplMarker("adaptkit")


@hookspec
def adaptkit_register_strategies(register: Callable[[type], None]) -> None:
    """Register strategy classes: call ``register(StrategyClass)`` once per strategy.

    Called once when the plugin manager is built. Each class subclasses
    ``adaptkit.Strategy`` and carries a ``name``. A name that two distributions register (a
    third party's ``lora``, say) is never given to whichever loads first: it is refused, the
    plugin that is not adaptkit's own is marked with an error naming both distributions, and a
    recipe that means one writes ``strategy: {name: lora, distribution: adaptkit}``. Returns nothing.
    """


@hookspec
def adaptkit_register_tasks(register: Callable[[type], None]) -> None:
    """Register task types: call ``register(TaskClass)`` once per task.

    Called once when the plugin manager is built. Each class subclasses ``adaptkit.Task``
    and carries a ``name`` (the recipe's ``task.type``); a name two distributions register is
    refused as for strategies, and picked with ``task: {type: ..., distribution: ...}``. Returns nothing.
    """


@hookspec(firstresult=True)
def adaptkit_resolve_model(name: str) -> str | None:
    """Turn a model name from a recipe into a local directory, or return None to pass.

    Called before a model is loaded, with ``model.name`` exactly as written in the recipe.
    The first non-None answer wins (``firstresult``); when every plugin passes, adaptkit
    treats the name as a local path or a Hugging Face Hub id. Use it to serve models that a
    package ships for offline use.
    """


@hookspec
def adaptkit_on_event(event: str, payload: dict[str, Any]) -> None:
    """Observe a training event; the return value is ignored.

    Called on the main process only, with ``event`` one of ``run_start``, ``epoch_end``
    (payload: epoch, metrics), ``checkpoint`` (payload: path, step) and ``run_end``
    (payload: metrics, output_dir). Use it for logging or notifications; raising stops
    the run with an error that names the plugin.
    """


@hookspec
def adaptkit_register_baselines(register: Callable[[type], None]) -> None:
    """Register baselines trained without pretraining: call ``register(BaselineClass)`` once per baseline.

    Called once when the plugin manager is built. Each class subclasses ``adaptkit.Baseline``,
    carries a ``name`` and declares the task types it serves (``tasks``). ``compare`` trains every
    installed baseline that serves the recipe's task on the same rows as the transfer arms and
    judges transfer against the best of them; ``advise`` cross-validates them on the training
    rows. A name two distributions register is refused as for strategies. Returns nothing.
    """

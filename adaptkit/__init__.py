"""adaptkit: transfer learning and parameter-efficient fine-tuning from one YAML recipe.

The public API is listed in ``__all__``. Importing adaptkit does not import torch: the
training functions load it when first called, so listing plugins and validating recipes
stay fast.
"""
from __future__ import annotations

from typing import Any

from adaptkit.errors import AdaptkitError, ContractViolation, RecipeError
from adaptkit.plugin.hookspecs import hookimpl
from adaptkit.recipe import Recipe, load_recipe
from adaptkit.plugin.strategy import PeftStrategy, Strategy, StrategyOptions, WrapContext
from adaptkit.plugin.task import Task, TaskOptions

__version__ = "0.1.0"

__all__ = [
    "AdaptkitError", "ContractViolation", "RecipeError", "Recipe", "PeftStrategy", "Strategy", "StrategyOptions", "Task",
    "TaskOptions", "WrapContext", "hookimpl", "load_recipe", "list_strategies", "get_strategy",
    "list_plugins", "run", "plan", "load", "check_strategy", "advise", "compare", "__version__",
]

# What plugin authors build with. A plugin imports only from ``adaptkit`` itself, never from a
# submodule, so the core can reorganise its modules without breaking anyone's plugin
# (tests/test_core_names_no_plugin.py checks the first-party ones).
from adaptkit.errors import DataError, ModelSourceError, PreflightError, TargetModuleError  # noqa: E402
from adaptkit.plugin.low_rank import LowRankOptions, LowRankStrategy  # noqa: E402
from adaptkit.plugin.targets import adaptable_modules, resolve_targets  # noqa: E402
from adaptkit.plugin.task import position_limit  # noqa: E402

# Plugin helpers whose modules import torch (or the engine): loaded on first use by ``__getattr__``
# so that ``import adaptkit`` stays torch-free. Name -> defining module.
_LAZY = {
    "find_block_list": "adaptkit.plugin.layers",
    "load_config": "adaptkit.engine.models",
    "resolve_model_source": "adaptkit.engine.models",
    "LabelRules": "adaptkit.plugin.task",  # lazy only while it is new; torch-free, may move to the imports above
}

__all__ += [name for name in (
    "DataError", "ModelSourceError", "PreflightError", "TargetModuleError", "LowRankOptions", "LowRankStrategy",
    "adaptable_modules", "resolve_targets", "position_limit", *_LAZY) if name not in __all__]


def __getattr__(name: str) -> Any:
    """``adaptkit.find_block_list`` and the other ``_LAZY`` helpers, imported when first asked for."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adaptkit' has no attribute {name!r}")


def list_strategies() -> dict[str, type[Strategy]]:
    """Every installed strategy, by name, as registered through entry points."""
    from adaptkit.plugin.registry import get_registry

    return dict(get_registry().strategies)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; the error suggests the closest name."""
    import difflib

    strategies = list_strategies()
    if name not in strategies:
        close = difflib.get_close_matches(name, list(strategies), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AdaptkitError(f"unknown strategy {name!r}{hint} (installed: {', '.join(sorted(strategies))})")
    return strategies[name]


def list_plugins() -> list[Any]:
    """Every plugin entry point found, with version, what it registered, and any error."""
    from adaptkit.plugin.registry import get_registry

    return list(get_registry().plugins)


def run(recipe: Any, overwrite: bool = False, progress: bool = True, resume: bool = False) -> Any:
    """Train a recipe (a path, a dict or a ``Recipe``) and return a ``RunResult``.

    ``resume=True`` continues the newest complete checkpoint of an interrupted run.
    """
    from adaptkit.engine.runner import run as _run

    return _run(recipe, overwrite=overwrite, progress=progress, resume=resume)


def plan(recipe: Any, strategies: Any = None) -> Any:
    """Before training: trainable parameters, touched modules and a memory estimate per strategy.

    Loads only the model's config (the weights on the meta device), so it is cheap; returns a
    ``Plan`` (see ``adaptkit.engine.planning``) and raises for target modules or combinations that cannot run.
    """
    from adaptkit.engine.planning import plan as _plan
    from adaptkit.engine.runner import _as_recipe

    return _plan(_as_recipe(recipe), strategies)


def load(run_dir: Any) -> Any:
    """Load a finished run folder as a ``Predictor`` with ``.predict(rows)``."""
    from adaptkit.engine.predict import load_run

    return load_run(run_dir)


def check_strategy(strategy: Any, options: Any = None) -> Any:
    """Run the architecture-preserving contract on tiny BERT and GPT-2 models (see adaptkit.plugin.conformance)."""
    from adaptkit.plugin.conformance import check_strategy as _check

    return _check(strategy, options)


def advise(recipe: Any, **options: Any) -> Any:
    """Judge data suitability, transferability and cost before training; returns an ``AdviceReport``.

    See ``adaptkit.judge.advise.advise`` for the options (strategies, probe_steps, max_feature_rows, ...).
    """
    from adaptkit.judge.advise import advise as _advise

    return _advise(recipe, **options)


def compare(recipe: Any, strategies: Any, seeds: Any = None, sizes: Any = None, **options: Any) -> Any:
    """Train strategies and the from-scratch baseline on the same data; returns a ``CompareReport``.

    ``strategies`` may include ``"scratch"`` (same architecture, random weights). Every arm gets
    the same learning-rate search (``trials``, chosen on a ``validation_fraction`` of its rows;
    ``storage`` shares it through an Optuna database); see ``adaptkit.judge.compare.compare`` for the
    output folder and the verdict's rules.
    """
    from adaptkit.judge.compare import compare as _compare

    return _compare(recipe, strategies, seeds=seeds, sizes=sizes, **options)

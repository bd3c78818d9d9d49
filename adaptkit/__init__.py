"""adaptkit: transfer learning and parameter-efficient fine-tuning from one YAML recipe.

The public API is listed in ``__all__``. Importing adaptkit does not import torch: the
training functions load it when first called, and the result types (``RunResult``, ``Plan``,
``AdviceReport``, ...) are imported on first access by ``__getattr__``, so listing plugins and
validating recipes stay fast. Type checkers see every name through the ``TYPE_CHECKING`` imports
(the package ships ``py.typed``). Every exception is an ``AdaptkitError`` defined in
``adaptkit.errors`` and exported here.
"""
from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from adaptkit.errors import (AdaptkitError, CheckpointDamaged, CheckpointWriteError, ContractViolation, DataError,
                             DistributedRunError, ModelSourceError, PluginError, PreflightError, RecipeError,
                             RunInterrupted, TargetModuleError, TaskContractViolation, TrainingDiverged)
from adaptkit.plugin.hookspecs import hookimpl
from adaptkit.recipe import Recipe, load_recipe
from adaptkit.plugin.strategy import PeftStrategy, Strategy, StrategyOptions, WrapContext
from adaptkit.plugin.task import LabelRules, Task, TaskOptions, write_label_maps
from adaptkit.plugin.baseline import Baseline, BaselineRows
from adaptkit.plugin.registry import get_strategy, list_baselines, list_plugins, list_strategies
from adaptkit._version import __version__

if TYPE_CHECKING:  # what the lazy names below are, for type checkers (nothing is imported at run time)
    from adaptkit.plugin.sources import load_config, resolve_model_source
    from adaptkit.engine.planning import Plan, StrategyPlan
    from adaptkit.engine.predict import Predictor
    from adaptkit.engine.runner import RunResult
    from adaptkit.judge.advise import AdviceReport
    from adaptkit.judge.compare import CompareReport
    from adaptkit.plugin.conformance import ConformanceReport, ModelFamily
    from adaptkit.engine.merge import MergeResult
    from adaptkit.engine.serving import RunAdapters
    from adaptkit.plugin.blocks import find_block_list

#: What the public functions accept as a recipe: a ``Recipe``, a YAML file's path, or its dict.
RecipeLike = Union[Recipe, str, "PathLike[str]", dict[str, Any]]

__all__ = [
    "AdaptkitError", "ContractViolation", "RecipeError", "Recipe", "PeftStrategy", "Strategy", "StrategyOptions", "Task",
    "TaskOptions", "WrapContext", "hookimpl", "load_recipe", "list_strategies", "get_strategy",
    "list_plugins", "run", "plan", "load", "check_strategy", "advise", "compare", "__version__",
    # every exception a user or plugin author can catch
    "CheckpointDamaged", "CheckpointWriteError", "DistributedRunError", "PluginError", "RunInterrupted",
    "TaskContractViolation", "TrainingDiverged",
    # what the functions return (imported on first access) and the conformance kit's entry points
    "RunResult", "Plan", "StrategyPlan", "AdviceReport", "CompareReport", "Predictor", "ConformanceReport",
    "ModelFamily", "RecipeLike", "check_task", "register_family",
    # baselines trained without pretraining, which compare and advise judge transfer against
    "Baseline", "BaselineRows", "list_baselines", "merge",
    # many runs' adapters on one base, switched per call
    "load_runs",
]

# What plugin authors build with. A plugin imports only from ``adaptkit`` itself, never from a
# submodule, so the core can reorganise its modules without breaking anyone's plugin
# (tests/test_core_names_no_plugin.py checks the first-party ones).
from adaptkit.plugin.low_rank import LowRankOptions, LowRankStrategy  # noqa: E402
from adaptkit.plugin import families  # noqa: E402  (the per-family tables, one per concern)
from adaptkit.plugin.targets import adaptable_modules, resolve_targets  # noqa: E402
from adaptkit.plugin.task import position_limit  # noqa: E402

# Plugin helpers whose modules import torch (or the engine): loaded on first use by ``__getattr__``
# so that ``import adaptkit`` stays torch-free. Name -> defining module.
_LAZY = {
    "find_block_list": "adaptkit.plugin.blocks",
    "load_config": "adaptkit.plugin.sources",
    "resolve_model_source": "adaptkit.plugin.sources",
    # whether the Hub is offline or reachable: decided in one place, asked by plugins too
    "hub_offline": "adaptkit.plugin.sources",
    "hub_endpoint": "adaptkit.plugin.sources",
    "hub_unreachable": "adaptkit.plugin.sources",
    # how a sequence head pools token states (torch imported inside the functions only)
    "apply_pooling": "adaptkit.plugin.pooling",
    "declared_pooling": "adaptkit.plugin.pooling",
    "model_pooling": "adaptkit.plugin.pooling",
    "pool_hidden": "adaptkit.plugin.pooling",
    "POOLINGS": "adaptkit.plugin.pooling",
}

# Result types whose modules import torch, loaded like the helpers above (same ``__getattr__``).
_LAZY.update({
    "RunResult": "adaptkit.engine.runner",
    "Plan": "adaptkit.engine.planning",
    "StrategyPlan": "adaptkit.engine.planning",
    "AdviceReport": "adaptkit.judge.advise",
    "CompareReport": "adaptkit.judge.compare",
    "Predictor": "adaptkit.engine.predict",
    "ConformanceReport": "adaptkit.plugin.conformance",
    "ModelFamily": "adaptkit.plugin.conformance",
    "MergeResult": "adaptkit.engine.merge",
    "RunAdapters": "adaptkit.engine.serving",
})

__all__ += [name for name in (
    "DataError", "ModelSourceError", "PreflightError", "TargetModuleError", "LowRankOptions", "LowRankStrategy",
    "adaptable_modules", "resolve_targets", "position_limit", "families", "LabelRules", "write_label_maps",
    *_LAZY) if name not in __all__]


if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise take any misspelt name as Any
    def __getattr__(name: str) -> Any:
        """``adaptkit.find_block_list`` and the other ``_LAZY`` names, imported when first asked for."""
        if name in _LAZY:
            import importlib

            value = getattr(importlib.import_module(_LAZY[name]), name)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'adaptkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def run(recipe: RecipeLike, overwrite: bool = False, progress: bool = True, resume: bool = False) -> RunResult:
    """Train a recipe (a path, a dict or a ``Recipe``) and return a ``RunResult``.

    ``resume=True`` continues the newest complete checkpoint of an interrupted run.
    """
    from adaptkit.engine.runner import run as _run

    return _run(recipe, overwrite=overwrite, progress=progress, resume=resume)


def plan(recipe: RecipeLike, strategies: Optional[list[str]] = None) -> Plan:
    """Before training: trainable parameters, touched modules and a memory estimate per strategy.

    Loads only the model's config (the weights on the meta device), so it is cheap; returns a
    ``Plan`` (see ``adaptkit.engine.planning``) and raises for target modules or combinations that cannot run.
    """
    from adaptkit.engine.planning import plan as _plan
    from adaptkit.engine.session import as_recipe

    return _plan(as_recipe(recipe), strategies)


def load(run_dir: Union[str, "PathLike[str]"], trust_remote_code: bool = False) -> Predictor:
    """Load a finished run folder as a ``Predictor`` with ``.predict(rows)``.

    ``trust_remote_code=True`` lets code that comes with the run (a tokenizer's ``auto_map`` file,
    the model repository's code) run; only the caller can say so, never the folder's own recipe.
    """
    from adaptkit.engine.predict import load_run

    return load_run(run_dir, trust_remote_code=trust_remote_code)


def load_runs(runs: Sequence[Union[str, "PathLike[str]"]], trust_remote_code: bool = False) -> RunAdapters:
    """Load several peft runs on one base as a ``RunAdapters``: the base is built once and each run's
    adapter is switched in per call, ``.predict(rows, adapter=i)`` (peft ``load_adapter``/``set_adapter``).

    Whole-model runs (full fine-tune, partial freeze), different peft types and different bases are
    refused with the reason before any weight is read. See ``adaptkit.engine.serving.load_runs``.
    """
    from adaptkit.engine.serving import load_runs as _load_runs

    return _load_runs(runs, trust_remote_code=trust_remote_code)


def merge(runs: Sequence[Union[str, "PathLike[str]"]], method: str, output: Union[str, "PathLike[str]"],
          weights: Optional[Sequence[float]] = None, density: Optional[float] = None,
          eval_file: Union[str, "PathLike[str]", None] = None, overwrite: bool = False) -> MergeResult:
    """One adapter from several runs on the same base (peft ``add_weighted_adapter``: linear, cat, svd,
    ties, dare_linear, dare_ties, magnitude_prune), written as a run folder at ``output``.

    Runs on different bases, adapters or methods that cannot merge are refused before anything is
    written; ``eval_file`` evaluates the merged adapter. See ``adaptkit.engine.merge.merge_runs``.
    """
    from adaptkit.engine.merge import merge_runs

    return merge_runs(runs, method, output, weights=weights, density=density, eval_file=eval_file,
                      overwrite=overwrite)


def check_strategy(strategy: type[Strategy], options: Union[StrategyOptions, dict[str, Any], None] = None,
                   families: Optional[list[str]] = None,
                   expected_failures: Optional[Mapping[str, str]] = None) -> ConformanceReport:
    """Run the architecture-preserving contract on tiny BERT and GPT-2 models (see adaptkit.plugin.conformance);
    every check runs, and ``ContractViolation`` lists every failed one. ``expected_failures`` maps a check
    (``"bert/export"``) or a rule (``"export"``) to the reason it is known to fail: reported, not raised."""
    from adaptkit.plugin.conformance import check_strategy as _check

    return _check(strategy, options, families, expected_failures)


def check_task(task: type[Task], options: Union[TaskOptions, dict[str, Any], None] = None,
               rows: Optional[Sequence[Mapping[str, Any]]] = None,
               families: Optional[Sequence[str]] = None,
               expected_failures: Optional[Mapping[str, str]] = None) -> ConformanceReport:
    """Check a task plugin on tiny config-built models: its batches run, its metrics are the declared
    ``metric_names``, one prediction per row, ``state`` round-trips; raises ``TaskContractViolation``
    listing every failed check (``expected_failures``: check or rule -> reason, reported, not raised).

    ``rows`` are a few labelled raw rows with the task's columns (see ``adaptkit.plugin.conformance.check_task``).
    """
    from adaptkit.plugin.conformance import check_task as _check

    return _check(task, options, rows, families, expected_failures)


def register_family(name: str, build: Any = None, *, head_modules: Sequence[str] = (),
                    peft_task_type: Optional[str] = None, task: str = "classification",
                    config: Optional[Mapping[str, Any]] = None, modality: str = "text",
                    replace: bool = False) -> ModelFamily:
    """Add a model family the conformance kit runs on: ``build`` makes its tiny classifier (for
    ``check_strategy``), ``config`` is a tiny transformers config (for ``check_task``), and the family
    declares its own head modules and peft task type. Imports torch (it is a testing call)."""
    from adaptkit.plugin.conformance import register_family as _register

    return _register(name, build, head_modules=head_modules, peft_task_type=peft_task_type, task=task,
                     config=config, modality=modality, replace=replace)


def advise(recipe: RecipeLike, **options: Any) -> AdviceReport:
    """Judge data suitability, transferability and cost before training; returns an ``AdviceReport``.

    See ``adaptkit.judge.advise.advise`` for the options (strategies, probe_steps, max_feature_rows, ...).
    """
    from adaptkit.judge.advise import advise as _advise

    return _advise(recipe, **options)


def compare(recipe: RecipeLike, strategies: list[str], seeds: Optional[list[int]] = None,
            sizes: Optional[list[int]] = None, **options: Any) -> CompareReport:
    """Train strategies and the from-scratch baseline on the same data; returns a ``CompareReport``.

    ``strategies`` may include ``"scratch"`` (same architecture, random weights). Every arm gets
    the same learning-rate search (``trials``, chosen on a ``validation_fraction`` of its rows;
    ``storage`` shares it through an Optuna database); see ``adaptkit.judge.compare.compare`` for the
    output folder and the verdict's rules.
    """
    from adaptkit.judge.compare import compare as _compare

    return _compare(recipe, strategies, seeds=seeds, sizes=sizes, **options)

"""The session: a recipe resolved once into what every command needs.

``run``, ``plan``, ``advise``, ``compare`` each used to rebuild the same chain — recipe ->
registry -> task -> data -> model source -> processor -> base model -> wrap context -> learning
rate — with small differences that were bugs waiting (``advise`` wrapped without the pre-flight;
"the recipe's rate or the strategy's default" was decided in four places). Here each link is
decided once, typed, and lazily: ``plan`` never tokenizes, ``run`` never loads data twice.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from adaptkit.errors import AdaptkitError, PreflightError
from adaptkit.recipe.loading import load_recipe
from adaptkit.recipe.schema import Recipe

if TYPE_CHECKING:
    import datasets
    import torch

    from adaptkit.engine.data import Splits
    from adaptkit.engine.models import ModelSource
    from adaptkit.plugin.registry import Registry
    from adaptkit.plugin.strategy import DistributedSetting, Strategy, WrapContext
    from adaptkit.plugin.task import Task

RecipeLike = Union[Recipe, str, Path, dict]


def as_recipe(recipe: RecipeLike) -> Recipe:
    """A ``Recipe`` from a recipe, a YAML path or a dict (validated like a file, errors with key paths)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    return load_recipe(recipe)


def strategy_for(registry: "Registry", recipe: Recipe, name: Optional[str] = None, options: Any = None) -> "Strategy":
    """The one place the rule lives: the recipe's own strategy (``name`` None or the recipe's) gets the
    recipe's options; another strategy gets ``options`` or its defaults. ``Session.strategy`` and
    ``adaptkit predict`` (which rebuilds a finished run without a session) both ask here."""
    name = name or recipe.strategy.name
    if options is None and name == recipe.strategy.name:
        options = recipe.strategy_options
    return registry.strategies[name](options)


class Session:
    """Everything a command builds from one recipe, each piece resolved once when first asked for.

    Built eagerly: the registry, the task (with ``setup`` on the training split, which learns the
    label set), the data splits and the model source — cheap, and what every command needs.
    Built lazily: the processor (tokenizer) and the preprocessed splits, which ``plan`` skips.
    """

    def __init__(self, recipe: RecipeLike, log: Callable[[str], None] = print):
        from adaptkit.engine.data import load_splits
        from adaptkit.engine.models import quiet_hf_logging
        from adaptkit.engine.stacking import check_task_fits, resolve_base_source, run_folder
        from adaptkit.plugin.registry import get_registry

        quiet_hf_logging()
        self.recipe: Recipe = as_recipe(recipe)
        self.log = log
        self.registry: Registry = get_registry()
        self.task: Task = self.registry.tasks[self.recipe.task.type](self.recipe.task_options)
        self.strategy_cls: type[Strategy] = self.registry.strategies[self.recipe.strategy.name]
        self.splits: Splits = load_splits(self.recipe, self.task.required_columns(),
                                          stratify_column=self.task.label_column(),
                                          label_rules=self.task.label_rules())
        self.task.setup(self.splits.train)
        section = self.recipe.model
        folder = run_folder(section.name)
        if folder is not None:  # a finished run as the base: its task must fit this recipe's
            if section.config is not None:
                raise AdaptkitError(f"{self.recipe.where('model', 'config')}: model.config builds a model from a config "
                                    f"and would ignore the run {folder} that model.name names; remove one of them")
            check_task_fits(folder, self.task, self.recipe.where("model", "name"))
        # previous_adapter: keep trains beside the run's adapter, loaded frozen onto the model it started from
        self.kept_run: Optional[Path] = folder if section.previous_adapter == "keep" else None
        self.source: Optional[ModelSource] = (resolve_base_source(section.name, section.revision, section.allow_pickle,
                                                                  section.trust_remote_code, section.previous_adapter)
                                              if section.name else None)

    # ------------------------------------------------------------------ data

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The task's processor (a tokenizer, or an image processor), saved beside every export."""
        return self.task.load_processor(self.recipe, self.source)

    @functools.cached_property
    def train_data(self) -> "datasets.Dataset":
        return self.task.preprocess(self.splits.train, self.tokenizer)

    @functools.cached_property
    def eval_data(self) -> "datasets.Dataset":
        return self.task.preprocess(self.splits.eval, self.tokenizer)

    @functools.cached_property
    def validation_data(self) -> "Optional[datasets.Dataset]":
        """Rows carved from train (``data.validation_fraction``) that pick the best epoch and stop early."""
        if self.splits.validation is None:
            return None
        return self.task.preprocess(self.splits.validation, self.tokenizer)

    def eval_batches(self, rows: int, batch_size: int) -> list[dict]:
        """The first ``rows`` eval rows collated in batches as evaluation forms them (real data, real padding)."""
        collate = self.task.collate(self.tokenizer)
        count = min(rows, len(self.eval_data))
        return [collate([self.eval_data[i] for i in range(start, min(start + batch_size, count))])
                for start in range(0, count, batch_size)]

    @property
    def sequence_length(self) -> int:
        """Tokens per row the plan and the cost estimates assume: the task's limit, else 512."""
        return self.task.sequence_length() or 512

    # ------------------------------------------------------------------ strategies and models

    def strategy(self, name: Optional[str] = None, options: Any = None) -> "Strategy":
        """A strategy instance: the recipe's own with the recipe's options, another with ``options`` or its defaults;
        with ``model.previous_adapter: keep``, made to train beside the base run's frozen adapter."""
        chosen = strategy_for(self.registry, self.recipe, name, options)
        if self.kept_run is not None:
            from adaptkit.engine.stacking import keep_beside

            chosen = keep_beside(chosen, self.kept_run)
        return chosen

    @functools.cached_property
    def config(self) -> Any:
        """The model's config (no weights read)."""
        from adaptkit.engine.models import load_config

        return load_config(self.recipe, self.source)

    def build_base(self, strategy: "Optional[Strategy]" = None, seed: Optional[int] = None,
                   random_init: bool = False) -> "torch.nn.Module":
        """The task model with real weights (or the same architecture at random: ``random_init``).

        ``strategy`` may load the base its own way (qlora: quantized to 4-bit by from_pretrained).
        """
        from adaptkit.engine.models import build_model

        recipe = self.recipe
        if random_init:
            recipe = recipe.model_copy(deep=True)
            recipe.model.init = "random"
        return build_model(recipe, self.task, self.tokenizer, self.source,
                           self.recipe.training.seed if seed is None else seed,
                           strategy=strategy if strategy is not None else self.strategy())

    @contextlib.contextmanager
    def on_meta_device(self) -> Iterator[None]:
        """Models built (and wrapped) inside are on the meta device, in the recipe's load dtype: their
        sizes and what a strategy adds, without reading or allocating a weight."""
        from accelerate import init_empty_weights

        from adaptkit.engine.models import default_dtype, load_dtype

        with init_empty_weights(), default_dtype(load_dtype(self.recipe, self.config)):
            yield

    def build_meta(self) -> "torch.nn.Module":
        """The task model from its config; call inside ``on_meta_device`` (wrap it there too)."""
        return self.task.build_model("", copy.deepcopy(self.config), True,
                                     trust_remote_code=self.recipe.model.trust_remote_code)

    def context(self, model: "torch.nn.Module", distributed: "Optional[DistributedSetting]" = None,
                total_steps: Optional[int] = None) -> "WrapContext":
        """What a strategy is told about the model it wraps: type, task, head modules, distributed setting
        (typed; ``extra["distributed"]`` keeps its text for plugins that read it there) and, when the
        caller knows it, the run's optimizer steps (``planned_steps``)."""
        from adaptkit.plugin.strategy import WrapContext

        return WrapContext(model_type=getattr(model.config, "model_type", "unknown"), task=self.task.name,
                           head_modules=self.task.head_modules(model), peft_task_type=self.task.peft_task_type,
                           extra={"distributed": str(distributed) if distributed is not None else None},
                           distributed=distributed, total_steps=total_steps)

    def planned_steps(self, rows: Optional[int] = None) -> int:
        """The optimizer steps a run of this recipe takes on ``rows`` training rows (default: the
        preprocessed training split, the rows the loop counts), from ``adaptkit.engine.budget`` as the
        loop computes them: what ``WrapContext.total_steps`` tells a strategy."""
        from adaptkit.engine.budget import budget_for

        return budget_for(len(self.train_data) if rows is None else rows, self.recipe.training).total_steps

    def learning_rate(self, strategy: "Strategy", context: "WrapContext") -> float:
        """The recipe's ``training.learning_rate`` for the recipe's strategy when given; else the strategy's
        suggestion for this model (asked before ``wrap``). The one place this rule lives."""
        given = self.recipe.training.learning_rate
        if given and strategy.name == self.recipe.strategy.name:
            return given
        return strategy.suggest_learning_rate(context)

    def wrap(self, strategy: "Strategy", base: "torch.nn.Module", context: "WrapContext") -> "torch.nn.Module":
        """Pre-flight, ``strategy.wrap`` and the architecture check right after it (``wrap_checked``)."""
        return wrap_checked(strategy, base, context)

# ---------------------------------------------------------------------------- the run's central step

def preflight(strategy: Any, context: Any) -> None:
    """Refuse, before any weight is read, combinations a strategy cannot run.

    The core refuses options the strategy declares meaningful only with a task head
    (``Strategy.head_options``) when they are set and the task model has none; the strategy's own
    ``preflight(context)`` may refuse more (bitsandbytes missing, FSDP).
    ``context.distributed`` is ``distributed.distributed_setting``.
    """
    options = getattr(strategy, "options", None)
    for option in getattr(strategy, "head_options", ()):
        if option in getattr(options, "model_fields_set", ()) and not context.head_modules:
            raise PreflightError(f"strategy {strategy.name!r}: option {option} does not apply to task "
                                 f"{context.task!r}: its {context.model_type} model has no task head (the output "
                                 f"layer follows the vocabulary, not the task); remove {option} from the recipe")
    check = getattr(strategy, "preflight", None)
    if callable(check):
        check(context)


def wrap_checked(strategy: Any, model: Any, context: Any) -> Any:
    """``preflight``, ``strategy.wrap``, then the architecture right after it.

    A failure inside wrap names the combination that failed. A wrap that returns no model, or
    changes the task head's shape, is a ``ContractViolation`` naming the strategy's plugin and
    distribution (``contract.check_wrapped``), here, before anything trains, instead of a shape
    error or an ``AttributeError`` on ``None`` later in the run.
    """
    from adaptkit.plugin.contract import check_wrapped, head_shapes

    preflight(strategy, context)
    heads = head_shapes(model, context.head_modules)
    try:
        wrapped = strategy.wrap(model, context)
    except AdaptkitError:
        raise
    except Exception as exc:
        from adaptkit.plugin.registry import blame, get_registry, mark_plugin_named

        message = str(exc).splitlines()[0] if str(exc) else ""
        found = blame(exc)  # the plugin whose code raised, and where
        owner = found[0] if found else get_registry().plugin_for("strategy", strategy.name)
        where = f" ({owner.describe()}{f', in {found[1]}' if found else ''})" if owner else ""
        raise mark_plugin_named(PreflightError(
            f"strategy {strategy.name!r} cannot be applied to this {context.model_type} model for task "
            f"{context.task!r} (peft task type {context.peft_task_type}): its wrap failed with "
            f"{type(exc).__name__}: {message}. This combination is not supported{where}; choose another "
            f"strategy (adaptkit plan RECIPE --all shows which ones plan on this model)")) from exc
    check_wrapped(strategy, wrapped, heads)
    return wrapped

"""``adaptkit.run``: recipe in, verified output folder out.

The order is the contract's: record the base signature and outputs, wrap, train, verify
frozen weights, save, reload what was saved with the standard tools, unwrap, verify the
architecture and the merged outputs. Any broken promise stops the run before the output
folder appears, with the rule and the parameter named.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from adaptkit.errors import AdaptkitError
from adaptkit.recipe.schema import Recipe
from adaptkit.recipe.loading import load_recipe

# The merged model is compared with the trained one on this many real eval rows, in batches of
# at most EQUIVALENCE_BATCH: several batches (so padding and lengths vary) at a bounded cost.
EQUIVALENCE_ROWS = 64
EQUIVALENCE_BATCH = 16
# ... and fewer batches when their logits are large (a causal LM's vocabulary): at most ~256 MB held.
EQUIVALENCE_MAX_VALUES = 64 * 2**20


@dataclass
class RunResult:
    """What ``adaptkit.run`` returns: where the outputs are and the figures in metrics.json."""

    output_dir: Path
    metrics: dict[str, Any]

    @property
    def eval(self) -> dict[str, float]:
        return self.metrics["eval"]


def _as_recipe(recipe: Union[Recipe, str, Path, dict]) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    return load_recipe(recipe)


class Session:
    """Everything one run builds once: plugins, task, data, tokenizer, model factory."""

    def __init__(self, recipe: Recipe, log: Callable[[str], None] = print):
        from adaptkit.engine.data import load_splits
        from adaptkit.engine.models import quiet_hf_logging, resolve_model_source
        from adaptkit.plugin.registry import get_registry

        quiet_hf_logging()
        self.recipe = recipe
        self.log = log
        registry = get_registry()
        self.registry = registry
        self.task = registry.tasks[recipe.task.type](recipe.task_options)
        self.strategy_cls = registry.strategies[recipe.strategy.name]
        required = self.task.required_columns()
        label_column = getattr(recipe.task_options, "label_column", None)
        self.splits = load_splits(recipe, required, stratify_column=label_column)
        self.task.setup(self.splits.train)
        section = recipe.model
        self.source = (resolve_model_source(section.name, section.revision, section.allow_pickle)
                       if section.name else None)
        self.tokenizer = self.task.load_processor(recipe, self.source)
        self.train_data = self.task.preprocess(self.splits.train, self.tokenizer)
        self.eval_data = self.task.preprocess(self.splits.eval, self.tokenizer)
        # data.validation_fraction: rows carved from train that pick the best epoch and stop early
        self.validation_data = (self.task.preprocess(self.splits.validation, self.tokenizer)
                                if self.splits.validation is not None else None)

    def build_base(self):
        from adaptkit.engine.models import build_model

        # the strategy may load the base its own way (qlora: quantized to 4-bit by from_pretrained)
        return build_model(self.recipe, self.task, self.tokenizer, self.source, self.recipe.training.seed,
                           strategy=self.strategy_cls(self.recipe.strategy_options))

    def eval_batches(self, rows: int, batch_size: int) -> list[dict]:
        """The first ``rows`` eval rows collated in batches as evaluation forms them (real data, real padding)."""
        collate = self.task.collate(self.tokenizer)
        count = min(rows, len(self.eval_data))
        return [collate([self.eval_data[i] for i in range(start, min(start + batch_size, count))])
                for start in range(0, count, batch_size)]


def equivalence_batches(session: "Session") -> list[dict]:
    """Real eval batches for the contract's output comparisons (equivalence, export), capped for cost."""
    size = min(EQUIVALENCE_BATCH, session.recipe.training.eval_batch_size)
    return session.eval_batches(EQUIVALENCE_ROWS, size)


def run(recipe: Union[Recipe, str, Path, dict], overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, resume: bool = False) -> RunResult:
    """Train the recipe's strategy, enforce the contract, and write the output folder (see ``_run``).

    The run holds ``<output.dir>.lock`` from start to end, so a second run into the same folder
    is refused (with the holder's PID) instead of interleaving files; only the plugins the
    recipe's ``plugins:`` list allows are loaded; and an unexpected exception raised inside a
    plugin's code becomes a ``PluginError`` that names the plugin and its distribution.
    """
    import contextlib
    import os

    from adaptkit.errors import ContractViolation
    from adaptkit.engine.outputs import run_lock
    from adaptkit.plugin.registry import blame, for_recipe, get_registry, plugin_error

    recipe = _as_recipe(recipe)
    main_process = int(os.environ.get("RANK", "0") or 0) == 0  # one lock per run, not per launched process
    with (run_lock(Path(recipe.output.dir)) if main_process else contextlib.nullcontext()), \
            for_recipe(recipe):
        try:
            return _run(recipe, overwrite=overwrite, progress=progress, log=log, resume=resume)
        except ContractViolation as exc:
            owner = get_registry().plugin_for("strategy", exc.strategy)
            if owner is not None and "(distribution " not in str(exc):
                exc.args = (f"{exc} [strategy from plugin {owner.name!r}, distribution {owner.distribution} "
                            f"{owner.version}]",)
            raise
        except AdaptkitError as exc:
            cause = exc.__cause__  # an error adaptkit wrapped (e.g. a failing wrap): name the plugin too
            found = blame(cause) if cause is not None and not isinstance(cause, AdaptkitError) else None
            if found is not None and "(distribution " not in str(exc):
                exc.args = (f"{exc} [raised in plugin {found[0].name!r} (distribution {found[0].distribution} "
                            f"{found[0].version}), in {found[1]}]",)
            raise
        except Exception as exc:
            named = plugin_error(exc)
            if named is None:
                raise
            raise named from exc


def _run(recipe: Union[Recipe, str, Path, dict], overwrite: bool = False, progress: bool = True,
         log: Callable[[str], None] = print, resume: bool = False) -> RunResult:
    """Train the recipe's strategy, enforce the contract, and write the output folder.

    Checkpoints go to ``<output.dir>.checkpoints/`` during the run (see ``adaptkit.engine.checkpoint``)
    and are removed once the output folder is in place; ``resume`` continues the newest
    complete one after building and wrapping the model exactly once.
    """
    from adaptkit import __version__
    from adaptkit.engine.budget import budget_for, too_short
    from adaptkit.engine.checkpoint import plan_checkpoints
    from adaptkit.plugin.contract import (FrozenWeights, architecture_signature, check_close, check_equivalence,
                                   check_removal, check_signature, model_outputs, reload_export,
                                   removal_reference, trained_head_state)
    from adaptkit.engine.models import full_precision_reference
    from adaptkit.engine.planning import distributed_setting, plan_of_model, render_text, setup_line, wrap_checked
    from adaptkit.engine.outputs import check_output_dir, staged_output, write_json
    from adaptkit.engine.report import model_card
    from adaptkit.plugin.strategy import WrapContext
    from adaptkit.engine.train import fit, make_accelerator, peak_memory_bytes

    recipe = _as_recipe(recipe)
    output_dir = Path(recipe.output.dir)
    check_output_dir(output_dir, overwrite)
    wall_started = time.perf_counter()
    checkpoints = plan_checkpoints(recipe, output_dir, overwrite, resume)
    session = Session(recipe, log)
    strategy = session.strategy_cls(recipe.strategy_options)
    name = strategy.name
    logs_dir = checkpoints.root / "logs"
    accelerator = make_accelerator(recipe.training, log, logging_dir=logs_dir, distributed=recipe.distributed,
                                   base_dir=recipe.base_dir())

    base = session.build_base()
    head = session.task.head_modules(base)
    context = WrapContext(model_type=getattr(base.config, "model_type", "unknown"), task=session.task.name,
                          head_modules=head, peft_task_type=session.task.peft_task_type,
                          extra={"distributed": distributed_setting(recipe, accelerator.num_processes)})
    base_signature = architecture_signature(full_precision_reference(base))  # a 4-bit base: its fp architecture
    probes = equivalence_batches(session)
    # Rule 4 (removal) compares with what the base computes before wrap on these same probes: kept
    # for a non-mergeable strategy only, on the main process, capped like the wrapped outputs.
    base_class = type(base)
    removal = (removal_reference(base, probes, head, EQUIVALENCE_MAX_VALUES)
               if not strategy.mergeable and accelerator.is_main_process else [])
    # The plan, on the model this run built anyway: combination checks and target resolution
    # (wrap_checked) stop a run that cannot work before any training, and the table is logged.
    setup = setup_line(strategy, context, recipe.training.mixed_precision)
    model = wrap_checked(strategy, base, context)
    planned = plan_of_model(recipe, name, model, base.config, setup)
    if accelerator.is_main_process:
        log(render_text(planned))
    parameters = {"trainable": planned.strategies[0].trainable, "total": planned.strategies[0].total}
    if parameters["trainable"] == 0:
        raise AdaptkitError(f"strategy {name!r} left no parameter trainable on this model; check its options")
    frozen = FrozenWeights.snapshot(model)
    learning_rate = recipe.training.learning_rate or strategy.default_learning_rate
    if accelerator.is_main_process:
        log(f"{name}: {parameters['trainable']:,} of {parameters['total']:,} parameters trainable "
            f"({100 * parameters['trainable'] / parameters['total']:.2f}%), lr {learning_rate:g}, "
            f"{len(session.train_data)} train / {len(session.eval_data)} eval rows")
    session.registry.manager.hook.adaptkit_on_event(event="run_start", payload={"recipe": recipe.resolved_dict()})

    budget = budget_for(len(session.train_data), recipe.training)
    if accelerator.is_main_process:
        log(f"budget: {budget.describe()}")
        warning = too_short(budget)
        if warning:
            log(f"warning: {warning}")
    selection = session.validation_data if session.validation_data is not None else session.eval_data
    result = fit(model, strategy, session.task, session.train_data, selection, session.tokenizer,
                 recipe.training, accelerator, learning_rate, progress=progress,
                 on_epoch_end=lambda epoch, metrics: session.registry.manager.hook.adaptkit_on_event(
                     event="epoch_end", payload={"epoch": epoch, "metrics": metrics}),
                 checkpoints=checkpoints,
                 on_checkpoint=lambda path, step: session.registry.manager.hook.adaptkit_on_event(
                     event="checkpoint", payload={"path": path, "step": step}),
                 tracker_config=recipe.resolved_dict())
    validation_metrics = None
    if session.validation_data is not None:  # fit chose on validation rows; the eval set is scored once, here
        from adaptkit.engine.train import eval_loader, evaluate

        validation_metrics = result.final_metrics
        collate = session.task.collate(session.tokenizer)
        size = -(-recipe.training.eval_batch_size // accelerator.num_processes) * accelerator.num_processes
        result.final_metrics = evaluate(model, accelerator.prepare(eval_loader(session.eval_data, size, collate)),
                                        accelerator, session.task)
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # contract checks run in fp32
    peak = peak_memory_bytes(accelerator.device)
    model = model.cpu() if accelerator.device.type != "cpu" else model
    contract: list[str] = []
    frozen.verify(name, model)
    contract.append(f"frozen: {len(frozen)} frozen parameter tensors bit-identical after training")
    wrapped_outs = []
    for batch in probes:  # kept until the merge is checked: stop once the logits held reach the cap
        wrapped_outs.append(model_outputs(model, batch))
        if sum(out.numel() for out in wrapped_outs) >= EQUIVALENCE_MAX_VALUES:
            break
    probes = probes[:len(wrapped_outs)]

    if not accelerator.is_main_process:
        return RunResult(output_dir, {})
    from adaptkit.engine.models import merge_tolerance

    tolerance = merge_tolerance(strategy, model)  # wider on a bf16/fp16 base: merged weights are rounded to it
    with staged_output(output_dir, overwrite) as staging:
        export_dir = staging / ("adapter" if strategy.export_kind == "adapter" else "model")
        strategy.save(model, export_dir)
        if recipe.output.verify_export:
            # reloaded as a user would, with plain transformers / peft, not the strategy's own load()
            reloaded, how = reload_export(strategy, export_dir, session.build_base, base_class,
                                          trust_remote_code=recipe.model.trust_remote_code)
            for index, batch in enumerate(probes):
                check_close(name, "export", wrapped_outs[index], model_outputs(reloaded, batch),
                            tolerance, f"the {strategy.export_kind} saved in {export_dir.name}/ "
                                                      f"and reloaded with {how}, on eval batch {index + 1}")
            contract.append(f"export: {export_dir.name}/ reloads with {how} and gives the same outputs")
            del reloaded
        trained_head = trained_head_state(model, head) if strategy.mergeable else {}
        unwrapped = strategy.unwrap(model)
        check_signature(name, base_signature, architecture_signature(unwrapped), head)
        contract.append("signature: unwrapped model has exactly the base architecture "
                        f"({len(base_signature.parameters)} parameter tensors)")
        if strategy.mergeable:
            check_equivalence(name, wrapped_outs, unwrapped, probes, tolerance, trained_head)
            contract.append(f"equivalence: merged model matches the trained model within {tolerance:g} "
                            f"on {sum(len(next(iter(b.values()))) for b in probes)} eval rows, head included")
            if recipe.output.merge and strategy.export_kind == "adapter":
                unwrapped.save_pretrained(staging / "model", safe_serialization=True)
        else:
            check_removal(name, removal, unwrapped, probes[:len(removal)], head)
            contract.append(f"removal: with the strategy removed the model computes bit-exactly what the base "
                            f"computed before wrap{' below the task head' if head else ''}, on "
                            f"{sum(len(next(iter(b.values()))) for b in probes[:len(removal)])} eval rows")
            if recipe.output.merge:
                log(f"output.merge: strategy {name!r} cannot be merged into the base weights; only its "
                    f"{strategy.export_kind} is saved")
        session.tokenizer.save_pretrained(staging / "tokenizer")
        from adaptkit.engine.publish import finish_exports, model_hub_id

        base_model_id = model_hub_id(recipe.model.name, session.source)  # what loads elsewhere, never a path
        finish_exports([staging / "adapter", staging / "model"], session.tokenizer, base_model_id)
        if logs_dir.is_dir():  # copied, not moved: a failure from here on can still --resume
            shutil.copytree(logs_dir, staging / "logs")

        summary = {
            "adaptkit_version": __version__,
            "strategy": name,
            "task": session.task.name,
            "task_state": session.task.state(),
            "base_model": session.source.location if session.source else None,
            "base_model_id": base_model_id,
            "model_class": type(unwrapped).__name__,
            "num_labels": getattr(unwrapped.config, "num_labels", None),
            "eval": result.final_metrics,
            "validation": validation_metrics,
            "budget": {"total_steps": budget.total_steps, "epochs": budget.epochs, "source": budget.source},
            "history": result.history,
            "loss_curve": result.loss_curve,
            "best": {k: v for k, v in result.best.items() if k not in ("path", "since")},
            "exported_epoch": result.best.get("epoch") if result.loaded_best else len(result.history),
            "stopped_early_after_epoch": result.stopped_early,
            "resumed_from_step": result.resumed_from_step,
            "parameters": parameters,
            "train_examples": len(session.train_data),
            "eval_examples": len(session.eval_data),
            "validation_examples": len(session.validation_data) if session.validation_data is not None else 0,
            "history_split": "validation" if session.validation_data is not None else "eval",
            "eval_source": session.splits.eval_source,
            "learning_rate": learning_rate,
            "steps": result.steps,
            "train_seconds": round(result.train_seconds, 3),
            "train_examples_per_second": round(result.train_examples / result.train_seconds, 2)
            if result.train_seconds else None,
            "wall_seconds": round(time.perf_counter() - wall_started, 3),
            "peak_memory_bytes": peak,
            "device": str(accelerator.device),
            "export": {"kind": strategy.export_kind, "path": str(output_dir / export_dir.name),
                       "loader": strategy.export_loader},
            "contract": contract,
            "recipe": recipe.resolved_dict(),
        }
        write_json(staging / "metrics.json", summary)
        (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe.resolved_dict(), sort_keys=False))
        (staging / "README.md").write_text(model_card(summary))
    shutil.rmtree(checkpoints.root, ignore_errors=True)  # the run is complete: nothing left to resume
    session.registry.manager.hook.adaptkit_on_event(event="run_end", payload={"metrics": summary,
                                                                             "output_dir": str(output_dir)})
    if recipe.output.push_to_hub:  # the folder is complete and stays so whether or not the upload works
        from adaptkit.engine.publish import push

        try:
            plan = push(output_dir, recipe.output.push_to_hub, private=recipe.output.hub_private)
        except AdaptkitError as exc:
            raise AdaptkitError(f"the run finished and is in {output_dir}, but output.push_to_hub failed: {exc}. "
                                f"Push it later with: adaptkit push {output_dir} {recipe.output.push_to_hub}") from None
        log(f"pushed {len(plan.files)} files to {plan.url}")
    return RunResult(output_dir, summary)

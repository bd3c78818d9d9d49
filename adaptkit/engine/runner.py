"""``adaptkit.run``: recipe in, verified output folder out.

The order is the contract's: record the base signature and outputs, wrap, train, verify
frozen weights, save, reload what was saved with the standard tools, unwrap, verify the
architecture and the merged outputs. Any broken promise stops the run before the output
folder appears, with the rule and the parameter named.

The layer below is imported once, at the top. The contract's comparisons, the evaluation and the card
are called through their modules (``contract.model_outputs``, ``train.evaluate``, ``report.model_card``),
so the fault-injection tests that replace them on the module reach this code too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from adaptkit._version import __version__
from adaptkit.engine import report, train
from adaptkit.engine.budget import budget_for, too_short
from adaptkit.engine.checkpoint import plan_checkpoints
from adaptkit.engine.device import mixed_precision
from adaptkit.engine.models import full_precision_reference, merge_tolerance
from adaptkit.engine.outputs import (check_output_dir, check_output_location, record_checkpoint_logs,
                                     remove_checkpoint_dir, run_lock, staged_output, write_json)
from adaptkit.engine.planning import distributed_setting, plan_of_model, render_text, setup_line
from adaptkit.engine.publish import finish_exports, model_hub_id, push
from adaptkit.engine.session import RecipeLike, Session, as_recipe
from adaptkit.engine.stacking import chain_comment, chain_of
from adaptkit.errors import AdaptkitError, ContractViolation
from adaptkit.plugin import contract
from adaptkit.plugin.contract import (FrozenWeights, architecture_signature, check_close, check_equivalence,
                                      shared_parameters,
                                      check_removal, check_signature, reload_export, removal_reference,
                                      trained_head_state)
from adaptkit.plugin.registry import blame, get_registry, name_plugin, plugin_error, recipe_plugins

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


def equivalence_batches(session: "Session") -> list[dict]:
    """Real eval batches for the contract's output comparisons (equivalence, export), capped for cost."""
    size = min(EQUIVALENCE_BATCH, session.recipe.training.eval_batch_size)
    return session.eval_batches(EQUIVALENCE_ROWS, size)


def run(recipe: RecipeLike, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, resume: bool = False) -> RunResult:
    """Train the recipe's strategy, enforce the contract, and write the output folder (see ``_run``).

    The run holds ``<output.dir>.lock`` from start to end, so a second run into the same folder
    is refused (with the holder's PID) instead of interleaving files; only the plugins the
    recipe's ``plugins:`` list allows are loaded; and an unexpected exception raised inside a
    plugin's code becomes a ``PluginError`` that names the plugin and its distribution.
    """

    recipe = as_recipe(recipe)
    check_output_location(Path(recipe.output.dir))  # before the lock beside it is made, and any work
    main_process = int(os.environ.get("RANK", "0") or 0) == 0  # one lock per run, not per launched process
    with (run_lock(Path(recipe.output.dir)) if main_process else contextlib.nullcontext()), \
            recipe_plugins(recipe):
        try:
            return _run(recipe, overwrite=overwrite, progress=progress, log=log, resume=resume)
        except ContractViolation as exc:
            owner = get_registry().plugin_for("strategy", exc.strategy)
            name_plugin(exc, f"strategy from {owner.describe()}" if owner is not None else "")
            raise
        except AdaptkitError as exc:
            cause = exc.__cause__  # an error adaptkit wrapped (e.g. a failing wrap): name the plugin too
            found = blame(cause) if cause is not None and not isinstance(cause, AdaptkitError) else None
            name_plugin(exc, f"raised in {found[0].describe()}, in {found[1]}" if found is not None else "")
            raise
        except Exception as exc:
            named = plugin_error(exc)
            if named is None:
                raise
            raise named from exc


@dataclass
class _Prepared:
    """The wrapped model and what the contract checks compare it with, recorded before training."""

    strategy: Any
    model: Any
    context: Any
    base_class: type
    base_signature: Any
    probes: list[dict]
    removal: list[Any]
    frozen: Any
    parameters: dict[str, int]
    learning_rate: float


@dataclass
class _Trained:
    """The trained model (unwrapped from accelerate, in fp32 on the CPU) and what training reported."""

    model: Any
    result: Any
    budget: Any
    validation_metrics: Any
    peak: int
    wrapped_outs: list[Any]
    probes: list[dict]


def _run(recipe: RecipeLike, overwrite: bool = False, progress: bool = True,
         log: Callable[[str], None] = print, resume: bool = False) -> RunResult:
    """Train the recipe's strategy, enforce the contract, and write the output folder.

    Checkpoints go to ``<output.dir>.checkpoints/`` during the run (see ``adaptkit.engine.checkpoint``)
    and are removed once the output folder is in place; ``resume`` continues the newest
    complete one after building and wrapping the model exactly once. The steps: prepare (build,
    record the base, wrap, plan), train, verify and export, summarise.
    """

    recipe = as_recipe(recipe)
    output_dir = Path(recipe.output.dir)
    check_output_dir(output_dir, overwrite, kind="run")
    wall_started = time.perf_counter()
    checkpoints = plan_checkpoints(recipe, output_dir, overwrite, resume)
    session = Session(recipe, log)
    logs_dir = checkpoints.root / "logs"
    accelerator = train.make_accelerator(recipe.training, log, logging_dir=logs_dir, distributed=recipe.distributed,
                                   base_dir=recipe.base_dir())
    prepared = _prepare(session, accelerator)
    trained = _train(session, prepared, accelerator, checkpoints, progress)
    if not accelerator.is_main_process:
        return RunResult(output_dir, {})
    with staged_output(output_dir, overwrite, kind="run") as staging:
        accelerator.free_memory()  # the optimizer and accelerate's model references: not needed to export
        contract_lines, export_dir, described, base_model_id = _verify_and_export(session, prepared, trained, staging)
        if logs_dir.is_dir():  # copied, not moved: a failure from here on can still --resume
            shutil.copytree(logs_dir, staging / "logs")
        summary = _summary(session, prepared, trained, accelerator, contract_lines, output_dir / export_dir.name,
                           described, base_model_id, time.perf_counter() - wall_started)
        write_json(staging / "metrics.json", summary)
        from adaptkit.engine.checkpoint import save_task_state  # Task.training_state is kept with the run too
        save_task_state(session.task, staging)
        (staging / "recipe.yaml").write_text(chain_comment(summary["chain"])  # a run as base: the chain, as comments
                                             + yaml.safe_dump(recipe.resolved_dict(), sort_keys=False))
        card = report.model_card(summary, recipe.base_dir())  # paths relative to the recipe
        (staging / "README.md").write_text(card)
    # The run is complete: nothing left to resume. Its trackers' files are recorded first (the folder
    # held none of the user's when the run started), and only recorded files and checkpoints are removed.
    record_checkpoint_logs(checkpoints.root)
    remove_checkpoint_dir(checkpoints.root)
    session.registry.manager.hook.adaptkit_on_event(event="run_end", payload={"metrics": summary,
                                                                             "output_dir": str(output_dir)})
    if recipe.output.push_to_hub:  # the folder is complete and stays so whether or not the upload works
        _push(output_dir, recipe, log)
    return RunResult(output_dir, summary)


def _prepare(session: Session, accelerator: Any) -> _Prepared:
    """Build the base, record what the contract compares with, wrap (pre-flight included) and plan."""

    recipe, log = session.recipe, session.log
    strategy = session.strategy()
    base = session.build_base(strategy)
    # the run's real optimizer steps, for a strategy that schedules over them (AdaLoRA's total_step)
    context = session.context(base, distributed_setting(recipe, accelerator.num_processes),
                              total_steps=session.planned_steps())
    base_signature = architecture_signature(full_precision_reference(base))  # a 4-bit base: its fp architecture
    # ...but its ties as loaded: the weightless reference of a composite model (a captioner) is built from
    # the config, where the decoder's embedding and output layer may not be tied as from_pretrained ties them
    base_signature = dataclasses.replace(base_signature, shared=shared_parameters(base))
    probes = equivalence_batches(session)
    # Rule 4 (removal) compares with what the base computes before wrap on these same probes: kept
    # for a non-mergeable strategy only, on the main process, capped like the wrapped outputs.
    removal = (removal_reference(base, probes, context.head_modules, EQUIVALENCE_MAX_VALUES)
               if not strategy.mergeable and accelerator.is_main_process else [])
    learning_rate = session.learning_rate(strategy, context)
    # The plan, on the model this run built anyway: combination checks and target resolution
    # (the pre-flight in session.wrap) stop a run that cannot work before any training.
    setup = setup_line(strategy, context, mixed_precision(recipe.training))
    base_class = type(base)
    model = session.wrap(strategy, base, context)
    planned = plan_of_model(session, strategy, model, base.config, setup)
    if accelerator.is_main_process:
        log(render_text(planned))
    parameters = {"trainable": planned.strategies[0].trainable, "total": planned.strategies[0].total}
    if parameters["trainable"] == 0:
        raise AdaptkitError(f"strategy {strategy.name!r} left no parameter trainable on this model; check its options")
    frozen = FrozenWeights.snapshot(model)
    if accelerator.is_main_process:
        log(f"{strategy.name}: {parameters['trainable']:,} of {parameters['total']:,} parameters trainable "
            f"({100 * parameters['trainable'] / parameters['total']:.2f}%), lr {learning_rate:g}, "
            f"{len(session.train_data)} train / {len(session.eval_data)} eval rows")
    return _Prepared(strategy, model, context, base_class, base_signature, probes, removal, frozen, parameters,
                     learning_rate)


def _train(session: Session, prepared: _Prepared, accelerator: Any, checkpoints: Any, progress: bool) -> _Trained:
    """Train under the budget, score the eval set once when a validation split chose the epoch, and keep
    the trained model's outputs on the probes (the export and merge are compared with them)."""

    recipe, log, hook = session.recipe, session.log, session.registry.manager.hook
    hook.adaptkit_on_event(event="run_start", payload={"recipe": recipe.resolved_dict()})
    budget = budget_for(len(session.train_data), recipe.training)
    if accelerator.is_main_process:
        log(f"budget: {budget.describe()}")
        warning = too_short(budget)
        if warning:
            log(f"warning: {warning}")
    selection = session.validation_data if session.validation_data is not None else session.eval_data
    model = prepared.model
    result = train.fit(model, prepared.strategy, session.task, session.train_data, selection, session.tokenizer,
                 recipe.training, accelerator, prepared.learning_rate, progress=progress,
                 on_epoch_end=lambda epoch, metrics: hook.adaptkit_on_event(
                     event="epoch_end", payload={"epoch": epoch, "metrics": metrics}),
                 checkpoints=checkpoints,
                 on_checkpoint=lambda path, step: hook.adaptkit_on_event(
                     event="checkpoint", payload={"path": path, "step": step}),
                 tracker_config=recipe.resolved_dict())
    validation_metrics = None
    if session.validation_data is not None:  # fit chose on validation rows; the eval set is scored once, here
        validation_metrics = result.final_metrics
        collate = session.task.collate(session.tokenizer)
        size = -(-recipe.training.eval_batch_size // accelerator.num_processes) * accelerator.num_processes
        loader = accelerator.prepare(train.eval_loader(session.eval_data, size, collate))
        result.final_metrics = train.evaluate(model, loader, accelerator, session.task)
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # contract checks run in fp32
    peak = train.peak_memory_bytes(accelerator.device)
    model = model.cpu() if accelerator.device.type != "cpu" else model
    prepared.frozen.verify(prepared.strategy.name, model)
    wrapped_outs = []
    # kept until the merge is checked (main process only: it alone exports); stop once the logits reach the cap
    for batch in prepared.probes if accelerator.is_main_process else []:
        wrapped_outs.append(contract.model_outputs(model, batch))
        if sum(out.numel() for out in wrapped_outs) >= EQUIVALENCE_MAX_VALUES:
            break
    return _Trained(model, result, budget, validation_metrics, peak, wrapped_outs, prepared.probes[:len(wrapped_outs)])


def _verify_and_export(session: Session, prepared: _Prepared, trained: _Trained, staging: Path
                       ) -> tuple[list[str], Path, dict[str, Any], Any]:
    """Save the export, unwrap and check the contract's rules, then reload the export with the standard tools.

    Never two full models at once (a 7B model must not need twice its memory to be verified): the
    trained model is unwrapped (merged) in place and checked against the outputs kept from training,
    the merged copy saved if asked, and only then — with the trained model, its optimizer and
    accelerate's references released — is the saved export loaded onto a fresh base and compared
    with the same outputs. Returns the contract lines, the export folder, what the summary records
    of the unwrapped model, and the base model's Hub id.
    """

    recipe, log = session.recipe, session.log
    strategy, model, name = prepared.strategy, trained.model, prepared.strategy.name
    head, probes, wrapped_outs = prepared.context.head_modules, trained.probes, trained.wrapped_outs
    contract_lines = [f"frozen: {len(prepared.frozen)} frozen parameter tensors bit-identical after training"]
    tolerance = merge_tolerance(strategy, model)  # wider on a bf16/fp16 base: merged weights are rounded to it
    export_dir = staging / ("adapter" if strategy.export_kind == "adapter" else "model")
    strategy.save(model, export_dir)
    trained_head = trained_head_state(model, head) if strategy.mergeable else {}
    unwrapped = strategy.unwrap(model)
    check_signature(name, prepared.base_signature, architecture_signature(unwrapped), head)
    signature_line = ("signature: unwrapped model has exactly the base architecture "
                      f"({len(prepared.base_signature.parameters)} parameter tensors)")
    if strategy.mergeable:
        check_equivalence(name, wrapped_outs, unwrapped, probes, tolerance, trained_head)
        merge_line = (f"equivalence: merged model matches the trained model within {tolerance:g} "
                      f"on {sum(len(next(iter(b.values()))) for b in probes)} eval rows, head included")
        if recipe.output.merge and strategy.export_kind == "adapter":
            unwrapped.save_pretrained(staging / "model", safe_serialization=True)
    else:
        removal = prepared.removal
        check_removal(name, removal, unwrapped, probes[:len(removal)], head)
        merge_line = (f"removal: with the strategy removed the model computes bit-exactly what the base "
                      f"computed before wrap{' below the task head' if head else ''}, on "
                      f"{sum(len(next(iter(b.values()))) for b in probes[:len(removal)])} eval rows")
        if recipe.output.merge:
            log(f"output.merge: strategy {name!r} cannot be merged into the base weights; only its "
                f"{strategy.export_kind} is saved")
    described = {"model_class": type(unwrapped).__name__, "num_labels": getattr(unwrapped.config, "num_labels", None)}
    # From here the trained model is no longer needed: release every reference before a second one loads.
    del model, unwrapped, trained_head
    prepared.model = trained.model = None
    gc.collect()
    if recipe.output.verify_export:
        # reloaded as a user would, with plain transformers / peft, not the strategy's own load()
        reloaded, how = reload_export(strategy, export_dir, session.build_base, prepared.base_class,
                                      trust_remote_code=recipe.model.trust_remote_code, task=session.task)
        for index, batch in enumerate(probes):
            check_close(name, "export", wrapped_outs[index], contract.model_outputs(reloaded, batch),
                        tolerance, f"the {strategy.export_kind} saved in {export_dir.name}/ "
                                   f"and reloaded with {how}, on eval batch {index + 1}")
        contract_lines.append(f"export: {export_dir.name}/ reloads with {how} and gives the same outputs")
        del reloaded
        gc.collect()
    contract_lines += [signature_line, merge_line]
    session.tokenizer.save_pretrained(staging / "tokenizer")
    base_model_id = model_hub_id(recipe.model.name, session.source)  # what loads elsewhere, never a path
    finish_exports([staging / "adapter", staging / "model"], session.tokenizer, base_model_id)
    return contract_lines, export_dir, described, base_model_id


def _summary(session: Session, prepared: _Prepared, trained: _Trained, accelerator: Any, contract_lines: list[str],
             export_path: Path, described: dict[str, Any], base_model_id: Any, wall_seconds: float) -> dict[str, Any]:
    """metrics.json: every figure of the run, the contract lines and the resolved recipe."""
    recipe, strategy, result, budget = session.recipe, prepared.strategy, trained.result, trained.budget
    return {
        "adaptkit_version": __version__,
        "strategy": strategy.name,
        "task": session.task.name,
        "task_state": session.task.state(),
        "task_notes": session.task.card_notes(),
        "base_model": session.source.location if session.source else None,
        "base_model_id": base_model_id,
        "model_class": described["model_class"],
        "num_labels": described["num_labels"],
        "eval": result.final_metrics,
        "validation": trained.validation_metrics,
        "budget": {"total_steps": budget.total_steps, "epochs": budget.epochs, "source": budget.source},
        "history": result.history,
        "loss_curve": result.loss_curve,
        "best": {k: v for k, v in result.best.items() if k not in ("path", "since")},
        "exported_epoch": result.best.get("epoch") if result.loaded_best else len(result.history),
        "stopped_early_after_epoch": result.stopped_early,
        "resumed_from_step": result.resumed_from_step,
        "parameters": prepared.parameters,
        "train_examples": len(session.train_data),
        "eval_examples": len(session.eval_data),
        "validation_examples": len(session.validation_data) if session.validation_data is not None else 0,
        "history_split": "validation" if session.validation_data is not None else "eval",
        "eval_source": session.splits.eval_source,
        "learning_rate": prepared.learning_rate,
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 3),
        "train_examples_per_second": round(result.train_examples / result.train_seconds, 2)
        if result.train_seconds else None,
        "wall_seconds": round(wall_seconds, 3),
        "peak_memory_bytes": trained.peak,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,  # what the run computed in (training.mixed_precision resolved)
        "export": {"kind": strategy.export_kind, "path": str(export_path), "loader": strategy.export_loader},
        "contract": contract_lines,
        "chain": chain_of(session.source),  # base -> run A -> ... when model.name is a finished run
        "recipe": recipe.resolved_dict(),
    }


def _push(output_dir: Path, recipe: Any, log: Callable[[str], None]) -> None:
    """``output.push_to_hub``: upload the finished folder; a failure says how to push it later."""

    try:
        plan = push(output_dir, recipe.output.push_to_hub, private=recipe.output.hub_private)
    except AdaptkitError as exc:
        raise AdaptkitError(f"the run finished and is in {output_dir}, but output.push_to_hub failed: {exc}. "
                            f"Push it later with: adaptkit push {output_dir} {recipe.output.push_to_hub}") from None
    log(f"pushed {len(plan.files)} files to {plan.url}")

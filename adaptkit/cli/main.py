"""The ``adaptkit`` command: parse arguments, call the library, print. Nothing else lives here.

Each command imports the library layer it calls inside its own function: ``adaptkit --help``,
``validate``, ``schema`` and ``plugins`` answer without importing torch (tests/test_cli.py).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from adaptkit._version import __version__
from adaptkit.cli.parser import build_parser
from adaptkit.errors import AdaptkitError, RunInterrupted
from adaptkit.plugin.registry import get_strategy, list_plugins, list_strategies


WIDE = 160  # rich's width when stdout is neither a terminal nor given COLUMNS: a file keeps whole rows


def _console():
    """A rich console as wide as the terminal (or ``COLUMNS``), so tables are laid out to fit instead
    of wrapping; output to a file or pipe, where no width is known, gets ``WIDE`` columns."""
    from rich.console import Console

    known = sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit()
    return Console(width=None if known else WIDE)


def _cmd_advise(args) -> int:
    from adaptkit.judge.advise import advise, default_output, render
    from adaptkit.judge.compare import parse_list
    from adaptkit.engine.outputs import check_output_file, write_output_file
    from adaptkit.judge.compare_checks import check_advise_arguments
    from adaptkit.recipe.loading import load_recipe

    check_advise_arguments(max_feature_rows=args.max_rows, probe_steps=args.probe_steps)
    recipe = load_recipe(args.recipe)
    output = Path(args.output) if args.output else default_output(recipe)
    check_output_file(output, args.overwrite)  # a folder or a run's own file is refused even with --overwrite
    report = advise(recipe, strategies=parse_list(args.strategies), probe_steps=args.probe_steps,
                    max_feature_rows=args.max_rows, power_watts=args.power_watts,
                    grid_g_per_kwh=args.grid_intensity, log=lambda line: print(line, file=sys.stderr))
    console = _console()
    for part in render(report):
        console.print(part)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_output_file(output, json.dumps(report.to_dict(), indent=2, default=str) + "\n", overwrite=args.overwrite)
    print(f"wrote {output}")
    return 0


def _cmd_compare(args) -> int:
    from adaptkit.judge.compare import compare, parse_list
    from adaptkit.judge.compare_checks import check_compare_arguments
    from adaptkit.recipe.loading import load_recipe

    rates = {}
    for item in args.lr:
        name, _, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise AdaptkitError(f"--lr expects NAME=RATE, got {item!r}") from None
    strategies, seeds, sizes = parse_list(args.strategies), parse_list(args.seeds, int), parse_list(args.sizes, int)
    check_compare_arguments(seeds=seeds, sizes=sizes, learning_rates=rates, trials=args.trials,  # before any work
                            validation_fraction=args.validation_fraction, bootstrap_rounds=args.bootstrap,
                            storage=args.storage, strategies=strategies, edge_rates=args.edge_rates)
    recipe = load_recipe(args.recipe)
    report = compare(recipe, strategies, seeds=seeds,
                     sizes=sizes, output_dir=args.output, overwrite=args.overwrite,
                     **({"scratch_strategy": args.scratch_strategy} if args.scratch_strategy else {}),
                     learning_rates=rates, power_watts=args.power_watts,
                     grid_g_per_kwh=args.grid_intensity, bootstrap_rounds=args.bootstrap,
                     log=lambda line: print(line, file=sys.stderr), trials=args.trials,
                     validation_fraction=args.validation_fraction, storage=args.storage, study_name=args.study_name,
                     baselines=[] if args.baselines == "none" else parse_list(args.baselines),
                     max_minutes=args.max_minutes, edge_rates=args.edge_rates)
    print((report.output_dir / "table.md").read_text())
    print(f"outputs: {report.output_dir} (compare.json, table.md, compare.png, report.html)")
    return 0


def _cmd_run(args) -> int:
    from adaptkit.engine.distributed import launch_requested

    if launch_requested(args.num_processes, args.num_machines):
        return _launch_run(args)
    from adaptkit.engine.runner import run

    result = run(args.recipe, overwrite=args.overwrite, progress=not args.no_progress, resume=args.resume)
    metrics = result.metrics
    if metrics:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items())
        print(f"done in {metrics['wall_seconds']:.0f} s: {figures}")
        print(f"outputs: {result.output_dir}")
    return 0


def _launch_run(args) -> int:
    """``run`` with several processes: the same command again, under accelerate's launcher."""
    from adaptkit.engine.distributed import check_backend_available, check_global_batch, launch
    from adaptkit.recipe.loading import load_recipe

    recipe = load_recipe(args.recipe)  # a broken recipe fails here once, not in every process
    num_processes = args.num_processes or (args.num_machines or 1)
    check_global_batch(recipe.training, num_processes)
    check_backend_available(recipe.distributed)
    run_args = [flag for flag, on in (("--overwrite", args.overwrite), ("--no-progress", args.no_progress),
                                      ("--resume", args.resume)) if on]
    return launch(args.recipe, run_args, num_processes, num_machines=args.num_machines or 1,
                  machine_rank=args.machine_rank, main_process_ip=args.main_process_ip,
                  main_process_port=args.main_process_port, mixed_precision=launcher_precision(recipe.training))


def launcher_precision(training) -> str:
    """The launcher's ``--mixed_precision``: ``auto`` is resolved by each launched process on its own
    device (``make_accelerator``; an explicit precision there wins over the launcher's), so "no" here."""
    return "no" if training.mixed_precision == "auto" else training.mixed_precision


def _cmd_validate(args) -> int:
    from adaptkit.recipe.loading import load_recipe

    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: valid ({recipe.task.type}, strategy {recipe.strategy.name}, "
          f"output {recipe.output.dir})")
    return 0


def _cmd_plan(args) -> int:
    from adaptkit.engine.planning import plan, render
    from adaptkit.recipe.loading import load_recipe

    recipe = load_recipe(args.recipe)
    names = sorted(list_strategies()) if args.all else (args.strategies.split(",") if args.strategies else None)
    if names:
        for name in names:
            get_strategy(name)  # an unknown name is an error that suggests the closest one
    result = plan(recipe, names, strict=False)  # the table first, then the error
    _console().print(render(result))
    result.raise_for_recipe_strategy()  # what would stop `adaptkit run` stops the plan too (exit 2)
    return 0


def _cmd_schema(args) -> int:
    from adaptkit.cli.editor import builtin_schema, editor_schema, schema_text

    text = schema_text(builtin_schema() if args.builtin else editor_schema())
    if args.output:
        from adaptkit.engine.outputs import write_output_file

        write_output_file(args.output, text, overwrite=args.overwrite)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_completion(args) -> int:
    from adaptkit.cli.editor import completion_script

    sys.stdout.write(completion_script(args.shell, build_parser()))
    return 0


def _cmd_plugins(args) -> int:
    if args.check is not None:
        return _check_plugins(args)
    plugins = list_plugins()
    upstream = {name: cls.upstream for name, cls in list_strategies().items() if getattr(cls, "upstream", "")}
    if args.json:
        print(json.dumps([{**vars(p), "upstream": {s: upstream[s] for s in p.strategies if s in upstream}}
                          for p in plugins], indent=2))
        return 0
    from rich.table import Table

    table = Table("plugin", "distribution", "version", "provides", "status")
    for plugin in plugins:
        sources = sorted({upstream[s] for s in plugin.strategies if s in upstream})  # "peft 0.21.2": where they come from
        provides = ", ".join([*(f"strategy:{s}" for s in plugin.strategies), *(f"task:{t}" for t in plugin.tasks),
                              *(f"baseline:{b}" for b in plugin.baselines),
                              *(h.replace("adaptkit_", "") for h in plugin.hooks
                                if h not in ("adaptkit_register_strategies", "adaptkit_register_tasks",
                                             "adaptkit_register_baselines"))])
        if sources:
            provides += f" (from {', '.join(sources)})"
        table.add_row(plugin.name, plugin.distribution, plugin.version, provides,
                      f"[red]error: {plugin.error}[/red]" if plugin.error else "ok")
    _console().print(table)
    return 0


def _check_plugins(args) -> int:
    """``adaptkit plugins --check``: pass/fail per strategy; broken plugins fail too; exit 1 on any failure."""
    from adaptkit.plugin.conformance import check_installed  # the conformance kit imports torch

    names = [n.strip() for n in args.check.split(",") if n.strip()] or None
    broken = [p for p in list_plugins() if p.error] if names is None else []  # listed names: just those
    results = check_installed(names)
    if args.json:
        print(json.dumps({"strategies": [vars(r) for r in results],
                          "broken_plugins": [vars(p) for p in broken]}, indent=2))
    else:
        for result in results:
            print(f"{'PASS' if result.passed else 'FAIL'}  {result.strategy}  "
                  f"(plugin {result.plugin}, distribution {result.distribution}): {result.detail}")
        for plugin in broken:
            print(f"FAIL  plugin {plugin.name}  (distribution {plugin.distribution} {plugin.version}): {plugin.error}")
        failed = sum(not r.passed for r in results) + len(broken)
        print(f"{len(results) - sum(not r.passed for r in results)} of {len(results)} strategies pass"
              + (f"; {failed} failure(s)" if failed else ""))
    return 1 if any(not r.passed for r in results) or broken else 0


def _cmd_predict(args) -> int:
    from adaptkit.engine.predict import predict_file
    from adaptkit.engine.serving import predict_files

    outputs = args.output or [str(Path(run) / "predictions.csv") for run in args.run_dir]
    if len(args.run_dir) == 1 and len(args.input) == 1 and len(outputs) == 1:
        counts = [predict_file(args.run_dir[0], args.input[0], outputs[0], overwrite=args.overwrite,
                               trust_remote_code=args.trust_remote_code)]
    else:  # one base, each run's adapter switched in for its own input
        counts = predict_files(args.run_dir, args.input, outputs, overwrite=args.overwrite,
                               trust_remote_code=args.trust_remote_code)
    for count, output in zip(counts, outputs):
        print(f"wrote {count} predictions to {output}")
    return 0


def _cmd_merge(args) -> int:
    from adaptkit.engine.merge import merge_runs

    result = merge_runs(args.runs, args.method, args.output, weights=args.weights, density=args.density,
                        eval_file=args.eval_file, overwrite=args.overwrite)
    print(f"merged {len(args.runs)} runs by {args.method} into {result.output_dir}")
    for line in result.summary.get("contract", []):
        print(f"  ok  {line}")
    if result.metrics:
        print(f"eval on {args.eval_file}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    return 0


def _cmd_push(args) -> int:
    from adaptkit.engine.publish import push

    plan = push(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run)
    if args.dry_run:
        print(f"dry run: {len(plan.files)} files of {plan.run_dir} would go to {plan.repo_id}"
              f" ({'private' if plan.private else 'public'}):")
        print("\n".join(f"  {name}" for name in plan.files))
        meta = {k: plan.card.get(k) for k in ("base_model", "library_name", "pipeline_tag") if plan.card.get(k)}
        print("card metadata valid: " + ", ".join(f"{k} {v}" for k, v in meta.items()))
    else:
        print(f"pushed {len(plan.files)} files to {plan.url}")
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


COMMANDS = {"advise": _cmd_advise, "compare": _cmd_compare, "run": _cmd_run, "validate": _cmd_validate, "plan": _cmd_plan, "schema": _cmd_schema, "plugins": _cmd_plugins,
            "predict": _cmd_predict, "push": _cmd_push, "completion": _cmd_completion, "merge": _cmd_merge}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the command is, so that ``finally`` blocks run as for Ctrl-C: the
    output lock file is removed and a half-written output folder cleaned away. During training
    ``adaptkit.engine.train`` takes SIGTERM over and stops at the next step with a checkpoint instead."""


def _raise_terminated(signum, frame) -> None:
    _quiet_on_the_way_out()
    raise Terminated()


def _quiet_on_the_way_out() -> None:
    """Keep libraries from printing the interruption as an error: optuna logs the exception that
    ends a trial, with its whole traceback, at WARNING before re-raising it, so SIGTERM during
    ``compare`` showed a traceback above ``terminated (SIGTERM)``. The process is ending anyway."""
    if "optuna" in sys.modules:
        logging.getLogger("optuna").setLevel(logging.CRITICAL)


def _on_sigterm() -> Optional[object]:
    """Make SIGTERM raise ``Terminated`` while a command runs; returns the handler to put back, or
    None when it is left alone (not the main thread, or a program embedding adaptkit set its own)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command. Exit codes: 0 done, 1 a check failed (``plugins --check``), 2 an error
    (message on stderr), 130 Ctrl-C, 143 SIGTERM (both after a checkpoint when training)."""
    args = build_parser().parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if args.command is None:
        build_parser().print_help()
        return 2
    previous = _on_sigterm()
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except BrokenPipeError:
        # `adaptkit plugins --json | head -1`: the reader is gone, which is not an error of ours.
        # stdout is pointed at /dev/null so that the interpreter's final flush stays quiet too.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, as a shell reports a program a closed pipe ended
    except AdaptkitError as exc:
        if isinstance(exc, RunInterrupted) and args.command == "run":
            print(f"{exc}:\n  adaptkit run {args.recipe} --resume", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        hint = (f"; if it wrote checkpoints, continue with: adaptkit run {args.recipe} --resume"
                if args.command == "run" else "")
        terminated = isinstance(exc, Terminated)
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

"""The ``adaptkit`` command: parse arguments, call the library, print. Nothing else lives here."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from adaptkit.errors import AdaptkitError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptkit", description="Transfer learning from one YAML recipe.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="train a recipe and write its output folder")
    run.add_argument("recipe")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    validate = commands.add_parser("validate", help="check a recipe without training (no torch import)")
    validate.add_argument("recipe")

    plan = commands.add_parser("plan", help="trainable parameters, touched modules and memory, before training")
    plan.add_argument("recipe")
    plan.add_argument("--strategies", help="comma-separated strategies to plan (default: the recipe's)")
    plan.add_argument("--all", action="store_true", help="plan every installed strategy")

    commands.add_parser("schema", help="print the recipe JSON Schema (installed plugins included)")

    plugins = commands.add_parser("plugins", help="list installed plugins, their strategies and errors")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    predict = commands.add_parser("predict", help="predict with a finished run")
    predict.add_argument("run_dir")
    predict.add_argument("--input", required=True, help="CSV/TSV/JSON/JSONL/Parquet rows")
    predict.add_argument("--output", help="where to write predictions (default: predictions.csv in run_dir)")
    return parser


def _cmd_run(args) -> int:
    from adaptkit.runner import run

    result = run(args.recipe, overwrite=args.overwrite, progress=not args.no_progress)
    metrics = result.metrics
    if metrics:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items())
        print(f"done in {metrics['wall_seconds']:.0f} s: {figures}")
        print(f"outputs: {result.output_dir}")
    return 0


def _cmd_validate(args) -> int:
    from adaptkit.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: valid ({recipe.task.type}, strategy {recipe.strategy.name}, "
          f"output {recipe.output.dir})")
    return 0


def _cmd_plan(args) -> int:
    from rich.console import Console

    from adaptkit import list_strategies
    from adaptkit.plan import plan, render
    from adaptkit.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    names = sorted(list_strategies()) if args.all else (args.strategies.split(",") if args.strategies else None)
    if names:
        from adaptkit import get_strategy

        for name in names:
            get_strategy(name)  # an unknown name is an error that suggests the closest one
    Console(width=200).print(render(plan(recipe, names)))
    return 0


def _cmd_schema(args) -> int:
    from adaptkit.recipe import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_plugins(args) -> int:
    from adaptkit import list_plugins

    plugins = list_plugins()
    if args.json:
        print(json.dumps([vars(p) for p in plugins], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("plugin", "distribution", "version", "provides", "status")
    for plugin in plugins:
        provides = ", ".join([*(f"strategy:{s}" for s in plugin.strategies), *(f"task:{t}" for t in plugin.tasks),
                              *(h.replace("adaptkit_", "") for h in plugin.hooks
                                if h not in ("adaptkit_register_strategies", "adaptkit_register_tasks"))])
        table.add_row(plugin.name, plugin.distribution, plugin.version, provides,
                      f"[red]error: {plugin.error}[/red]" if plugin.error else "ok")
    Console(width=160).print(table)
    return 0


def _cmd_predict(args) -> int:
    from pathlib import Path

    from adaptkit.predict import predict_file

    output = args.output or str(Path(args.run_dir) / "predictions.csv")
    count = predict_file(args.run_dir, args.input, output)
    print(f"wrote {count} predictions to {output}")
    return 0


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "plan": _cmd_plan, "schema": _cmd_schema, "plugins": _cmd_plugins,
            "predict": _cmd_predict}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from adaptkit import __version__

        print(__version__)
        return 0
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except AdaptkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``adaptkit`` command line: its commands and options, apart from what runs them (``main``),
so that ``editor``'s completion scripts read the same parser without importing ``main``."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """Every command and option of ``adaptkit`` (main runs it; completion scripts are generated from it)."""
    parser = argparse.ArgumentParser(prog="adaptkit", description="Transfer learning from one YAML recipe.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="train a recipe and write its output folder")
    run.add_argument("recipe")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest complete checkpoint in <output.dir>.checkpoints/")
    scale = run.add_argument_group("several processes or machines (through accelerate launch)")
    scale.add_argument("--num-processes", type=int, default=None, metavar="N",
                       help="processes on all machines together (GPUs, or CPU processes over gloo); "
                            "training.batch_size stays the global batch")
    scale.add_argument("--num-machines", type=int, default=None, metavar="M", help="machines taking part (default 1)")
    scale.add_argument("--machine-rank", type=int, default=0, metavar="R", help="this machine's rank, 0 to M-1")
    scale.add_argument("--main-process-ip", default=None, metavar="IP", help="address of the machine of rank 0")
    scale.add_argument("--main-process-port", type=int, default=None, metavar="PORT",
                       help="port on the machine of rank 0 (default: a free one; 29500 across machines)")

    validate = commands.add_parser("validate", help="check a recipe without training (no torch import)")
    validate.add_argument("recipe")

    plan = commands.add_parser("plan", help="trainable parameters, touched modules and memory, before training")
    plan.add_argument("recipe")
    plan.add_argument("--strategies", help="comma-separated strategies to plan (default: the recipe's)")
    plan.add_argument("--all", action="store_true", help="plan every installed strategy")

    schema = commands.add_parser("schema", help="print the recipe JSON Schema (installed plugins included), "
                                                "with $schema, titles and descriptions for editors")
    schema.add_argument("--builtin", action="store_true",
                        help="adaptkit's own strategies and tasks only (what recipes/adaptkit.schema.json holds)")
    schema.add_argument("--output", metavar="FILE", help="write it to FILE instead of printing it")
    schema.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

    completion = commands.add_parser("completion", help="print a shell completion script "
                                                        "(eval \"$(adaptkit completion bash)\")")
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])

    plugins = commands.add_parser("plugins", help="list installed plugins, their strategies and errors")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("--check", nargs="?", const="", metavar="STRATEGY,...",
                         help="run the conformance kit (adaptkit.plugin.conformance.check_strategy) on every installed "
                              "strategy, or on the listed ones; exit 1 if any fails")

    predict = commands.add_parser("predict", help="predict with a finished run")
    predict.add_argument("run_dir", nargs="+",
                         help="a run folder; several peft runs on one base share it, their adapters switched per "
                              "input (the i-th --input is predicted by the i-th run)")
    predict.add_argument("--input", required=True, action="append", help="CSV/TSV/JSON/JSONL/Parquet rows; once per run")
    predict.add_argument("--output", action="append",
                         help="where to write predictions, once per run (default: predictions.csv in each run_dir)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    predict.add_argument("--trust-remote-code", action="store_true",
                         help="let the run's own code run (a tokenizer's auto_map, the model repository's code); "
                              "never allowed by the run folder itself")
    push = commands.add_parser("push", help="upload a finished run to the Hugging Face Hub (adaptkit.engine.publish.push)")
    push.add_argument("run_dir")
    push.add_argument("repo_id", help="model repo, owner/name (created if absent)")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--dry-run", action="store_true",
                      help="check the run and its card and list the files that would be uploaded; no network")
    _add_merge_command(commands)
    _add_transfer_commands(commands)
    return parser


def _add_merge_command(commands) -> None:
    """``adaptkit merge``: one adapter from several runs on the same base (adaptkit.engine.merge)."""
    merge = commands.add_parser("merge", help="merge the adapters of several runs on the same base into one run "
                                              "folder (peft add_weighted_adapter)")
    merge.add_argument("runs", nargs="+", metavar="RUN", help="run folders (two or more) on the same base")
    merge.add_argument("--method", required=True,
                       choices=["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"],
                       help="peft's combination type")
    merge.add_argument("--weights", type=float, nargs="+", help="one weight per run (default 1 each)")
    merge.add_argument("--density", type=float,
                       help="share of each adapter's values kept (ties, dare_linear, dare_ties, magnitude_prune)")
    merge.add_argument("--output", required=True, help="the run folder to write")
    merge.add_argument("--eval", dest="eval_file", help="labelled rows to evaluate the merged adapter on")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing --output run folder")


def _add_transfer_commands(commands) -> None:
    """``advise`` and ``compare``: does transfer pay on this data? (adaptkit.judge.advise, adaptkit.judge.compare)"""
    advise = commands.add_parser("advise", help="before training: data suitability, transferability "
                                                "(LogME, linear probe vs random weights) and cost per strategy")
    advise.add_argument("recipe")
    advise.add_argument("--output", help="JSON report path (default: <output.dir>-advice.json)")
    advise.add_argument("--overwrite", action="store_true", help="replace an existing JSON report")
    advise.add_argument("--strategies", help="comma-separated strategies to judge (default: every installed one)")
    advise.add_argument("--max-rows", type=int, default=500, help="training rows used for LogME and the probe")
    advise.add_argument("--probe-steps", type=int, default=1,
                        help="1: time one real optimizer step per strategy and trace its FLOPs; 0: no timing")
    advise.add_argument("--power-watts", type=float, help="power draw for energy figures (default: RAPL or 15 W/core)")
    advise.add_argument("--grid-intensity", type=float, help="gCO2e per kWh (default 475, world average)")

    compare = commands.add_parser("compare", help="train several strategies and a from-scratch baseline; "
                                                  "table, plot, HTML report and a transfer verdict")
    compare.add_argument("recipe")
    compare.add_argument("--strategies", required=True,
                         help="comma-separated strategies; 'scratch' = same architecture from random weights; "
                              "a baseline's name (adaptkit plugins) chooses that baseline")
    compare.add_argument("--baselines", help="comma-separated baselines trained without pretraining, or 'none' "
                                             "(default: every installed one that serves the task)")
    compare.add_argument("--seeds", help="comma-separated seeds (default: the recipe's)")
    compare.add_argument("--sizes", help="comma-separated training-set sizes for a learning curve")
    compare.add_argument("--output", help="output folder (default: <output.dir>-compare)")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    compare.add_argument("--scratch-strategy", default=None,
                         help="strategy that trains the random-weight baseline (default: full)")
    compare.add_argument("--lr", action="append", default=[], metavar="NAME=RATE",
                         help="centre one arm's learning-rate search on RATE (repeatable), e.g. --lr scratch=3e-4")
    compare.add_argument("--trials", type=int, default=3,
                         help="learning rates tried per arm, log-spaced around its suggestion (1: no search)")
    compare.add_argument("--validation-fraction", type=float, default=0.2,
                         help="share of each arm's rows held out to choose the learning rate and epoch")
    compare.add_argument("--storage", help="Optuna storage URL (e.g. sqlite:///sweep.db, postgresql://...) shared "
                                           "by several compare processes; the output folder must be shared too")
    compare.add_argument("--study-name", help="prefix of the Optuna study names (default: from the recipe)")
    compare.add_argument("--edge-rates", type=int, default=2,
                         help="learning rates tried past an end of the grid where an arm's best rate lies, one grid "
                              "step at a time (0: the grid only)")
    compare.add_argument("--max-minutes", type=float, help="fit the estimate printed before training into this many "
                                                            "minutes by trying fewer learning rates per arm")
    compare.add_argument("--power-watts", type=float, help="power draw for energy figures (default: RAPL or 15 W/core)")
    compare.add_argument("--grid-intensity", type=float, help="gCO2e per kWh (default 475, world average)")
    compare.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")

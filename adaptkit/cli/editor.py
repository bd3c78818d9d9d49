"""Editor and shell habits: a recipe JSON Schema editors can use, and shell completion.

``editor_schema`` is ``adaptkit.recipe.schema.json_schema`` made for editors: ``$schema``, a title and a
description on every key (the yaml-language-server shows them on hover and completes values).
``SCHEMA_FILE`` is that schema for adaptkit's own strategies and tasks, committed so that
recipes/*.yaml can point at it with a modeline; ``adaptkit schema --builtin --output FILE``
regenerates it and a test keeps it current.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from adaptkit.cli.parser import build_parser
from adaptkit.errors import AdaptkitError
from adaptkit.plugin.registry import restricted_to
from adaptkit.recipe.schema import json_schema

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "recipes" / "adaptkit.schema.json"
MODELINE = "# yaml-language-server: $schema=./adaptkit.schema.json"

# Keys whose pydantic field carries no description of its own (adaptkit/recipe/schema.py, first-party options).
DESCRIPTIONS = {
    "data": "Where the examples are: train and eval files or folders, splits, column renames.",
    "model": "The pretrained model to adapt: a Hub id, a local folder, or a config to build from.",
    "output": "Where the run's folder goes, what is exported, and whether it is pushed to the Hub.",
    "strategy": "How the model is adapted: the strategy's name and its options.",
    "task": "What the model learns: the task type and its columns and options.",
    "training": "How to train: budget, batch sizes, optimizer, precision, checkpoints, trackers.",
    "max_eval_samples": "Use only this many eval rows (seeded).",
    "backward_prefetch": "FSDP: prefetch the next parameters during the backward pass (BACKWARD_PRE or BACKWARD_POST).",
    "forward_prefetch": "FSDP: prefetch the next parameters during the forward pass.",
    "state_dict_type": "FSDP: how weights are gathered when saved (full on rank 0, or sharded).",
    "revision": "Hub revision (branch, tag or commit) of model.name.",
    "dir": "The run's output folder (relative to the working directory); written aside and renamed into place.",
    "batch_size": "Rows per optimizer step across all processes (the global batch).",
    "device": "auto: the GPU when there is one; cpu: always the CPU.",
    "epochs": "Passes over the training rows (raised when training.min_steps asks for more steps).",
    "eval_batch_size": "Rows per evaluation batch.",
    "compile": "torch.compile the training forward: compilation takes minutes on a CPU, so it pays on long runs only.",
    "gradient_accumulation_steps": "Batches summed before each optimizer step.",
    "max_grad_norm": "Clip the gradient norm to this value before each step; null: no clipping.",
    "mixed_precision": "no, fp16 (GPU only), bf16, or auto (bf16 where the device computes it natively: Ampere+ GPUs, "
                       "CPUs with AMX; else fp32): compute in reduced precision through accelerate.",
    "scheduler": "Learning-rate schedule after warmup: linear decay, cosine, or constant.",
    "warmup_ratio": "Share of the optimizer steps spent warming the learning rate up from 0.",
    "weight_decay": "AdamW weight decay on matrices (biases and norms get none).",
    "label_separator": "Separator between labels in one cell (multi-label rows).",
}


def _describe(properties: dict[str, Any], defs: dict[str, Any]) -> None:
    for key, prop in properties.items():
        prop.setdefault("title", key.replace("_", " ").capitalize())
        if prop.get("description"):
            continue
        target = prop.get("$ref") or next((item.get("$ref") for item in prop.get("anyOf", []) if "$ref" in item), None)
        referenced = defs.get(str(target).rsplit("/", 1)[-1], {}) if target else {}
        prop["description"] = (DESCRIPTIONS.get(key) or referenced.get("description")
                               or f"{prop['title']} (see the plugin's documentation).")


def editor_schema() -> dict[str, Any]:
    """The recipe JSON Schema with ``$schema``, a top-level title and description, and a title and
    description on every property of every object (plugins' options included)."""
    schema = json_schema()
    defs = schema.get("$defs", {})

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                _describe(node["properties"], defs)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return {"$schema": SCHEMA_DIALECT, "title": "adaptkit recipe",
            "description": "One YAML file for a transfer-learning run: model, task, data, strategy, training, "
                           "output (README.md, section Recipes).",
            **{k: v for k, v in schema.items() if k not in ("title", "description")}}


def builtin_schema() -> dict[str, Any]:
    """``editor_schema`` with only adaptkit's own plugins loaded: what ``SCHEMA_FILE`` holds,
    the same on every machine whatever else is installed."""
    with restricted_to([]):
        return editor_schema()


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


# ----------------------------------------------------------------------------- shell completion

def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[list[str], bool]]:
    """Each sub-command's option strings and whether it takes a file argument (from the parser itself)."""
    found: dict[str, tuple[list[str], bool]] = {"": ([o for a in parser._actions for o in a.option_strings], False)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = [o for a in sub._actions for o in a.option_strings]
                takes_file = any(not a.option_strings for a in sub._actions)
                found[name] = (options, takes_file)
    return found


def completion_script(shell: str, parser: Optional[argparse.ArgumentParser] = None) -> str:
    """A completion script for ``bash``, ``zsh`` or ``fish``: commands, each command's options, files.

    Hand-written on purpose: argcomplete and shtab are not dependencies of adaptkit (argcomplete also
    runs the program on every Tab, which imports torch for seconds). The script is generated from the
    live argparse parser, so a new command or option is completed without editing anything here.
    """
    if parser is None:
        parser = build_parser()
    commands = _commands(parser)
    names = sorted(n for n in commands if n)
    if shell == "bash":
        cases = "\n".join(f"        {name}) opts=\"{' '.join(commands[name][0])}\" ;;" for name in names)
        return f"""# adaptkit bash completion: eval "$(adaptkit completion bash)" (e.g. in ~/.bashrc)
_adaptkit() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" opts="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{' '.join(names)} {' '.join(commands[''][0])}" -- "$cur"))
        return
    fi
    case "$cmd" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _adaptkit adaptkit
"""
    if shell == "zsh":
        cases = "\n".join(f"        {name}) _arguments '*:file:_files' {' '.join(repr(o) for o in commands[name][0])} ;;"
                          for name in names)
        described = " ".join(f"'{name}'" for name in names)
        return f"""#compdef adaptkit
# adaptkit zsh completion: eval "$(adaptkit completion zsh)" (after compinit), or save as _adaptkit in $fpath
_adaptkit() {{
    local -a commands
    commands=({described})
    if (( CURRENT == 2 )); then
        _describe 'command' commands
        return
    fi
    case "$words[2]" in
{cases}
    esac
}}
compdef _adaptkit adaptkit
"""
    if shell == "fish":
        lines = ["# adaptkit fish completion: adaptkit completion fish > ~/.config/fish/completions/adaptkit.fish",
                 "complete -c adaptkit -f",
                 f"complete -c adaptkit -n __fish_use_subcommand -a '{' '.join(names)}'"]
        for name in names:
            options, takes_file = commands[name]
            if takes_file:
                lines.append(f"complete -c adaptkit -n '__fish_seen_subcommand_from {name}' -F")
            for option in options:
                flag = f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}"
                lines.append(f"complete -c adaptkit -n '__fish_seen_subcommand_from {name}' {flag}")
        return "\n".join(lines) + "\n"
    raise AdaptkitError(f"no completion for shell {shell!r}: choose bash, zsh or fish")

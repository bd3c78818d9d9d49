"""Editor and shell habits: the recipe schema for editors, the committed schema file and modelines,
shell completion, and output into a pipe that closes early."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from adaptkit.cli.editor import MODELINE, SCHEMA_DIALECT, SCHEMA_FILE, builtin_schema, completion_script, schema_text
from conftest import REPO


def _properties(node, path=""):
    """Every (path, property schema) of every object in a JSON Schema."""
    if isinstance(node, dict):
        for key, value in (node.get("properties") or {}).items():
            yield f"{path}.{key}", value
        for key, value in node.items():
            yield from _properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _properties(value, path)


def test_schema_has_dialect_and_a_title_and_description_on_every_key(capsys):
    from adaptkit.cli import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == SCHEMA_DIALECT and schema["title"] == "adaptkit recipe"
    found = list(_properties(schema))
    assert len(found) > 80
    lacking = [path for path, prop in found if not (prop.get("title") and prop.get("description"))]
    assert not lacking, lacking
    training = schema["$defs"]["TrainingSection"]["properties"]
    assert "global batch" in training["batch_size"]["description"]


def test_the_committed_schema_is_current_and_every_recipe_points_at_it():
    """Regenerate with: adaptkit schema --builtin --output recipes/adaptkit.schema.json --overwrite"""
    assert SCHEMA_FILE.read_text() == schema_text(builtin_schema()), (
        "recipes/adaptkit.schema.json is stale: run adaptkit schema --builtin --output recipes/adaptkit.schema.json "
        "--overwrite")
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert recipe.read_text().splitlines()[0] == MODELINE, f"{recipe.name} lacks the modeline"


def test_bash_completion_completes_commands_and_each_commands_options(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = tmp_path / "adaptkit.bash"
    script.write_text(completion_script("bash"))

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        out = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=(adaptkit {line}); "
                                            f"COMP_CWORD={len(words)}; _adaptkit; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
                             capture_output=True, text=True, cwd=tmp_path, check=True)
        return out.stdout.split()

    assert complete("p") == ["plan", "plugins", "predict", "push"]
    assert complete("push", "--d") == ["--dry-run"]
    assert complete("run", "--re") == ["--resume"]
    (tmp_path / "recipe.yaml").write_text("")
    assert complete("run", "reci") == ["recipe.yaml"]


def test_zsh_and_fish_scripts_name_every_command_and_option():
    from adaptkit.cli.parser import build_parser
    from adaptkit.cli.editor import _commands

    commands = _commands(build_parser())
    zsh, fish = completion_script("zsh"), completion_script("fish")
    assert zsh.startswith("#compdef adaptkit")
    for name, (options, _) in commands.items():
        if name:
            assert f"'{name}'" in zsh and f"__fish_seen_subcommand_from {name}" in fish
        for option in options:
            if option.startswith("--") and name:
                assert f"'{option}'" in zsh and f"-l {option[2:]}" in fish, (name, option)
    for shell, tool in (("zsh", "zsh"), ("fish", "fish")):
        if shutil.which(tool):  # syntax check where the shell is installed
            flag = "-n" if tool == "zsh" else "--no-execute"
            proc = subprocess.run([tool, flag, "/dev/stdin"], input=completion_script(shell), text=True,
                                  capture_output=True)
            assert proc.returncode == 0, (shell, proc.stderr)


def test_completion_of_an_unknown_shell_is_refused(capsys):
    from adaptkit.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["completion", "tcsh"])
    assert stopped.value.code == 2 and "invalid choice: 'tcsh'" in capsys.readouterr().err


def test_output_into_a_pipe_closed_early_ends_without_a_traceback():
    """`adaptkit plugins --json | head -1`: the reader closes before adaptkit writes."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    proc = subprocess.run([sys.executable, "-m", "adaptkit", "plugins", "--json"], stdout=write,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141

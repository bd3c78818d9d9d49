"""The command line: fast start-up, thin commands, clear failures."""
from __future__ import annotations

import json
import subprocess
import sys

from adaptkit.cli import main
from conftest import write_recipe


def test_help_answers_without_importing_torch():
    code = ("import sys; from adaptkit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
            "sys.exit(code if 'torch' not in sys.modules else 99)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "schema", "plugins", "predict"):
        assert command in done.stdout


def test_plugins_and_schema_do_not_import_torch():
    code = ("import sys, io, contextlib; from adaptkit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['plugins']); main(['schema'])\n"
            "sys.exit(0 if 'torch' not in sys.modules else 99)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_run_writes_a_complete_output_folder(tiny_recipe, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe("lora", training={"epochs": 1}))
    assert main(["run", str(recipe), "--no-progress"]) == 0
    out = tmp_path / "run"
    assert {"adapter", "metrics.json", "recipe.yaml", "README.md", "tokenizer"} <= {p.name for p in out.iterdir()}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["eval"]) >= {"accuracy", "macro_f1", "loss"}
    assert 0 < metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    assert "done in" in capsys.readouterr().out
    # a second run into the same folder is refused, and the first results survive
    assert main(["run", str(recipe), "--no-progress"]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert (out / "metrics.json").is_file()


def test_run_of_a_hub_id_offline_exits_2_with_advice(tiny_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tiny_recipe("full")
    recipe["model"] = {"name": "nobody/not-a-cached-model"}
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nobody/not-a-cached-model" in err and "cannot be reached" in err
    assert not (tmp_path / "run").exists()

"""The example third-party plugin is found through its entry point alone.

The distribution in plugins/example-plugin is installed with pip into a temporary target
folder (never into this environment), and adaptkit runs in subprocesses whose PYTHONPATH
adds that folder: the environment the other tests see is left exactly as it was. Every test
passes whether or not the user has also installed the example (``pip install -e
plugins/example-plugin``, as its guide says): nothing here assumes it is absent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_recipe_dict, write_recipe

EXAMPLE = REPO / "plugins" / "example-plugin"
ADAPTKIT = [sys.executable, "-m", "adaptkit"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """Environment variables for a subprocess that sees the example plugin installed."""
    target = tmp_path_factory.mktemp("example-plugin-site")
    build = tmp_path_factory.mktemp("example-plugin-src")
    # pip builds in place; build from a copy so no build/ or egg-info lands in the repository.
    import shutil

    source = build / "example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = dict(os.environ)
    env.pop("ADAPTKIT_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_main_distribution_does_not_ship_the_example():
    """adaptkit's own packages and entry points leave the example out; it is a distribution of its own.

    Asked of adaptkit's build configuration and installed metadata, not of ``import adaptkit_example``,
    which succeeds wherever a user has installed the example plugin.
    """
    from importlib import metadata

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    from setuptools import find_packages

    main = (REPO / "pyproject.toml").read_text()
    assert "adaptkit_example" not in main and "bitfit" not in main
    find = tomllib.loads(main)["tool"]["setuptools"]["packages"]["find"]
    shipped = {package for where in find["where"]
               for package in find_packages(where=str(REPO / where), include=find["include"])}
    assert {"adaptkit", "adaptkit_lora", "adaptkit_full"} <= shipped  # the check sees what adaptkit ships
    assert not any(package.startswith("adaptkit_example") for package in shipped), sorted(shipped)
    own = metadata.distribution("adaptkit").entry_points.select(group="adaptkit")
    assert "lora" in own.names and "bitfit" not in own.names
    assert not any(ep.value.startswith("adaptkit_example") for ep in own)


def test_adaptkit_plugins_lists_it(installed):
    done = subprocess.run([*ADAPTKIT, "plugins", "--json"], capture_output=True, text=True, env=installed,
                          cwd=REPO.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    assert "bitfit" in plugins, sorted(plugins)
    entry = plugins["bitfit"]
    assert entry["distribution"] == "adaptkit-example-plugin"
    assert entry["version"] == "0.1.0"
    assert entry["strategies"] == ["bitfit"]
    assert not entry.get("error")


def test_adaptkit_run_finds_it_through_the_entry_point(installed, tmp_path):
    recipe = tiny_recipe_dict(tmp_path, strategy="bitfit", training={"epochs": 1})
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    done = subprocess.run([*ADAPTKIT, "run", str(path)], capture_output=True, text=True, env=installed,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["strategy"] == "bitfit"
    parameters = metrics["parameters"]
    assert 0 < parameters["trainable"] < parameters["total"] / 5  # biases and head only
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert any(line.startswith("equivalence") for line in metrics["contract"])


def test_example_plugins_own_tests_pass(installed):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLE / "tests")], capture_output=True, text=True, env=installed,
                          cwd=EXAMPLE, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "15 passed" in done.stdout  # 3 tests, and the kit's 12 named checks (6 rules x 2 families)


def test_without_the_plugin_the_strategy_is_unknown(tmp_path):
    """adaptkit alone has no "bitfit": with only its own distribution allowed (which hides the example
    even where it is installed), a recipe naming it is refused."""
    env = dict(os.environ, ADAPTKIT_PLUGINS="adaptkit")
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tmp_path, strategy="bitfit"))
    done = subprocess.run([*ADAPTKIT, "validate", str(path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "strategy.name: unknown strategy 'bitfit'" in done.stderr

"""The plugin manager: discovery through entry points, and broken plugins kept in their place."""
from __future__ import annotations

from pathlib import Path

import pytest

from adaptkit.plugins import build_registry, reset_registry
from plugin_fixtures import BROKEN_IMPORT, DUPLICATE_FULL, GOOD_EXTRA, MISSPELT_HOOK, fake_distribution


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def _by_name(registry):
    return {p.name: p for p in registry.plugins}


def test_first_party_plugins_come_from_entry_points():
    """adaptkit_register_strategies: first-party strategies arrive like any third party's."""
    registry = build_registry()
    plugins = _by_name(registry)
    assert {"full", "lora", "tasks", "packaged_models"} <= set(plugins)
    assert plugins["lora"].distribution == "adaptkit"
    assert plugins["lora"].strategies == ["lora"]
    assert "adaptkit_resolve_model" in plugins["packaged_models"].hooks
    assert registry.strategies["full"].__module__ == "adaptkit_full"
    assert all(p.error is None for p in registry.plugins)


def test_broken_and_duplicate_plugins_are_reported_and_others_keep_working(tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "adaptkit-broken", "0.3.1",
                      {"broken_plugin": BROKEN_IMPORT, "impostor_plugin": DUPLICATE_FULL,
                       "misspelt_plugin": MISSPELT_HOOK, "extra_plugin": GOOD_EXTRA},
                      {"broken": "broken_plugin", "impostor": "impostor_plugin",
                       "misspelt": "misspelt_plugin", "extra": "extra_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry = build_registry()
    plugins = _by_name(registry)

    broken = plugins["broken"]
    assert broken.distribution == "adaptkit-broken" and broken.version == "0.3.1"
    assert "this_module_does_not_exist_anywhere" in broken.error

    impostor = plugins["impostor"]
    assert "registered twice" in impostor.error
    assert "adaptkit-broken" in impostor.error and "distribution adaptkit" in impostor.error
    assert registry.strategies["full"].__module__ == "adaptkit_full"  # the first owner keeps it

    assert "adaptkit_register_stratgies" in plugins["misspelt"].error

    assert plugins["extra"].error is None
    assert "third_party_noop" in registry.strategies
    assert {"full", "lora"} <= set(registry.strategies)


def test_adaptkit_register_tasks_adds_a_task_type(tmp_path, monkeypatch):
    """adaptkit_register_tasks: a plugin's task becomes a valid recipe task.type."""
    source = """
from adaptkit import Task, hookimpl

class Regression(Task):
    name = "toy_regression"

@hookimpl
def adaptkit_register_tasks(register):
    register(Regression)
"""
    fake_distribution(tmp_path / "site", "adaptkit-toy", "0.1", {"toy_tasks": source}, {"toy": "toy_tasks"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry = build_registry()
    assert registry.tasks["toy_regression"].__module__ == "toy_tasks"
    assert _by_name(registry)["toy"].tasks == ["toy_regression"]
    assert "sequence_classification" in registry.tasks


def test_allow_list_restricts_distributions(tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "adaptkit-extra", "1.0", {"extra_plugin": GOOD_EXTRA},
                      {"extra": "extra_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("ADAPTKIT_PLUGINS", "adaptkit-extra")
    registry = build_registry()
    assert [p.name for p in registry.plugins] == ["extra"]
    assert list(registry.strategies) == ["third_party_noop"]


def test_plugins_command_lists_errors_without_failing(tmp_path, monkeypatch, capsys):
    from adaptkit.cli import main

    fake_distribution(tmp_path / "site", "adaptkit-broken", "0.3.1", {"broken_plugin": BROKEN_IMPORT},
                      {"broken": "broken_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert main(["plugins", "--json"]) == 0
    import json

    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["broken"]["error"].startswith("failed to import")
    assert listed["lora"]["strategies"] == ["lora"] and listed["lora"]["error"] is None


def test_adaptkit_on_event_sees_the_run(tiny_recipe, monkeypatch):
    """adaptkit_on_event: a plugin observes run_start, each epoch_end and run_end."""
    import types

    import adaptkit
    import adaptkit.plugins as plugins
    from adaptkit import hookimpl

    seen = []
    module = types.SimpleNamespace(
        adaptkit_on_event=hookimpl(lambda event, payload: seen.append((event, dict(payload)))))
    registry = plugins.build_registry(extra_plugins=[("observer", module)])
    monkeypatch.setattr(plugins, "get_registry", lambda: registry)
    adaptkit.run(tiny_recipe("full", training={"epochs": 2}), progress=False)
    checkpoints = [payload for event, payload in seen if event == "checkpoint"]
    seen = [(event, payload) for event, payload in seen if event != "checkpoint"]
    events = [event for event, _ in seen]
    assert events == ["run_start", "epoch_end", "epoch_end", "run_end"]
    assert seen[1][1]["epoch"] == 1 and "accuracy" in seen[1][1]["metrics"]
    assert seen[-1][1]["metrics"]["eval"]["accuracy"] == seen[2][1]["metrics"]["accuracy"]
    assert checkpoints and all(Path(c["path"]).name.startswith("step-") for c in checkpoints)


def test_adaptkit_resolve_model_first_answer_wins(tmp_path, monkeypatch):
    """adaptkit_resolve_model: a plugin maps a name to a folder; adaptkit loads from there."""
    import types

    import adaptkit.plugins as plugins
    from adaptkit import hookimpl
    from adaptkit.models import resolve_model_source

    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    module = types.SimpleNamespace(adaptkit_resolve_model=hookimpl(
        lambda name: str(folder) if name == "acme/tiny" else None))
    registry = plugins.build_registry(extra_plugins=[("acme", module)])
    monkeypatch.setattr(plugins, "get_registry", lambda: registry)
    assert resolve_model_source("acme/tiny").location == str(folder)
    assert resolve_model_source("sentence-transformers/all-MiniLM-L6-v2").origin == "plugin"


def test_every_hookspec_has_a_test_and_a_readme_entry():
    """Keep the plugin API honest: a new hook without a test or documentation fails here."""
    from pathlib import Path

    from adaptkit import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("adaptkit_")]
    assert names, "no hookspecs found"
    root = Path(__file__).resolve().parent.parent
    tests = "".join(p.read_text() for p in (root / "tests").glob("test_*.py"))
    readme = (root / "README.md").read_text()
    for name in names:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
        assert f"def test_{name}" in tests or f"{name}:" in tests, f"{name} has no test"
        assert f"`{name}" in readme, f"{name} is not documented in README.md"

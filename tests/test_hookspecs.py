"""The plugin API stays honest: every hookspec has a docstring, a test and a README entry.

A hook added to ``adaptkit/plugin/hookspecs.py`` without a test that names it (in a tests/*.py file
other than this one) or without a README entry fails here, naming the hook.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from adaptkit.plugin import hookspecs
ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name, value in vars(hookspecs).items()
               if name.startswith("adaptkit_") and inspect.isfunction(value))


def test_hookspecs_are_found():
    assert "adaptkit_register_strategies" in HOOKS and "adaptkit_on_event" in HOOKS


def problems(name: str) -> list[str]:
    """What is missing for hook ``name``: a docstring, a test that names it, a README entry."""
    found = []
    spec = getattr(hookspecs, name, None)
    if not (getattr(spec, "__doc__", None) or "").strip():
        found.append(f"hookspec {name} has no docstring")
    other_tests = [path for path in sorted((ROOT / "tests").glob("*.py")) if path.name != Path(__file__).name]
    if not any(name in path.read_text() for path in other_tests):
        found.append(f"hookspec {name} appears in no test (tests/*.py other than {Path(__file__).name}): add one")
    if name not in (ROOT / "README.md").read_text():
        found.append(f"hookspec {name} is missing from README.md's Hooks table")
    return found


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_is_documented_tested_and_in_the_readme(name):
    assert not problems(name), problems(name)


def test_a_hook_without_test_or_readme_entry_is_caught(monkeypatch):
    name = "adaptkit_" + "made_up_hook"  # spelt in two parts so this file never counts as its test

    def made_up(payload):
        """Documented, but neither tested nor in the README."""

    monkeypatch.setattr(hookspecs, name, made_up, raising=False)
    assert [p.split(" ")[2] for p in problems(name)] == ["appears", "is"]

"""The package's folders are layers, and each imports only itself and the layers below it.

errors, _version < plugin (what a plugin author sees) < recipe < engine < judge < cli < adaptkit
itself. A module that reaches upward (even lazily, inside a function) re-creates the import
circles the folders were made to break, and makes a lower layer impossible to use or test without
the ones above it. The bare package ``adaptkit`` (its ``__init__``, the public API) is the top:
it imports every layer, so ``from adaptkit import X`` inside a layer is an upward import too.
"""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "adaptkit"
TOP = "adaptkit"  # the bare package: adaptkit/__init__.py, which imports every layer
ORDER = {"errors": 0, "_version": 0, "plugin": 1, "recipe": 2, "engine": 3, "judge": 4, "cli": 5, TOP: 6}

# Imports that may cross the layers anyway, as (module path, imported module): none.
ALLOWED: set[tuple[str, str]] = set()


def _layer_of(module: str) -> str | None:
    """The layer an ``adaptkit...`` module belongs to (``adaptkit`` alone is the top), else None."""
    parts = module.split(".")
    if parts[0] != TOP:
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else TOP if len(parts) == 1 else None


def upward_imports(root: Path = CORE, allowed: frozenset = frozenset(ALLOWED)) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        if layer not in ORDER:
            continue  # adaptkit/__init__.py and adaptkit/testing.py face users: they may import any layer
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                target = _layer_of(module)
                if target is not None and ORDER[target] > ORDER[layer] and (relative.as_posix(), target) not in allowed:
                    found.append(f"{relative}:{node.lineno}: {layer} imports {module}")
    return found


def test_every_layer_imports_only_itself_and_the_layers_below():
    offenders = upward_imports()
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


def test_the_layer_check_finds_an_upward_import(tmp_path):
    """The check can fail: a plugin-layer module importing the engine lazily is reported."""
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "bad.py").write_text("def f():\n    from adaptkit.engine.models import build_model\n")
    assert upward_imports(tmp_path) == ["plugin/bad.py:2: plugin imports adaptkit.engine.models"]


def test_importing_the_bare_package_is_an_upward_import(tmp_path):
    """``from adaptkit import X`` in a layer reaches the top (adaptkit/__init__.py imports every layer)."""
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "bad.py").write_text("from adaptkit import __version__\nimport adaptkit\n")
    (tmp_path / "_version.py").write_text("from adaptkit.errors import AdaptkitError\n")
    assert upward_imports(tmp_path) == ["engine/bad.py:1: engine imports adaptkit", "engine/bad.py:2: engine imports adaptkit"]


def test_the_allow_list_names_only_imports_still_there():
    """Each allowed upward import is still made (a fixed one must leave the list)."""
    everything = upward_imports(allowed=frozenset())
    stale = [(path, module) for path, module in ALLOWED
             if not any(line.startswith(f"{path}:") and line.endswith(f"imports {module}") for line in everything)]
    assert not stale, f"no longer imported, remove from ALLOWED: {stale}"

"""The package's folders are layers, and each imports only itself and the layers below it.

errors < plugin (what a plugin author sees) < recipe < engine < judge < cli. A module that
reaches upward (even lazily, inside a function) re-creates the import circles the folders were
made to break, and makes a lower layer impossible to use or test without the ones above it.
"""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "adaptkit"
ORDER = {"errors": 0, "plugin": 1, "recipe": 2, "engine": 3, "judge": 4, "cli": 5}


def upward_imports(root: Path = CORE) -> list[str]:
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
                parts = module.split(".")
                if parts[0] == "adaptkit" and len(parts) > 1 and ORDER.get(parts[1], -1) > ORDER[layer]:
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

"""peft's registry of tuner types and their config fields, read from peft's source without importing it.

Why not ``import peft``: importing peft imports torch and transformers (seconds), and adaptkit
promises that listing plugins (``adaptkit plugins``), writing the schema and validating a recipe
never import torch (tests/test_cli.py, tests/test_recipe.py). A strategy's name and options must be
known at registration, so this module reads what peft declares, statically, with ``ast``:

- the methods: every ``register_peft_method(name=..., config_cls=...)`` call in
  ``peft/tuners/*/__init__.py`` (the calls that fill ``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING``);
- each config dataclass's fields (annotation, default, ``metadata["help"]``), bases first, from
  every ``@dataclass`` class in peft's config modules;
- whether the method can merge: some class in its ``layer`` module (or a base it names) defines
  ``merge`` (peft's ``BaseTunerLayer.merge`` only raises).

No library serves this: peft has no import-free description of its methods. The catalog is checked
against the imported registry in tests/test_peft_methods.py (same names, fields, defaults and
mergeability), and wrapping a model uses the imported classes, so peft's own validation
(``__post_init__``) and per-family target tables apply where a model is built anyway.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

_NO_DEFAULT = object()


@dataclass(frozen=True)
class ConfigField:
    """One field of a peft config dataclass as its source declares it."""

    name: str
    annotation: str      # the annotation's source text ("Optional[Union[list[str], str]]")
    default: Any         # the literal default (a default_factory of list/dict/set: an empty one); None if unreadable
    help: str            # metadata["help"], whitespace folded
    required: bool = False  # declared with no default: peft needs a value


@dataclass(frozen=True)
class Method:
    """One peft tuner type as adaptkit sees it."""

    name: str                          # peft's registered name, the strategy name ("loha")
    config_name: str                   # the config class's name ("LoHaConfig")
    fields: tuple[ConfigField, ...]    # every dataclass field, bases first
    prompt_learning: bool              # a PromptLearningConfig (virtual tokens), not a layer tuner
    mergeable: bool                    # some layer of the method implements merge
    doc: str = ""                      # the config docstring's first line

    @property
    def peft_type(self) -> str:
        return self.name.upper()

    def field_names(self) -> set[str]:
        return {f.name for f in self.fields}


@dataclass
class _Class:
    bases: list[str]
    fields: list[ConfigField] = field(default_factory=list)
    methods: set[str] = field(default_factory=set)
    doc: str = ""
    module: str = ""


def peft_root() -> Optional[Path]:
    """The installed peft package folder (found without executing it), or None when peft is absent."""
    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def peft_version() -> str:
    """The installed peft's version, from its distribution metadata (no import)."""
    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return "not installed"


def _literal(node: Optional[ast.AST]) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _field(target: str, annotation: ast.AST, value: Optional[ast.AST]) -> ConfigField:
    default: Any = _NO_DEFAULT if value is None else _literal(value)
    text = ""
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "field":
        default = None
        for keyword in value.keywords:
            if keyword.arg == "default":
                default = _literal(keyword.value)
            elif keyword.arg == "default_factory":
                factory = getattr(keyword.value, "id", None)
                default = {"list": [], "dict": {}, "set": set()}.get(factory) if factory else None
            elif keyword.arg == "metadata" and isinstance(keyword.value, ast.Dict):
                for key, item in zip(keyword.value.keys, keyword.value.values):
                    if _literal(key) == "help":
                        text = str(_literal(item) or "")
    return ConfigField(target, ast.unparse(annotation), None if default is _NO_DEFAULT else default,
                       " ".join(text.split()), required=default is _NO_DEFAULT)


def _only_raises(function: ast.FunctionDef) -> bool:
    """A method whose body (past its docstring) is one ``raise``: declared, not implemented (Lily's merge)."""
    body = [n for n in function.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


def _read_classes(path: Path, into: dict[str, _Class]) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:  # peft defines its configs and layers at module level
        if not isinstance(node, ast.ClassDef):
            continue
        found = _Class([getattr(b, "id", getattr(b, "attr", "")) for b in node.bases], module=str(path))
        doc = (ast.get_docstring(node) or "").strip().splitlines()
        found.doc = doc[0].strip() if doc else ""
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                found.fields.append(_field(item.target.id, item.annotation, item.value))
            elif isinstance(item, ast.FunctionDef) and not _only_raises(item):
                found.methods.add(item.name)
        into.setdefault(node.name, found)


def _registrations(root: Path) -> dict[str, tuple[str, Path]]:
    """``register_peft_method`` calls: name -> (config class name, the method's folder)."""
    found = {}
    for init in sorted((root / "tuners").glob("*/__init__.py")):
        for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_peft_method":
                keywords = {k.arg: k.value for k in node.keywords}
                name, config = _literal(keywords.get("name")), getattr(keywords.get("config_cls"), "id", None)
                if isinstance(name, str) and config:
                    found[name] = (config, init.parent)
    return found


def _lineage(name: str, classes: dict[str, _Class]) -> list[_Class]:
    """``name``'s class and its bases known to the catalog, most basic first."""
    chain, seen = [], set()

    def visit(cls_name: str) -> None:
        if cls_name in seen or cls_name not in classes:
            return
        seen.add(cls_name)
        for base in classes[cls_name].bases:
            visit(base)
        chain.append(classes[cls_name])

    visit(name)
    return chain


def _merges(folder: Path, classes: dict[str, _Class]) -> bool:
    """Some class of the method's ``layer.py`` defines a ``merge`` that does more than raise, or
    subclasses a base the catalog read that does (LoHa's layers inherit LycorisLayer's). Only each
    ``merge`` definition is parsed, not the whole module: these files are most of peft's source, and
    this runs every time adaptkit lists its plugins."""
    layer = folder / "layer.py"
    if not layer.exists():
        return False
    text = layer.read_text(encoding="utf-8")
    for found in re.finditer(r"^    def merge\(.*?(?=^    \S|^\S|\Z)", text, re.M | re.S):
        try:
            function = ast.parse(textwrap.dedent(found.group(0))).body[0]
        except SyntaxError:
            return True  # a merge peft wrote that this reading cannot follow: take it as implemented
        if isinstance(function, ast.FunctionDef) and not _only_raises(function):
            return True
    for bases in re.findall(r"^class \w+\(([^)]*)\)", text, re.M):
        for base in (b.strip().rsplit(".", 1)[-1] for b in bases.split(",")):
            if any("merge" in c.methods and not c.module.endswith("tuners_utils.py") for c in _lineage(base, classes)):
                return True
    return False


@lru_cache(maxsize=None)
def peft_methods() -> dict[str, Method]:
    """Every method the installed peft registers, by name ({} without peft)."""
    root = peft_root()
    if root is None:
        return {}
    classes: dict[str, _Class] = {}
    tuners = root / "tuners"
    bases = [path for path in sorted(tuners.glob("*.py")) if path.name != "tuners_utils.py"]  # lycoris_utils' bases
    for path in [root / "config.py", *bases, *sorted(tuners.glob("*/config.py"))]:
        _read_classes(path, classes)
    methods = {}
    for name, (config, folder) in sorted(_registrations(root).items()):
        lineage = _lineage(config, classes)
        fields: dict[str, ConfigField] = {}
        for cls in lineage:
            for item in cls.fields:
                fields[item.name] = item
        methods[name] = Method(name, config, tuple(fields.values()),
                               any(c is classes.get("PromptLearningConfig") for c in lineage),
                               _merges(folder, classes), classes[config].doc if config in classes else "")
    return methods

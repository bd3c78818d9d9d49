"""Reading a recipe file: YAML parsed safely, validated by the schema and by each plugin's options
model, with every error naming the file, the line and the key path and suggesting the closest
valid key; data files checked row by row before any training starts."""
from __future__ import annotations

import difflib
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from adaptkit.errors import DataError, RecipeError
from adaptkit.plugin import registry as plugins  # plugins.get_registry() at call time (tests replace it)
from adaptkit.recipe.datafiles import DATA_FORMATS, data_format, offline_cache_problem, read_header, scan_rows
from adaptkit.recipe.schema import (DataSection, DataSource, Recipe, local_dataset_dir, looks_like_path, number_problem,
                                    plugin_count_problem, where_in_file)

# A recipe is a few sections a few levels deep. These bounds keep a hostile or broken file from
# exhausting the stack (PyYAML composes recursively: 500 nested brackets raise RecursionError) or
# the memory and time of everything that walks the values (nine lines of aliases, each naming the
# one before nine times, stand for 9**9 values: the "billion laughs").
MAX_DEPTH = 64
MAX_VALUES = 100_000


class _LineFinder:
    """Map a key path to a 1-based line number, using the YAML node tree."""

    def __init__(self, root: Optional[yaml.Node]):
        self.root = root

    def line(self, path: tuple[Any, ...]) -> Optional[int]:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == str(part):
                        line = key.start_mark.line + 1
                        node = value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line




def closest(word: str, options: list[str]) -> Optional[str]:
    """The valid name a person most likely meant: a close spelling, else a shared prefix."""
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if match:
        return match[0]
    prefixed = [o for o in options if word.startswith(o) or o.startswith(word)]
    return max(prefixed, key=len) if prefixed else None


def _suggest(word: str, options: list[str]) -> str:
    match = closest(word, options)
    return f"; did you mean {match!r}?" if match else ""


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section that holds ``path[-1]``, for "did you mean" hints."""
    current: Any = model
    for part in path[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _shown_key(part: Any) -> str:
    """A key as an error shows it: quoted when blanks, colons or control characters would garble the message."""
    text = str(part)
    return text if text and all(c.isalnum() or c in "_-" for c in text) else repr(text)


def _format_errors(exc: ValidationError, model: type[BaseModel], source: Optional[Path],
                   lines: _LineFinder, prefix: tuple[Any, ...] = ()) -> str:
    messages = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not str(part).startswith("function-after"))
        path = prefix + loc
        dotted = ".".join(_shown_key(p) for p in path) or "<top>"
        line = lines.line(path)
        if error["type"] == "extra_forbidden":
            hint = _suggest(str(loc[-1]), [f for f in _fields_at(model, loc) if f not in ("name", "type")])
            text = f"unknown key{hint}"
        elif error["type"] == "missing":
            text = "required key is missing"
        else:
            text = error["msg"].removeprefix("Value error, ")
            if "input" in error and not isinstance(error["input"], (dict, list)):
                shown = repr(error["input"])
                text += f" (got {shown if len(shown) <= 80 else shown[:60] + f'... ({len(shown)} characters)'})"
        messages.append(f"{where_in_file(source, line)}: {dotted}: {text}")
    return "\n".join(messages)


def _check_shape(text: str, source: Optional[Path]) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH``, from the parser's events (which never recurse)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{where_in_file(source, event.start_mark.line + 1)}: values nested more than "
                                  f"{MAX_DEPTH} levels deep; a recipe needs a handful")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _expanded_shape(root: yaml.Node) -> tuple[int, int, bool]:
    """(values, depth, cyclic) of the document once aliases are expanded, each node visited once.

    Iterative, so neither a long chain of aliases nor a self-referencing anchor (``&a [*a]``)
    can exhaust the stack here.
    """
    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    shape: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            parts = [shape[id(child)] for child in children(node)]
            shape[id(node)] = (1 + sum(p[0] for p in parts), 1 + max((p[1] for p in parts), default=0))
            open_nodes.discard(id(node))
            continue
        if id(node) in shape:
            continue
        if id(node) in open_nodes:
            return 0, 0, True
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children(node) if id(child) not in shape)
    values, depth = shape[id(root)]
    return values, depth, False


def _find_duplicate_keys(node: yaml.Node, path: tuple[str, ...] = (),
                         visited: Optional[set[int]] = None) -> Optional[tuple[tuple[str, ...], int]]:
    """The first key given twice in one mapping; a node reached again through an alias is not re-walked."""
    visited = set() if visited is None else visited
    if id(node) in visited:
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                return path + (key.value,), key.start_mark.line + 1
            seen.add(key.value)
            found = _find_duplicate_keys(value, path + (str(key.value),), visited)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _find_duplicate_keys(item, path + (str(index),), visited)
            if found:
                return found
    return None


def parse_yaml(text: str, source: Optional[Path]) -> tuple[Any, _LineFinder]:
    """Safe-load YAML (no tags that run code) and keep node positions for error lines.

    Nesting is bounded (``MAX_DEPTH``) before anything recursive runs, and aliases may expand
    to at most ``MAX_VALUES`` values, before any value is built or walked.
    """
    try:
        _check_shape(text, source)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            size, depth, cyclic = _expanded_shape(root)
            if cyclic:
                raise RecipeError(f"{where_in_file(source, 1)}: an alias (*name) refers to the value that holds it; "
                                  f"a recipe's values cannot contain themselves")
            if size > MAX_VALUES:
                raise RecipeError(f"{where_in_file(source, 1)}: the recipe's aliases (*name) expand to {size:,} values, "
                                  f"more than the {MAX_VALUES:,} allowed (an alias bomb?); write the values out")
            if depth > MAX_DEPTH:
                raise RecipeError(f"{where_in_file(source, 1)}: the recipe's aliases (*name) nest values {depth} levels "
                                  f"deep, more than the {MAX_DEPTH} allowed")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: it has a position, not a mark
            line = text[: exc.position].count("\n") + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += ("; recipes are read with YAML safe loading, which refuses tags that build Python "
                        "objects or run code: write plain values instead")
        raise RecipeError(f"{where_in_file(source, line)}: invalid YAML: {problem}") from None
    if root is not None:
        duplicate = _find_duplicate_keys(root)
        if duplicate:
            keys, line = duplicate
            raise RecipeError(f"{where_in_file(source, line)}: {'.'.join(keys)}: key appears twice in one section")
    return data, _LineFinder(root)


def load_recipe(path: Union[str, Path], check_files: bool = True) -> Recipe:
    """Read, parse and validate a recipe file; raise ``RecipeError`` with file:line on any problem."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{source}: recipe file not found") from None
    except OSError as exc:
        raise RecipeError(f"{source}: cannot read recipe: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{where_in_file(source, line)}: recipe is not UTF-8 text") from None
    if "\x00" in text:
        raise RecipeError(f"{where_in_file(source, text[: text.index(chr(0))].count(chr(10)) + 1)}: "
                          f"recipe contains NUL bytes (a binary file?)")
    data, lines = parse_yaml(text, source)
    return _validate(data, source.resolve(), lines, check_files, display=source)



def recipe_from_dict(data: Any, source: Optional[Path] = None, check_files: bool = True) -> Recipe:
    """Validate a recipe given as a dict (``Recipe.from_dict``): the same checks as a file, without lines."""
    return _validate(data, source, _LineFinder(None), check_files)


Recipe.dict_validator = staticmethod(recipe_from_dict)  # Recipe.from_dict validates here (the schema cannot import loading)

def _validate(data: Any, source: Optional[Path], lines: _LineFinder, check_files: bool,
              display: Optional[Path] = None) -> Recipe:
    shown = display or source
    if data is None:
        raise RecipeError(f"{where_in_file(shown, 1)}: recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{where_in_file(shown, 1)}: a recipe is a mapping of sections "
                          f"(model, task, data, strategy, training, output), not a {type(data).__name__}")
    unknown = [k for k in data if k not in Recipe.model_fields]
    if unknown:
        key = str(unknown[0])
        raise RecipeError(f"{where_in_file(shown, lines.line((key,)))}: {_shown_key(key)}: unknown section"
                          f"{_suggest(key, list(Recipe.model_fields))}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, Recipe, shown, lines)) from None
    recipe.read_from(source, lines)
    _check_requirements(recipe, shown, lines)
    with plugins.recipe_plugins(recipe):  # its plugins: allow-list and the distributions its sections name
        _validate_plugin_sections(recipe, shown, lines)
        if check_files:
            _check_data_files(recipe, shown, lines)
    return recipe


def _check_requirements(recipe: Recipe, shown: Optional[Path], lines: _LineFinder) -> None:
    """``requires:`` names plugin distributions; check them before any plugin is used."""
    from packaging.requirements import InvalidRequirement, Requirement

    for index, text in enumerate(recipe.requires):
        where = where_in_file(shown, lines.line(("requires", index)))
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise RecipeError(f"{where}: requires[{index}]: {text!r} is not a requirement specifier: {exc}") from None
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            raise RecipeError(f"{where}: requires[{index}]: this recipe needs {text!r}, which is not installed; "
                              f"install it with: pip install '{text}'") from None
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            raise RecipeError(f"{where}: requires[{index}]: this recipe needs {text!r} but {requirement.name} "
                              f"{installed} is installed; upgrade with: pip install '{text}'")


def _validate_plugin_sections(recipe: Recipe, shown: Optional[Path], lines: _LineFinder) -> None:
    registry = plugins.get_registry()
    for section, key, table, kind in (("strategy", "name", registry.strategies, "strategy"),
                                      ("task", "type", registry.tasks, "task")):
        spec = getattr(recipe, section)
        chosen = getattr(spec, key)
        problem = registry.choice_problem(kind, chosen, spec.distribution)  # a name two distributions share
        if problem:
            at = (section, "distribution") if spec.distribution is not None else (section, key)
            raise RecipeError(f"{where_in_file(shown, lines.line(at))}: {section}.{at[1]}: {problem}")
        if chosen not in table:
            available = sorted(table)
            raise RecipeError(
                f"{where_in_file(shown, lines.line((section, key)))}: {section}.{key}: unknown {kind} "
                f"{chosen!r}{_suggest(chosen, available)} (installed: {', '.join(available) or 'none'})"
            )
        options_model = table[chosen].Options
        settings = spec.settings()
        for name, value in settings.items():  # a plugin's options model may not guard these itself
            field = options_model.model_fields.get(name)
            problem = (number_problem(field.annotation, value, tuple(field.metadata))
                       or plugin_count_problem(field.annotation, value, tuple(field.metadata))) if field is not None else None
            if problem:
                got = f" (got {value!r})" if len(repr(value)) <= 80 else ""
                raise RecipeError(f"{where_in_file(shown, lines.line((section, name)))}: {section}.{name}: {problem}{got}")
        try:
            options = options_model.model_validate(settings)
        except ValidationError as exc:
            raise RecipeError(_format_errors(exc, options_model, shown, lines, prefix=(section,))) from None
        recipe.set_options(section, options)
    _check_labels(recipe, shown, lines)
    _check_metric_for_best(recipe, registry.tasks[recipe.task.type], shown, lines)
    text_task = getattr(registry.tasks[recipe.task.type], "needs_tokenizer", True)
    if recipe.model.name is None and recipe.model.tokenizer is None and text_task:
        raise RecipeError(f"{where_in_file(shown, lines.line(('model',)))}: model: a model built from model.config "
                          f"needs model.tokenizer (task {recipe.task.type!r} reads text)")


def _check_labels(recipe: Recipe, shown: Optional[Path], lines: _LineFinder) -> None:
    """``task.labels`` names each class once: ``[0, 0, 1]`` would give two outputs one name.

    Labels are compared as the data compares them, as text, so ``[0, "0"]`` repeats too.
    """
    labels = plugins.get_registry().tasks[recipe.task.type](recipe.task_options).declared_labels()
    if not isinstance(labels, (list, tuple)):
        return
    first: dict[str, int] = {}
    for index, label in enumerate(labels):
        name = str(label)
        if name in first:
            raise RecipeError(f"{where_in_file(shown, lines.line(('task', 'labels', index)))}: task.labels[{index}]: "
                              f"label {name!r} is listed twice (also task.labels[{first[name]}]); each class "
                              f"is named once")
        first[name] = index


def _check_metric_for_best(recipe: Recipe, task_cls: type, shown: Optional[Path], lines: _LineFinder) -> None:
    """``training.metric_for_best`` must be a metric the task reports, or the run stops after an epoch.

    Tasks declare their eval metrics (``Task.metric_names``); a task that declares none is not
    checked here (the run checks it at the first evaluation).
    """
    wanted = recipe.training.metric_for_best
    if wanted is None:
        return
    names = list(getattr(task_cls(recipe.task_options), "metric_names", ()) or ())
    if not names:
        return
    names = sorted(set(names) | {"loss"})  # the loop always reports the eval loss
    metric = wanted[len("eval_"):] if wanted.startswith("eval_") else wanted
    if metric not in names:
        raise RecipeError(f"{where_in_file(shown, lines.line(('training', 'metric_for_best')))}: training.metric_for_best: "
                          f"{wanted!r} is not a metric of task {recipe.task.type!r}{_suggest(metric, names)} "
                          f"(its metrics: {', '.join(names)})")


def _data_sources(section: DataSection) -> list[tuple[str, tuple[Any, ...], DataSource]]:
    """(train|eval, key path of the source's path/name, source) of every data source a recipe reads."""
    found = []
    for key in ("train", "eval"):
        value = getattr(section, key)
        for index, source in enumerate(section.sources(key)):
            loc: tuple[Any, ...] = ("data", key, index) if isinstance(value, list) else ("data", key)
            if not isinstance(value, Path):
                loc += ("path" if source.path is not None else "name",)
            found.append((key, loc, source))
    return found


def _check_named_source(recipe: Recipe, source: DataSource, key: str, where: str) -> None:
    """A dataset folder must exist; a Hub id must be cached when HF_HUB_OFFLINE is set (no network asked)."""
    if local_dataset_dir(source.name, recipe.base_dir()) is not None:
        return
    if looks_like_path(source.name):
        raise RecipeError(f"{where}: data.{key}: dataset folder not found: "
                          f"{recipe.base_dir() / Path(source.name).expanduser()}")
    problem = offline_cache_problem(source, f"data.{key}")
    if problem:
        raise RecipeError(f"{where}: {problem}")


def _check_data_files(recipe: Recipe, shown: Optional[Path], lines: _LineFinder) -> None:
    task = plugins.get_registry().tasks[recipe.task.type](recipe.task_options)
    required = task.required_columns()
    for key, loc, source in _data_sources(recipe.data):
        where = where_in_file(shown, lines.line(loc))
        renames = {**recipe.data.columns,
                   **{old: recipe.data.columns.get(new, new) for old, new in source.columns.items()}}
        label = key  # data.train for a plain path, as before; data.train.0.path in a mixture (its classes
        # may be spread over its sources: the two-class check is made on the mixture when it loads)
        key = ".".join(str(part) for part in loc[1:])
        if source.name is not None:
            _check_named_source(recipe, source, key, where)
            continue
        path = recipe.resolve_path(source.path)
        kind = data_format(path)
        if not path.exists():
            raise RecipeError(f"{where}: data.{key}: file not found: {path}")
        if kind is None and not path.is_dir():
            raise RecipeError(f"{where}: data.{key}: unsupported file type {path.suffix!r} "
                              f"(use one of {', '.join(sorted(DATA_FORMATS))})")
        try:
            header = read_header(path, kind) if kind else None
        except OSError as exc:  # a folder named *.csv, no permission, an I/O error
            raise RecipeError(f"{where}: data.{key}: cannot read {path}: {exc.strerror or exc}") from None
        if header is None and kind != "jsonl":
            continue  # JSON, Parquet, image folders: checked when loaded (data.check_table)
        if header is not None and not header and kind != "jsonl":  # JSONL: blank first lines are skipped
            raise RecipeError(f"{where}: data.{key}: {path.name} is empty (no header, no rows)")
        # a JSON Lines file whose first line is no object still gets its rows scanned: line 1 is the error
        present = {renames.get(column, column) for column in header or required}
        missing = [column for column in required if column not in present]
        if missing:
            raise RecipeError(
                f"{where}: data.{key}: {path.name} lacks column(s) {', '.join(map(repr, missing))} that "
                f"task {recipe.task.type!r} needs (columns: {', '.join(header)}); set the task's column "
                f"names or map them with data.columns"
            )
        try:
            scan_rows(path, kind, required, renames, task.label_rules(),
                      is_train=label == "train" and not isinstance(recipe.data.train, list),
                      row_problem=task.row_problem)
        except DataError as exc:
            raise RecipeError(f"{where}: data.{key}: {exc}") from None
        except OSError as exc:
            raise RecipeError(f"{where}: data.{key}: cannot read {path}: {exc.strerror or exc}") from None

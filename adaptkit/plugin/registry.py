"""The one plugin manager: load every entry point of the ``adaptkit`` group, survive bad ones.

Entry points are loaded one at a time, each inside its own guard, so one broken plugin
is reported (with its distribution and error) while every other plugin keeps working; a
plugin that calls ``sys.exit()`` or raises any other ``BaseException`` while it is imported or
registers is caught too (only Ctrl-C, ``KeyboardInterrupt``, goes through).
``ADAPTKIT_PLUGINS=tasks,lora`` restricts loading to the named plugins: each entry is an
entry-point name (``tasks``, ``lora``, ``packaged_models``: every first-party plugin is one entry
point of the single distribution ``adaptkit``) or a distribution name, which lets in every entry
point that distribution declares (``ADAPTKIT_PLUGINS=adaptkit,adaptkit-bitfit``); case, ``-`` and
``_`` do not matter. A recipe's ``plugins:`` list (distribution names) restricts it further for
that recipe (``adaptkit`` itself, which ships the first-party strategies and tasks, is always
allowed there). Nothing else is ever imported:
plugins come only from installed entry points.

A strategy or task name registered by more than one distribution is never settled by the order
entry points happen to sort in (that would let any installed package impersonate ``lora``): the
name is refused, the plugin that is not first-party is marked with the error, and a recipe picks
one with ``strategy: {name: lora, distribution: adaptkit}`` (``task: {type: ..., distribution: ...}``).
``recipe_plugins(recipe)`` applies a recipe's allow-list and these choices while it is validated,
planned, run or reloaded.

Every hook implementation is called through a guard: an exception inside it, or an answer of
the wrong type, becomes a ``PluginError`` naming the plugin, its distribution and the hook.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import pluggy

from adaptkit.plugin import hookspecs, sources
from adaptkit.errors import AdaptkitError, PluginError
from adaptkit.plugin.baseline import Baseline
from adaptkit.plugin.strategy import Strategy
from adaptkit.plugin.task import Task

ENTRY_POINT_GROUP = "adaptkit"
ALLOW_LIST_ENV = "ADAPTKIT_PLUGINS"
CORE_DISTRIBUTION = "adaptkit"
# A strategy or task name ends up in folder names (compare's runs/<name>-...): one plain component.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")
# Which recipe section and key name a strategy or task: for messages that show how to pick one.
_SECTION_KEY = {"strategy": ("strategy", "name"), "task": ("task", "type")}
# The kinds of class a plugin registers, each with its hook; a name is unique within its kind.
KINDS = {"strategy": "adaptkit_register_strategies", "task": "adaptkit_register_tasks",
         "baseline": "adaptkit_register_baselines"}
_recipe_allow: contextvars.ContextVar = contextvars.ContextVar("adaptkit_recipe_plugins", default=None)
# The active recipe's choices: frozenset of ("kind:name", normalised distribution).
_recipe_choices: contextvars.ContextVar = contextvars.ContextVar("adaptkit_recipe_choices", default=frozenset())


@dataclass
class PluginInfo:
    """What ``adaptkit plugins`` shows for one entry point.

    ``conflicts`` lists each name this plugin shares with another distribution (first-party
    plugins included); ``error`` says what failed, and for a shared name it is set on the plugin
    that is not first-party, never on adaptkit's own.
    """

    name: str
    distribution: str
    version: str
    module: str
    strategies: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    conflicts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``plugin 'lora' (distribution adaptkit 0.9)``: how every message names a plugin."""
        return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"


class _Table(dict):
    """name -> class. A refused name (shared by several distributions, or not provided by the
    distribution the recipe chose) is absent, and looking it up raises a ``PluginError`` that
    says why and how to pick, instead of a bare ``KeyError``."""

    def __init__(self, items: Mapping[str, type] | None = None, refused: Mapping[str, str] | None = None):
        super().__init__(items or {})
        self.refused: dict[str, str] = dict(refused or {})

    def __missing__(self, name: str) -> type:
        if name in self.refused:
            raise PluginError(self.refused[name])
        raise KeyError(name)


@dataclass
class Registry:
    """The loaded plugins and what they registered, keyed by name.

    ``claims`` holds every plugin that registered each ``"kind:name"`` (first-party first, then by
    distribution and entry-point name), so a shared name can be resolved by distribution.
    """

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    strategies: dict[str, type]
    tasks: dict[str, type]
    owners: dict[str, PluginInfo]
    claims: dict[str, list[tuple[PluginInfo, type]]] = field(default_factory=dict)
    baselines: dict[str, type] = field(default_factory=dict)

    def plugin_for(self, kind: str, name: str) -> PluginInfo | None:
        return self.owners.get(f"{kind}:{name}")

    def claimants(self, kind: str, name: str) -> list[PluginInfo]:
        """Every plugin that registered ``name`` as a ``kind`` (more than one: the name is shared)."""
        return [info for info, _ in self.claims.get(f"{kind}:{name}", [])]

    def choice_problem(self, kind: str, name: str, distribution: str | None) -> str | None:
        """Why ``name`` cannot be used as the recipe says (shared and unchosen, or the chosen
        distribution does not provide it), or None. An unknown name is left to the caller."""
        found = self.claims.get(f"{kind}:{name}", [])
        if not found:
            return None
        if distribution is None:
            return _ambiguity(kind, name, found) if len(found) > 1 else None
        if any(_normal(info.distribution) == _normal(distribution) for info, _ in found):
            return None
        section, key = _SECTION_KEY[kind]
        return (f"distribution {distribution!r} does not provide {kind} {name!r}; it comes from "
                f"{_list_claimants(found)}: name one of those, e.g. "
                f"`{section}: {{{key}: {name}, distribution: {found[0][0].distribution}}}`")

    def choosing(self, choices: Mapping[str, str]) -> "Registry":
        """This registry as seen by a recipe that picked distributions: ``{"strategy:lora": "adaptkit"}``.

        The chosen distribution's class takes the name; a choice naming a distribution that does
        not provide the name removes it (a lookup then says so). The plugins and hooks are shared.
        """
        strategies = _Table(self.strategies, getattr(self.strategies, "refused", {}))
        tasks = _Table(self.tasks, getattr(self.tasks, "refused", {}))
        owners = dict(self.owners)
        for key, distribution in choices.items():
            kind, _, name = key.partition(":")
            table = strategies if kind == "strategy" else tasks
            if key not in self.claims or kind not in _SECTION_KEY:
                continue
            picked = [(info, cls) for info, cls in self.claims[key]
                      if _normal(info.distribution) == _normal(distribution)]
            if picked:
                table[name] = picked[0][1]
                owners[key] = picked[0][0]
                table.refused.pop(name, None)
            else:
                table.pop(name, None)
                owners.pop(key, None)
                table.refused[name] = self.choice_problem(kind, name, distribution) or ""
        return Registry(self.manager, self.plugins, strategies, tasks, owners, self.claims, self.baselines)


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _allow_lists() -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """``(env, recipe)``: the ``ADAPTKIT_PLUGINS`` entries (entry-point or distribution names) and
    the active recipe's ``plugins:`` distributions, each normalised; None where there is no list."""
    raw = os.environ.get(ALLOW_LIST_ENV)
    env = None
    if raw is not None and raw.strip():
        env = frozenset(_normal(part) for part in raw.split(",") if part.strip())
    return env, _recipe_allow.get()


def _allowed(info: PluginInfo, lists: tuple[frozenset[str] | None, frozenset[str] | None]) -> bool:
    """Whether this entry point may load: named (by itself or its distribution) in ``ADAPTKIT_PLUGINS``
    when that is set, and its distribution in the recipe's ``plugins:`` when a recipe has one."""
    env, recipe = lists
    if env is not None and _normal(info.name) not in env and _normal(info.distribution) not in env:
        return False
    return recipe is None or _normal(info.distribution) in recipe


@contextlib.contextmanager
def restricted_to(distributions: list[str] | None) -> Iterator[None]:
    """Within this block ``get_registry()`` loads only ``distributions`` (plus adaptkit itself).

    ``None`` leaves the process's allow-list as it is. A recipe's ``plugins:`` key is applied
    this way while it is validated and while it runs.
    """
    if distributions is None:
        yield
        return
    token = _recipe_allow.set(frozenset({_normal(d) for d in distributions} | {CORE_DISTRIBUTION}))
    try:
        yield
    finally:
        _recipe_allow.reset(token)


def _field(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)


def recipe_choices(recipe: Any) -> dict[str, str]:
    """``{"kind:name": distribution}`` for each of a recipe's (a ``Recipe`` or its dict) sections
    that names a distribution."""
    choices = {}
    for kind, (section, key) in _SECTION_KEY.items():
        spec = _field(recipe, section)
        name, distribution = _field(spec, key), _field(spec, "distribution")
        if isinstance(name, str) and isinstance(distribution, str) and distribution.strip():
            choices[f"{kind}:{name}"] = _normal(distribution)
    return choices


@contextlib.contextmanager
def recipe_plugins(recipe: Any) -> Iterator[None]:
    """Apply a recipe's plugin settings (a ``Recipe`` or its dict, e.g. from a run's metrics.json):
    its ``plugins:`` allow-list and the distribution its strategy and task sections name.

    Within this block ``get_registry()`` maps a shared name to the distribution the recipe chose.
    """
    token = _recipe_choices.set(frozenset(recipe_choices(recipe).items()))
    try:
        with restricted_to(_field(recipe, "plugins")):
            yield
    finally:
        _recipe_choices.reset(token)


# The package this code was imported from: adaptkit's own distribution is the one that installed it.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _where(dist: metadata.Distribution) -> str:
    """The metadata folder of ``dist`` (``.../x.dist-info``), resolved: one installed copy, once."""
    path = getattr(dist, "_path", None)  # PathDistribution, the only kind sys.path finders make
    if path is None:
        return f"<{type(dist).__name__} {id(dist)}>"
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)


def _installs_running_code(dist: metadata.Distribution) -> bool:
    """Whether ``dist`` is the installed copy of the adaptkit this process imported.

    The name proves nothing (any package can call itself ``AdaptKit``), so this asks where the
    files are: a regular install (or a source tree's egg-info) lists ``adaptkit/__init__.py`` next to
    its metadata folder, and that file is the one running; an editable install records in
    ``direct_url.json`` (PEP 610) the source folder the running package lives in.
    """
    running = _PACKAGE_DIR / "__init__.py"
    try:
        for file in dist.files or []:
            if file.as_posix() == f"{_PACKAGE_DIR.name}/__init__.py" and \
                    Path(str(dist.locate_file(file))).resolve() == running:
                return True
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except (OSError, ValueError):
        return False
    if not isinstance(direct, dict) or not (direct.get("dir_info") or {}).get("editable"):
        return False
    url = urllib.parse.urlparse(str(direct.get("url", "")))
    if url.scheme != "file":
        return False
    root = Path(urllib.request.url2pathname(url.path)).resolve()
    return _PACKAGE_DIR == root or root in _PACKAGE_DIR.parents


def _entry_points() -> list[metadata.EntryPoint]:
    """Every ``adaptkit`` entry point of every installed distribution, each bound to its own.

    ``metadata.entry_points()`` keeps one distribution per normalised name, the first on
    ``sys.path``: a package named ``AdaptKit`` placed earlier would hide every first-party plugin
    and serve its own ``lora`` as adaptkit's. So the distributions are read one by one; a copy seen
    twice through two ``sys.path`` entries counts once, and of several copies of adaptkit's own
    metadata (a source tree's egg-info and the installed dist-info) only the first is read. Any
    other distribution under adaptkit's name is a third party here (see ``_describe``), so its
    names conflict with the first-party ones instead of replacing them.
    """
    found: list[tuple[metadata.EntryPoint, bool]] = []
    seen: set[str] = set()
    own_seen = False
    for dist in metadata.distributions():
        where = _where(dist)
        if where in seen:
            continue
        seen.add(where)
        try:
            name = dist.metadata["Name"] or ""
            points = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception:  # unreadable metadata of some unrelated package must not stop discovery
            continue
        if not points:
            continue
        own = _normal(name) == CORE_DISTRIBUTION and _installs_running_code(dist)
        if own and own_seen:
            continue
        own_seen = own_seen or own
        found.extend((ep, own) for ep in points)
    # By entry-point name, adaptkit's own first where a name is shared: never by sys.path order.
    return [ep for ep, own in sorted(found, key=lambda pair: (pair[0].name, not pair[1]))]


def _describe(ep: metadata.EntryPoint) -> PluginInfo:
    """One entry point as ``adaptkit plugins`` lists it.

    A distribution named like adaptkit (``AdaptKit``, or ``adaptkit`` itself in another folder)
    that is not the installed copy of the running code gets a name that says so and where it is:
    it then never counts as first-party, in conflicts, in a recipe's ``distribution: adaptkit`` or
    in the always-allowed ``adaptkit`` of a ``plugins:`` list.
    """
    dist = ep.dist
    name = dist.metadata["Name"] if dist is not None else "unknown"
    if dist is not None and _normal(name) == CORE_DISTRIBUTION and not _installs_running_code(dist):
        name = f"{name} (not adaptkit's own: {_where(dist)})"
    return PluginInfo(
        name=ep.name,
        distribution=name,
        version=dist.version if dist is not None else "unknown",
        module=ep.value,
    )


def _explain(exc: BaseException) -> str:
    """An exception as one line; ``SystemExit`` says what it means, since its text is just a code."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): it called sys.exit()"
    return f"{type(exc).__name__}: {exc}"


def _add_error(info: PluginInfo, message: str) -> None:
    info.error = message if not info.error else f"{info.error}; {message}"


def _collect(hook: Any, kind: str) -> list[type]:
    """Call one plugin's registration hook and return the classes it registered (checked)."""
    collected: list[type] = []

    def register(cls: type) -> None:
        base = {"strategy": Strategy, "task": Task, "baseline": Baseline}[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise AdaptkitError(f"register() was given {cls!r}, not a subclass of adaptkit.{base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise AdaptkitError(f"{kind} class {cls!r} has no string 'name' attribute")
        if not SAFE_NAME.match(name):
            raise AdaptkitError(f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-', '.', '+' "
                                f"(it becomes part of folder names)")
        if any(seen.name == name for seen in collected):
            raise AdaptkitError(f"{kind} name {name!r} is registered twice by this plugin")
        collected.append(cls)

    returned = hook(register=register)
    if returned is not None:
        raise AdaptkitError(f"it returned {type(returned).__name__}, not None: call register(cls) instead")
    return collected


def _claim_order(info: PluginInfo) -> tuple[bool, str, str]:
    """First-party first, then by distribution and entry-point name: never by what sorts first alone."""
    return (_normal(info.distribution) != CORE_DISTRIBUTION, _normal(info.distribution), info.name)


def _who(info: PluginInfo) -> str:
    return f"distribution {info.distribution} {info.version} (plugin {info.name!r})"


def _list_claimants(found: list[tuple[PluginInfo, type]]) -> str:
    return " and ".join(_who(info) for info, _ in found)


def _ambiguity(kind: str, name: str, found: list[tuple[PluginInfo, type]]) -> str:
    section, key = _SECTION_KEY.get(kind, (kind, "name"))
    picks = " or ".join(f"`{section}: {{{key}: {name}, distribution: {info.distribution}}}`" for info, _ in found)
    return (f"{kind} name {name!r} is registered by more than one distribution: {_list_claimants(found)}; "
            f"adaptkit will not guess which code to run: say which in the recipe, {picks} "
            f"(or uninstall one, or leave it out with the recipe's plugins: list or {ALLOW_LIST_ENV})")


def _settle(claims: dict[str, list[tuple[PluginInfo, type]]]) -> tuple[dict[str, _Table], dict[str, PluginInfo]]:
    """Give each name with a single distribution behind it to that plugin; refuse shared names.

    Two entry points of one distribution that register the same name are that distribution's own
    bug: the first (by entry-point name) keeps it and the other is marked. A name registered by
    several distributions belongs to none of them until a recipe chooses; each plugin that is not
    first-party is marked with an error naming every distribution involved.
    """
    tables = {kind: _Table() for kind in KINDS}
    owners: dict[str, PluginInfo] = {}
    for key in sorted(claims):
        kind, _, name = key.partition(":")
        found: list[tuple[PluginInfo, type]] = []
        for info, cls in sorted(claims[key], key=lambda claim: _claim_order(claim[0])):
            twin = next((other for other, _ in found if _normal(other.distribution) == _normal(info.distribution)), None)
            if twin is not None:
                _add_error(info, f"{kind} name {name!r} is already registered by plugin {twin.name!r} of the same "
                                 f"distribution {info.distribution}; this one is ignored")
                _names(info, kind).remove(name)
                continue
            found.append((info, cls))
        claims[key] = found
        if len(found) == 1:
            tables[kind][name] = found[0][1]
            owners[key] = found[0][0]
            continue
        tables[kind].refused[name] = _ambiguity(kind, name, found)
        section, field_name = _SECTION_KEY.get(kind, (kind, "name"))
        for info, _ in found:
            others = [other for other, _ in found if other is not info]
            info.conflicts.append(f"{kind}:{name}, also registered by "
                                  f"{', '.join(_who(other) for other in others)}")
            if _normal(info.distribution) != CORE_DISTRIBUTION:
                _add_error(info, f"{info.describe()}: {kind} name {name!r} is also registered by "
                                 f"{', '.join(_who(other) for other in others)}: refused unless a recipe names "
                                 f"the distribution, e.g. `{section}: {{{field_name}: {name}, "
                                 f"distribution: {info.distribution}}}`")
    return tables, owners


def _names(info: PluginInfo, kind: str) -> list[str]:
    """The list of ``kind`` names a plugin registered, as ``adaptkit plugins`` shows them."""
    return {"strategy": info.strategies, "task": info.tasks, "baseline": info.baselines}[kind]


def build_registry(extra_plugins: list[tuple[str, object]] | None = None) -> Registry:
    """Build a fresh plugin manager from entry points (plus ``extra_plugins``, for tests)."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    lists = _allow_lists()
    plugins: list[PluginInfo] = []
    claims: dict[str, list[tuple[PluginInfo, type]]] = {}

    candidates: list[tuple[PluginInfo, Any]] = []
    for ep in _entry_points():
        info = _describe(ep)
        if not _allowed(info, lists):
            continue
        plugins.append(info)
        try:
            module = ep.load()
        except KeyboardInterrupt:  # the user's Ctrl-C, not the plugin's doing
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit()) must not break the others
            info.error = f"{info.describe()} failed to import {ep.value!r}: {_explain(exc)}"
            continue
        candidates.append((info, module))
    for name, module in extra_plugins or []:
        info = PluginInfo(name=name, distribution="(registered in code)", version="-", module=name)
        plugins.append(info)
        candidates.append((info, module))

    for info, module in candidates:
        if manager.is_registered(module):
            # Another copy of adaptkit's metadata (an older install beside the running one) names the
            # same modules: registering one twice is refused, and undoing that would unregister the first.
            _add_error(info, f"{info.describe()}: module {info.module!r} is already loaded as plugin "
                             f"{manager.get_name(module)!r}; this entry point is ignored")
            continue
        try:
            # Two distributions may use one entry-point name (an impostor's "lora"): the plugin
            # manager's name must not let the first one registered lock the other out.
            manager.register(module, name=f"{info.name} ({info.distribution})")
            manager.check_pending()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            if manager.is_registered(module):
                manager.unregister(module)
            info.error = f"{info.describe()} has an invalid hook implementation: {_explain(exc)}"
            continue
        info.hooks = sorted(
            impl_hook.name for impl_hook in manager.get_hookcallers(module) or []
        )
        _guard_hooks(manager, module, info)
        for kind, hook_name in KINDS.items():
            impl = getattr(module, hook_name, None)
            if impl is None:
                continue
            try:
                classes = _collect(impl, kind)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                _add_error(info, f"{info.describe()}: {hook_name} failed: {_explain(exc)}")
                continue
            for cls in classes:
                claims.setdefault(f"{kind}:{cls.name}", []).append((info, cls))
                _names(info, kind).append(cls.name)
    tables, owners = _settle(claims)
    return Registry(manager, plugins, tables["strategy"], tables["task"], owners, claims, tables["baseline"])


@functools.lru_cache(maxsize=8)
def _cached_registry(allowed: tuple[frozenset[str] | None, frozenset[str] | None]) -> Registry:
    return build_registry()


@functools.lru_cache(maxsize=32)
def _cached_choice(allowed: tuple[frozenset[str] | None, frozenset[str] | None], choices: frozenset) -> Registry:
    return _cached_registry(allowed).choosing(dict(choices))


def get_registry() -> Registry:
    """The process-wide registry for the active allow-list and recipe choices, built on first use
    (never at import time)."""
    key = _allow_lists()
    choices = _recipe_choices.get()
    return _cached_choice(key, choices) if choices else _cached_registry(key)


def reset_registry() -> None:
    """Forget the cached registries, so newly installed plugins are seen (tests use this)."""
    _cached_registry.cache_clear()
    _cached_choice.cache_clear()


get_registry.cache_clear = reset_registry  # the name older callers used



def plugin_model_folder(name: str) -> str | None:
    """The first plugin's folder for model ``name`` (``adaptkit_resolve_model``), or None: what
    ``sources.resolve_model_source`` asks first, through ``sources.plugin_model_folder``."""
    return get_registry().manager.hook.adaptkit_resolve_model(name=name)


sources.plugin_model_folder = plugin_model_folder  # sources cannot import the registry, which builds on it

# ---------------------------------------------------------------------------- what is installed, by name
# ``adaptkit`` exports these four; the core imports them from here, its own layer.

def list_strategies() -> dict[str, type[Strategy]]:
    """Every installed strategy, by name, as registered through entry points."""
    return dict(get_registry().strategies)


def list_baselines() -> dict[str, type[Baseline]]:
    """Every installed baseline (a model trained without pretraining), by name."""
    return dict(get_registry().baselines)


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; the error suggests the closest name."""
    strategies = list_strategies()
    if name not in strategies:
        close = difflib.get_close_matches(name, list(strategies), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AdaptkitError(f"unknown strategy {name!r}{hint} (installed: {', '.join(sorted(strategies))})")
    return strategies[name]


def list_plugins() -> list[PluginInfo]:
    """Every plugin entry point found, with version, what it registered, and any error."""
    return list(get_registry().plugins)


# ---------------------------------------------------------------------------- guarded hooks

def _check_answer(hook: str, value: Any) -> str | None:
    """What is wrong with a hook's return value, or None when it has the promised type."""
    if hook == "adaptkit_resolve_model":
        if value is None or isinstance(value, (str, os.PathLike)):
            return None
        return f"returned {type(value).__name__} {value!r:.60}, not a folder path (str) or None"
    return None


def _guard_hooks(manager: pluggy.PluginManager, module: Any, info: PluginInfo) -> None:
    """Wrap each of the plugin's hook implementations so failures name the plugin and the hook."""
    for caller in manager.get_hookcallers(module) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is not module or getattr(impl.function, "_adaptkit_guarded", False):
                continue
            impl.function = _guarded(impl.function, caller.name, info)


def _guarded(function: Any, hook: str, info: PluginInfo) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            value = function(*args, **kwargs)
        except (AdaptkitError, KeyboardInterrupt):
            # An AdaptkitError is the plugin refusing on purpose with a message meant for the user
            # (the packaged-models plugin's "pip install ..." advice): it is shown as the plugin wrote it.
            raise
        except BaseException as exc:  # sys.exit() inside a hook too: it must not end the command unnamed
            raise PluginError(f"{info.describe()} failed in hook {hook}: {_explain(exc)}") from exc
        problem = _check_answer(hook, value)
        if problem:
            raise PluginError(f"{info.describe()} broke hook {hook}: it {problem}")
        return value

    call._adaptkit_guarded = True  # type: ignore[attr-defined]
    call.__name__ = getattr(function, "__name__", hook)
    return call


def _plugin_modules(registry: Registry) -> dict[str, PluginInfo]:
    found: dict[str, PluginInfo] = {}
    for info in registry.plugins:
        found.setdefault(info.module.split(":")[0].split(".")[0], info)
    for key, info in registry.owners.items():
        kind, _, name = key.partition(":")
        cls = (registry.strategies if kind == "strategy" else registry.tasks).get(name)
        if cls is not None:
            found.setdefault(cls.__module__.split(".")[0], info)
    return found


def name_plugin(exc: BaseException, where: str) -> BaseException:
    """Append ``[where]`` (the plugin behind ``exc``) to its message, once: the first layer that knows
    the plugin names it and marks the exception, so the layers it passes through later do not name it
    again. Decided here, not by searching the message's text. Returns ``exc``."""
    if where and not getattr(exc, "plugin_named", False):
        exc.args = (f"{exc} [{where}]",)
        exc.plugin_named = True  # type: ignore[attr-defined]
    return exc


def mark_plugin_named(exc: BaseException) -> BaseException:
    """Mark ``exc`` as already naming its plugin (its message was written with it)."""
    exc.plugin_named = True  # type: ignore[attr-defined]
    return exc


def blame(exc: BaseException, registry: Registry | None = None) -> tuple[PluginInfo, str] | None:
    """The plugin whose code raised ``exc`` (innermost plugin frame) and the function it was in."""
    registry = registry or get_registry()
    modules = _plugin_modules(registry)
    culprit = None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        if module in modules:
            culprit = (modules[module], tb.tb_frame.f_code.co_qualname
                       if hasattr(tb.tb_frame.f_code, "co_qualname") else tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return culprit


def plugin_error(exc: BaseException, registry: Registry | None = None) -> PluginError | None:
    """A ``PluginError`` naming the plugin behind an unexpected exception, or None if no plugin is in it."""
    found = blame(exc, registry)
    if found is None:
        return None
    info, function = found
    return mark_plugin_named(PluginError(f"{info.describe()} failed in {function}: {type(exc).__name__}: {exc}"))

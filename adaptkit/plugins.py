"""The one plugin manager: load every entry point of the ``adaptkit`` group, survive bad ones.

Entry points are loaded one at a time, each inside its own ``try``, so one broken plugin
is reported (with its distribution and error) while every other plugin keeps working.
``ADAPTKIT_PLUGINS=dist1,dist2`` restricts loading to the named distributions, and a recipe's
``plugins:`` list restricts it further for that recipe (``adaptkit`` itself, which ships the
first-party strategies and tasks, is always allowed there). Nothing else is ever imported:
plugins come only from installed entry points.

Every hook implementation is called through a guard: an exception inside it, or an answer of
the wrong type, becomes a ``PluginError`` naming the plugin, its distribution and the hook.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from adaptkit import hookspecs
from adaptkit.errors import AdaptkitError, PluginError

ENTRY_POINT_GROUP = "adaptkit"
ALLOW_LIST_ENV = "ADAPTKIT_PLUGINS"
CORE_DISTRIBUTION = "adaptkit"
# A strategy or task name ends up in folder names (compare's runs/<name>-...): one plain component.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")
_recipe_allow: contextvars.ContextVar = contextvars.ContextVar("adaptkit_recipe_plugins", default=None)


@dataclass
class PluginInfo:
    """What ``adaptkit plugins`` shows for one entry point."""

    name: str
    distribution: str
    version: str
    module: str
    strategies: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registry:
    """The loaded plugins and what they registered, keyed by name."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    strategies: dict[str, type]
    tasks: dict[str, type]
    owners: dict[str, PluginInfo]

    def plugin_for(self, kind: str, name: str) -> PluginInfo | None:
        return self.owners.get(f"{kind}:{name}")


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _allowed_distributions() -> set[str] | None:
    """The distributions that may load: the env allow-list, narrowed by the active recipe's ``plugins:``."""
    raw = os.environ.get(ALLOW_LIST_ENV)
    allowed = None
    if raw is not None and raw.strip():
        allowed = {_normal(part) for part in raw.split(",") if part.strip()}
    recipe = _recipe_allow.get()
    if recipe is not None:
        allowed = set(recipe) if allowed is None else allowed & set(recipe)
    return allowed


@contextlib.contextmanager
def restricted_to(distributions: list[str] | None):
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


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _describe(ep: metadata.EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(
        name=ep.name,
        distribution=dist.metadata["Name"] if dist is not None else "unknown",
        version=dist.version if dist is not None else "unknown",
        module=ep.value,
    )


def _register_from(info: PluginInfo, hook: Any, kind: str, table: dict[str, type],
                   owners: dict[str, PluginInfo]) -> None:
    """Call one plugin's registration hook, recording names and refusing duplicates."""
    collected: list[type] = []

    def register(cls: type) -> None:
        from adaptkit.strategy import Strategy
        from adaptkit.task import Task

        base = Strategy if kind == "strategy" else Task
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise AdaptkitError(f"register() was given {cls!r}, not a subclass of adaptkit.{base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise AdaptkitError(f"{kind} class {cls!r} has no string 'name' attribute")
        if not SAFE_NAME.match(name):
            raise AdaptkitError(f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-', '.', '+' "
                                f"(it becomes part of folder names)")
        collected.append(cls)

    returned = hook(register=register)
    if returned is not None:
        raise AdaptkitError(f"it returned {type(returned).__name__}, not None: call register(cls) instead")
    for cls in collected:
        key = f"{kind}:{cls.name}"
        if key in owners:
            other = owners[key]
            raise AdaptkitError(
                f"{kind} name {cls.name!r} is registered twice: by plugin {other.name!r} "
                f"(distribution {other.distribution} {other.version}) and by plugin "
                f"{info.name!r} (distribution {info.distribution} {info.version}); "
                f"uninstall one of them"
            )
        table[cls.name] = cls
        owners[key] = info
        (info.strategies if kind == "strategy" else info.tasks).append(cls.name)


def build_registry(extra_plugins: list[tuple[str, object]] | None = None) -> Registry:
    """Build a fresh plugin manager from entry points (plus ``extra_plugins``, for tests)."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    allowed = _allowed_distributions()
    plugins: list[PluginInfo] = []
    strategies: dict[str, type] = {}
    tasks: dict[str, type] = {}
    owners: dict[str, PluginInfo] = {}

    candidates: list[tuple[PluginInfo, Any]] = []
    for ep in _entry_points():
        info = _describe(ep)
        if allowed is not None and info.distribution.lower().replace("_", "-") not in allowed:
            continue
        plugins.append(info)
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            info.error = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
            continue
        candidates.append((info, module))
    for name, module in extra_plugins or []:
        info = PluginInfo(name=name, distribution="(registered in code)", version="-", module=name)
        plugins.append(info)
        candidates.append((info, module))

    for info, module in candidates:
        try:
            manager.register(module, name=info.name)
            manager.check_pending()
        except Exception as exc:
            if manager.is_registered(module):
                manager.unregister(module)
            info.error = f"invalid hook implementation: {exc}"
            continue
        info.hooks = sorted(
            impl_hook.name for impl_hook in manager.get_hookcallers(module) or []
        )
        _guard_hooks(manager, module, info)
        for kind, hook_name, table in (
            ("strategy", "adaptkit_register_strategies", strategies),
            ("task", "adaptkit_register_tasks", tasks),
        ):
            impl = getattr(module, hook_name, None)
            if impl is None:
                continue
            try:
                _register_from(info, impl, kind, table, owners)
            except Exception as exc:
                info.error = f"{hook_name} failed: {type(exc).__name__}: {exc}"
    return Registry(manager, plugins, strategies, tasks, owners)


@functools.lru_cache(maxsize=8)
def _cached_registry(allowed: frozenset | None) -> Registry:
    return build_registry()


def get_registry() -> Registry:
    """The process-wide registry for the active allow-list, built on first use (never at import time)."""
    allowed = _allowed_distributions()
    return _cached_registry(frozenset(allowed) if allowed is not None else None)


def reset_registry() -> None:
    """Forget the cached registries, so newly installed plugins are seen (tests use this)."""
    _cached_registry.cache_clear()


get_registry.cache_clear = reset_registry  # the name older callers used


# ---------------------------------------------------------------------------- guarded hooks

def _describe_plugin(info: PluginInfo) -> str:
    return f"plugin {info.name!r} (distribution {info.distribution} {info.version})"


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
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{_describe_plugin(info)} failed in hook {hook}: "
                              f"{type(exc).__name__}: {exc}") from exc
        problem = _check_answer(hook, value)
        if problem:
            raise PluginError(f"{_describe_plugin(info)} broke hook {hook}: it {problem}")
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
    return PluginError(f"{_describe_plugin(info)} failed in {function}: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- conformance

@dataclass
class StrategyCheck:
    """One strategy's result in ``adaptkit plugins --check``."""

    strategy: str
    plugin: str
    distribution: str
    passed: bool
    detail: str


def check_installed(names: list[str] | None = None, families: list[str] | None = None) -> list[StrategyCheck]:
    """Run the conformance kit (``adaptkit.testing.check_strategy``) on installed strategies.

    ``names`` limits it to some strategies (an unknown name is an error). A failure of one
    strategy, contract or crash, is recorded and the others are still checked.
    """
    from adaptkit.testing import check_strategy

    registry = get_registry()
    chosen = sorted(registry.strategies) if not names else list(names)
    unknown = [n for n in chosen if n not in registry.strategies]
    if unknown:
        raise AdaptkitError(f"--check: unknown strateg{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(map(repr, unknown))} (installed: {', '.join(sorted(registry.strategies))})")
    results = []
    for name in chosen:
        owner = registry.plugin_for("strategy", name)
        plugin, dist = (owner.name, f"{owner.distribution} {owner.version}") if owner else ("?", "?")
        try:
            report = check_strategy(registry.strategies[name], None, families)
        except Exception as exc:  # a contract violation or a crash: this strategy fails, the rest go on
            results.append(StrategyCheck(name, plugin, dist, False, f"{type(exc).__name__}: {exc}"))
        else:
            results.append(StrategyCheck(name, plugin, dist, True, f"{len(report.passed)} checks passed"))
    return results

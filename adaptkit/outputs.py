"""Output folders that are complete or absent: written aside, then renamed into place."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from adaptkit.errors import AdaptkitError


def check_output_dir(directory: Path, overwrite: bool) -> None:
    """Refuse to touch a non-empty output folder unless ``overwrite`` was asked for."""
    if directory.exists() and not directory.is_dir():
        raise AdaptkitError(f"output.dir {directory} exists and is not a folder")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise AdaptkitError(f"output.dir {directory} already holds results; pass --overwrite "
                            f"(or overwrite=True) to replace them, or choose another output.dir")


@contextmanager
def staged_output(directory: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``directory`` in one rename.

    A run that fails or is killed leaves the previous results untouched and no half-written
    folder under the real name.
    """
    check_output_dir(directory, overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
    os.replace(staging, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)

"""Output folders that are complete or absent: written aside, then renamed into place."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Optional

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
    replace_folder(staging, directory)


def replace_folder(source: Path, target: Path) -> None:
    """Put the finished folder ``source`` at ``target``; an existing ``target`` is set aside first
    and removed only after the rename, so at every moment one complete folder has the name."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")  # checkpoint pruning removes .old-*
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: Path, newline: Optional[str] = None) -> Iterator[IO[str]]:
    """A text handle on a temporary sibling that becomes ``path`` in one rename when the block
    ends; a failure removes it, so readers see the old file or the whole new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline=newline) as handle:
            yield handle
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half of it."""
    with atomic_file(path) as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def safe_join(root: Path, *names: str) -> Path:
    """``root / name / ...`` for names that come from input (data, plugins, saved state).

    Each name must be one plain path component: not empty, not ``.`` or ``..``, no path
    separator, no NUL, not absolute. Anything else is refused, so no name read from a file or
    given by a plugin can put a file outside ``root``.
    """
    path = Path(root)
    for name in names:
        text = str(name)
        if (not text or text in (".", "..") or "/" in text or "\\" in text or "\x00" in text
                or Path(text).is_absolute() or Path(text).name != text):
            raise AdaptkitError(f"refusing the name {text!r} for a file or folder under {root}: "
                                f"names from input must be one plain path component (no '..', '/' or absolute paths)")
        path = path / text
    return path


def lock_path(directory: Path) -> Path:
    """The lock file of a run into ``directory``: a sibling named ``<name>.lock``."""
    directory = Path(directory)
    return directory.with_name(directory.name + ".lock")


@contextmanager
def run_lock(directory: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<output.dir>.lock`` for the length of a run.

    A second run into the same folder is refused with the holder's PID instead of writing
    files in between the first one's. The lock is an ``fcntl.flock`` on the file, which the
    kernel drops when its holder dies however it dies, so the file of a killed run (a stale
    lock) is simply taken over by the next run.
    """
    import fcntl

    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise AdaptkitError(f"another adaptkit run (PID {holder}) is writing to {directory}: it holds the lock "
                                f"{path}. Wait for it to finish, or stop it, or choose another output.dir") from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)

"""Output folders that are complete or absent: written aside, then renamed into place.

Every folder adaptkit writes carries a manifest, ``.adaptkit-manifest.json``, that lists the
files it wrote there. ``--overwrite`` replaces a folder only when everything in it is listed
(or belongs to a nested adaptkit folder with its own manifest): a folder that also holds the
user's own files (data, notes, the recipe) is refused and those files are named, because the
replacement deletes the old folder as a whole and a user's file must never go with it.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional

from adaptkit._version import __version__
from adaptkit.errors import AdaptkitError
from adaptkit.engine.write_errors import describe_write_error, disk_write_errno, free_space

MANIFEST = ".adaptkit-manifest.json"
# What adaptkit writes beside a folder for a moment (staged_output's staging folder, replace_folder's
# set-aside copy, atomic_file's temporary file) is named with this prefix, a kind and a random part:
# a kill leaves it behind, and --overwrite may then delete it as adaptkit's. A name a person would
# pick (`.thesis.partial-abcd1234`, `.old-drafts-2023`) never matches, so it is never deleted.
TEMP_PREFIX = ".adaptkit-"
_PARTIAL = re.compile(r"^\.adaptkit-(partial|old|tmp)-.+-[A-Za-z0-9_]{8}$")
# A checkpoint folder (adaptkit.engine.checkpoint) holds checkpoints under the names it gives them,
# its manifest and the trackers' logs/ (each file listed by that manifest: see record_checkpoint_logs).
# The temporary names are also what a killed save leaves and pruning removes (CHECKPOINT_LEFTOVER);
# `.old-step-<N>-<pid>` is the set-aside name older versions used. Anything else is the user's.
_STEP = r"(step-\d{8,}|best-epoch-\d{4,})"
CHECKPOINT_LEFTOVER = re.compile(rf"^(\.tmp-{_STEP}|\.old-{_STEP}-\d+|\.adaptkit-(old|tmp)-.+-[A-Za-z0-9_]{{8}})$")
CHECKPOINT_ENTRY = re.compile(rf"^((damaged-)?{_STEP}|logs|{re.escape(MANIFEST)}|{CHECKPOINT_LEFTOVER.pattern[1:-1]})$")
CHECKPOINT_LOGS = "logs"
_NAMED_MAX = 5  # foreign files named in a refusal; the scan stops there (a home folder is not walked)


def _read_manifest(folder: Path) -> Optional[set[str]]:
    """The files the manifest in ``folder`` lists (relative POSIX paths), or None without one."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return {str(name) for name in [*data["files"], *data.get("added", [])] if isinstance(name, str)}


def write_manifest(folder: Path, kind: str, names: Optional[Iterable[str]] = None) -> None:
    """Record what adaptkit wrote in ``folder``: every file below it, or below the given ``names``.

    The manifest is what lets ``--overwrite`` tell an earlier adaptkit output from a folder
    of the user's (see ``foreign_entries``).
    """
    folder = Path(folder)
    roots = [folder / name for name in names] if names is not None else [folder]
    files: set[str] = set()
    for root in roots:
        if root.is_file() or root.is_symlink():
            files.add(root.relative_to(folder).as_posix())
        elif root.is_dir():
            for path in root.rglob("*"):
                if not path.is_dir() or path.is_symlink():
                    files.add(path.relative_to(folder).as_posix())
    files.discard(MANIFEST)
    write_json(folder / MANIFEST, {"written_by": f"adaptkit {__version__}", "kind": kind, "files": sorted(files)})


def record_in_manifest(path: Path) -> None:
    """Add ``path`` to the manifest of the adaptkit folder it was written into, if it is in one
    (predictions written into a run folder stay replaceable by a later ``run --overwrite``)."""
    path = Path(path)
    manifest = path.parent / MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and path.name not in data.get("files", []) + data.get("added", []):
        data["added"] = sorted({*data.get("added", []), path.name})
        write_json(manifest, data)


def manifest_files(folder: Path) -> set[str]:
    """The files of the run in ``folder`` itself (not later additions such as predictions)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        return {str(name) for name in data.get("files", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def _checkpoint_foreign(root: Path) -> list[str]:
    """Entries of a checkpoint folder that checkpointing does not make (folders end in ``/``), and
    files under its ``logs/`` that its manifest does not list (``record_checkpoint_logs``): the
    trackers' file names are not known in advance, so only a record tells them from a user's notes."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        return [f"(unreadable: {exc.strerror})"]
    found = [entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "")
             for entry in entries if not CHECKPOINT_ENTRY.match(entry.name)]
    logs = Path(root) / CHECKPOINT_LOGS
    if logs.is_symlink() or (logs.exists() and not logs.is_dir()):
        found.append(CHECKPOINT_LOGS)
    elif logs.is_dir():
        listed = _read_manifest(Path(root)) or set()
        found.extend(name for name in _tree_files(Path(root), logs) if name not in listed)
    return found


def _tree_files(base: Path, top: Path) -> list[str]:
    """Every file, link and empty folder under ``top`` (relative to ``base``; folders end in ``/``),
    links not followed."""
    found: list[str] = []
    for directory, folders, files in os.walk(top):
        here = Path(directory)
        found.extend((here / name).relative_to(base).as_posix() for name in files)
        for name in list(folders):
            if (here / name).is_symlink():
                found.append((here / name).relative_to(base).as_posix())
                folders.remove(name)
        if not folders and not files and here != top:
            found.append(here.relative_to(base).as_posix() + "/")
    return sorted(found)


def record_checkpoint_logs(root: Path) -> None:
    """List in the checkpoint folder's manifest every file its ``logs/`` holds now.

    Called while this process writes the folder (after the trackers start, at each checkpoint,
    before the folder is removed): a run starts only when every file already there is listed
    (``check_checkpoint_dir``), so what is unlisted now was written by this run's trackers, and a
    later ``--overwrite`` or the end of a run may delete it. A user's file that was there before is
    never listed.
    """
    root = Path(root)
    logs = root / CHECKPOINT_LOGS
    if not logs.is_dir() or logs.is_symlink():
        return
    listed = (_read_manifest(root) or set()) | set(_tree_files(root, logs))
    write_json(root / MANIFEST, {"written_by": f"adaptkit {__version__}", "kind": "checkpoints",
                                 "files": sorted(listed)})


def remove_checkpoint_dir(root: Path) -> None:
    """Delete a checkpoint folder that ``check_checkpoint_dir`` passed: its checkpoints and the
    ``logs/`` files its manifest lists. Anything else (a file put there since) is left, with the
    folders above it."""
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return
    listed = _read_manifest(root) or set()
    for entry in os.scandir(root):
        if entry.name in (CHECKPOINT_LOGS, MANIFEST) or not CHECKPOINT_ENTRY.match(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
    logs = root / CHECKPOINT_LOGS
    if logs.is_dir() and not logs.is_symlink():
        for name in _tree_files(root, logs):
            if name in listed and not name.endswith("/"):
                (root / name).unlink(missing_ok=True)
        for directory, _, _ in sorted(os.walk(logs), key=lambda item: -len(item[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only once empty
    if not (logs.exists() or logs.is_symlink()):
        (root / MANIFEST).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()


def _is_leftover(entry: os.DirEntry) -> bool:
    """Beside a run folder (e.g. a compare's ``runs/``): what a kill left of adaptkit's own writing.

    A staging or set-aside folder, or a temporary file, by its ``.adaptkit-`` name with a random
    part. A lock ``X.lock`` (its name is documented, so not unusual) only when it holds a PID or
    nothing and belongs to an adaptkit output beside it: ``X`` with a manifest, ``X.checkpoints``, or
    a staging folder of ``X``. A user's ``exam.lock`` that happens to hold digits is none of these.
    """
    if _PARTIAL.match(entry.name):
        return entry.is_dir(follow_symlinks=False) or (entry.is_file(follow_symlinks=False)
                                                       and entry.name.startswith(f"{TEMP_PREFIX}tmp-"))
    if entry.name.endswith(".lock") and entry.is_file(follow_symlinks=False):
        try:
            if entry.stat().st_size > 32 or not re.fullmatch(r"\d*", Path(entry.path).read_text().strip()):
                return False
        except (OSError, UnicodeDecodeError):
            return False
        owner = Path(entry.path).with_name(entry.name[:-len(".lock")])
        return ((owner / MANIFEST).is_file() or owner.with_name(owner.name + ".checkpoints").is_dir()
                or any(owner.parent.glob(f"{glob.escape(TEMP_PREFIX)}partial-{glob.escape(owner.name)}-*")))
    return False


def foreign_entries(folder: Path, limit: int = _NAMED_MAX) -> list[str]:
    """Up to ``limit`` paths under ``folder`` (relative, folders ending in ``/``) that adaptkit
    did not write: not listed by the manifest that covers them and not an adaptkit leftover.

    Without a manifest in ``folder`` everything in it is foreign. Below it, a sub-folder with
    its own manifest (a compare's run folders) is judged by that manifest; an unlisted folder is
    looked into, and an empty one counts as foreign. Symlinks are never followed.
    """
    folder = Path(folder)
    found: list[str] = []

    def walk(directory: Path, base: Path, listed: set[str]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            found.append(f"{directory.relative_to(folder).as_posix() or '.'}/ (unreadable: {exc.strerror})")
            return
        if not entries and directory != folder and directory.relative_to(base).as_posix() not in listed:
            found.append(directory.relative_to(folder).as_posix() + "/")
        for entry in entries:
            if len(found) >= limit:
                return
            path = Path(entry.path)
            relative = path.relative_to(base).as_posix()
            if entry.is_dir(follow_symlinks=False):
                own = _read_manifest(path)
                if own is not None:
                    walk(path, path, own)
                elif entry.name.endswith(".checkpoints") and relative not in listed:
                    found.extend(f"{path.relative_to(folder).as_posix()}/{name}"
                                 for name in _checkpoint_foreign(path))
                elif not _is_leftover(entry):
                    walk(path, base, listed)
            elif not (relative in listed or (path.parent == base and entry.name == MANIFEST)
                      or _is_leftover(entry)):
                found.append(path.relative_to(folder).as_posix())

    listed = _read_manifest(folder)
    if listed is None:  # not a folder adaptkit made: whatever is in it is the user's
        return [entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "")
                for entry in sorted(os.scandir(folder), key=lambda e: e.name)][:limit]
    walk(folder, folder, listed)
    return found[:limit]


def foreign_entries_error(directory: Path, foreign: list[str], what: str) -> AdaptkitError:
    """The refusal to replace ``directory`` (``what`` names it: output.dir, --output, ...) holding ``foreign`` entries."""
    named = ", ".join(foreign) + (" and perhaps more" if len(foreign) >= _NAMED_MAX else "")
    return AdaptkitError(f"{what} {directory} holds files adaptkit did not write ({named}); adaptkit never "
                         f"replaces or deletes a folder with files of yours in it, --overwrite included. Move "
                         f"them elsewhere, or choose another {what} (an empty or new folder)")


def manifest_kind(folder: Path) -> Optional[str]:
    """The ``kind`` an adaptkit folder's manifest records (run, compare...), or None."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _only_a_manifest(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a manifest listing no file that exists: what a compare
    that failed before its first result leaves. It holds no results, so it blocks nothing."""
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return False
    listed = _read_manifest(folder)
    return names == [MANIFEST] and listed is not None and not any((folder / name).exists() for name in listed)


def check_output_location(directory: Path, what: str = "output.dir") -> None:
    """Refuse, before any work, an output folder that could not be put in place at the end.

    The finished folder replaces ``directory`` by a rename, so a symlink there would be renamed
    aside and a real folder made in its place (a dangling one failed after training, the output
    left hidden in a ``.partial`` folder): a link is refused, naming its target. And the folders
    above it must exist or be creatable: a missing sub-folder of a read-only folder failed only
    after training too.
    """
    directory = Path(directory)
    if directory.is_symlink():
        target = os.readlink(directory)
        state = "" if directory.exists() else ", which does not exist"
        raise AdaptkitError(f"{what} {directory} is a symbolic link (to {target}{state}); adaptkit puts a finished "
                            f"output in place by renaming it, which would replace the link, not write into its "
                            f"target. Give the real folder ({os.path.realpath(directory)}) as {what}, or remove "
                            f"the link")
    check_parent_writable(directory, what)


def check_parent_writable(path: Path, what: str) -> None:
    """The folders above ``path`` exist, or the nearest existing one is a folder that can be written."""
    directory = Path(path)
    ancestor = directory.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # a dangling link above the folder
            raise AdaptkitError(f"{what} {directory}: {ancestor} is a symbolic link to {os.readlink(ancestor)}, "
                                f"which does not exist")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AdaptkitError(f"{what} {directory}: {ancestor} is not a folder, so no folder can be made under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        missing = "" if ancestor == directory.parent else f" (to make {directory.parent})"
        raise AdaptkitError(f"{what} {directory}: cannot write in {ancestor}{missing}: permission denied. "
                            f"Choose a folder you can write to")


def check_output_dir(directory: Path, overwrite: bool, what: str = "output.dir", kind: Optional[str] = None) -> None:
    """Refuse to touch a non-empty output folder unless ``overwrite`` was asked for, and refuse
    even then unless everything in it is adaptkit's own earlier output (``foreign_entries``).

    With ``kind`` (run, compare), a folder whose manifest records another kind is refused too:
    ``compare --output RUN --overwrite`` replaced a finished run with a comparison. A folder that
    holds only a manifest (a compare that failed at once) counts as empty.
    """
    directory = Path(directory)
    check_output_location(directory, what)
    if directory.exists() and not directory.is_dir():
        raise AdaptkitError(f"{what} {directory} exists and is not a folder")
    if directory.exists() and any(directory.iterdir()) and not _only_a_manifest(directory):
        foreign = foreign_entries(directory)
        if foreign:
            raise foreign_entries_error(directory, foreign, what)
        found = manifest_kind(directory)
        if kind is not None and found is not None and found != kind:
            raise AdaptkitError(f"{what} {directory} holds an adaptkit {found} output, not a {kind} one; "
                                f"--overwrite replaces only an output of the same kind. Choose another {what}")
        if not overwrite:
            raise AdaptkitError(f"{what} {directory} already holds results; pass --overwrite "
                                f"(or overwrite=True) to replace them, or choose another {what}")


def check_checkpoint_dir(root: Path) -> None:
    """Refuse a checkpoint folder (``<output.dir>.checkpoints``) holding anything but checkpoints:
    ``--overwrite`` deletes it and the end of a run removes it, which must not take a user's file."""
    root = Path(root)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise AdaptkitError(f"{root} (where this run keeps its checkpoints) exists and is not a folder; "
                            f"move it away or choose another output.dir")
    if root.is_dir():
        foreign = _checkpoint_foreign(root)
        if foreign:
            raise foreign_entries_error(root, foreign[:_NAMED_MAX], "checkpoint folder")


def _run_file(path: Path) -> Optional[Path]:
    """The adaptkit folder ``path`` is one of the files of (listed in the manifest of a folder
    above it, or a run's metrics.json/recipe.yaml/README.md), or None."""
    path = Path(os.path.abspath(path))
    if path.name == MANIFEST:
        return path.parent
    if path.name in ("metrics.json", "recipe.yaml", "README.md") and (path.parent / "metrics.json").is_file():
        return path.parent  # a run written before manifests existed
    for folder in list(path.parents)[:4]:
        if (folder / MANIFEST).is_file():
            return folder if path.relative_to(folder).as_posix() in manifest_files(folder) else None
    return None


def check_output_file(path: Path, overwrite: bool, what: str = "--output") -> None:
    """A file adaptkit is about to write: never a folder, never an existing file without ``overwrite``,
    and never a file of an adaptkit run folder (its metrics.json, weights...), which would break the run."""
    path = Path(path)
    if path.is_dir():
        raise AdaptkitError(f"{what} {path} is a folder; give a file path")
    check_parent_writable(path, what)  # its folder exists or can be made: not found out after predicting
    owner = _run_file(path)
    if owner is not None:
        raise AdaptkitError(f"{what} {path} is one of the files of the adaptkit output in {owner}; writing it "
                            f"would break that output, --overwrite or not. Give another file name")
    if path.exists() and not overwrite:
        raise AdaptkitError(f"{what} {path} already exists; pass --overwrite to replace it, or give another path")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``).

    Kept hand-written: psutil has no umask, and ``os.umask`` can only be read by setting it, which
    for an instant changes it for every thread of the process; elsewhere that is the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(root: Path) -> None:
    """Give the files and folders under ``root`` the modes a plain ``open``/``mkdir`` would.

    ``tempfile.mkdtemp`` makes folders 0700 and safetensors writes weights 0600 whatever the
    umask, so a run folder on a shared machine would be unreadable to colleagues the umask
    lets read it; executables keep their x bits, symlinks are left alone.
    """
    mask = _umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            os.chmod(path, 0o777 & ~mask)
        elif stat.S_ISREG(mode):
            os.chmod(path, (0o777 if mode & 0o111 else 0o666) & ~mask)


@contextmanager
def staged_output(directory: Path, overwrite: bool, kind: str = "run") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``directory`` in one rename.

    A run that fails or is killed leaves the previous results untouched and no half-written
    folder under the real name. The folder gets a manifest of what was written in it, and
    ``directory`` is checked again just before the rename: files a user put there while the
    run trained are not deleted with the old results.

    A write that fails (a full disk: safetensors, torch or Python raising) becomes an
    ``AdaptkitError`` naming the free space left and ``--resume``, which finishes the run from
    its last checkpoint (kept until the folder is in place) once space is freed.
    """
    check_output_dir(directory, overwrite, kind=kind)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}partial-{directory.name}-", dir=directory.parent))
    try:
        yield staging
        write_manifest(staging, kind)
        check_output_dir(directory, overwrite, kind=kind)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        failed = disk_write_errno(exc)
        if failed is None:
            raise
        raise AdaptkitError(f"writing the output folder {directory} failed ({describe_write_error(exc, failed)}); "
                            f"{free_space(directory.parent)} free there. Nothing was replaced. Free some space, "
                            + ("then finish the run with the same command and --resume (its checkpoints are kept)"
                               if kind == "run" else "then run the same command again")) from exc
    replace_folder(staging, directory)


def replace_folder(source: Path, target: Path) -> None:
    """Put the finished folder ``source`` at ``target``; an existing ``target`` is set aside first
    and removed only after the rename, so at every moment one complete folder has the name.
    ``source`` gets the modes the umask asks for (``respect_umask``) before it is renamed."""
    respect_umask(source)
    old = None
    if target.exists():
        # A name of adaptkit's own with a random part (see TEMP_PREFIX): one that already exists,
        # whoever made it, is never deleted to make room; checkpoint pruning removes what a kill left.
        while old is None or old.exists() or old.is_symlink():
            old = target.with_name(f"{TEMP_PREFIX}old-{target.name}-{secrets.token_hex(4)}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: Path, newline: Optional[str] = None, replace: bool = True) -> Iterator[IO[str]]:
    """A text handle on a temporary sibling that becomes ``path`` in one rename when the block
    ends; a failure removes it, so readers see the old file or the whole new one, never half.

    The sibling is made by ``tempfile.mkstemp`` (``.adaptkit-tmp-<name>-<random>``, created
    exclusively): a fixed name such as ``preds.csv.tmp`` could be a user's file, which was
    overwritten and renamed away. It gets the mode the umask gives (mkstemp makes 0600).
    ``replace=False`` never replaces an existing ``path``, not even one made while the block ran
    (the file is linked into place, which fails if the name is taken): an ``AdaptkitError``.
    """
    path = Path(path)
    tmp: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # predict --output new/preds.csv: made, not failed at the end
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}tmp-{path.name[:100]}-", dir=path.parent)
        tmp = Path(name)
        with open(fd, "w", encoding="utf-8", newline=newline) as handle:
            os.chmod(tmp, 0o666 & ~_umask())
            yield handle
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        failed = disk_write_errno(exc)
        if failed is None:
            raise
        raise AdaptkitError(f"writing {path} failed ({describe_write_error(exc, failed)}); "
                            f"{free_space(path.parent if path.parent.exists() else Path('.'))} free there. "
                            f"{path} was not changed; free some space and run the same command again") from exc
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists, unlike a rename
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise AdaptkitError(f"{path} already exists (it appeared while adaptkit wrote); it was not replaced. "
                            f"Pass --overwrite to replace it, or give another path") from None
    except OSError:  # a file system without hard links: the check just made is the best there is
        if path.exists() or path.is_symlink():
            tmp.unlink(missing_ok=True)
            raise AdaptkitError(f"{path} already exists; it was not replaced. Pass --overwrite to replace it, "
                                f"or give another path") from None
        os.replace(tmp, path)
        return
    tmp.unlink(missing_ok=True)


def write_output_file(path: Path, text: str, overwrite: bool = False, what: str = "--output") -> None:
    """Write a file a command was asked for (``schema --output``, ``advise --output``): refused when
    ``path`` exists and ``overwrite`` is off, when it is a folder or a file of an adaptkit output
    (``check_output_file``), and written through a temporary file of a unique name beside it, so no
    file of the user's is replaced except ``path`` itself, and that only with ``overwrite``."""
    check_output_file(Path(path), overwrite, what)
    with atomic_file(Path(path), replace=overwrite) as handle:
        handle.write(text)


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


class _LockFileReplaced(Exception):
    """The lock file was removed or replaced between filelock's open and its lock: lock the new one."""


@contextmanager
def run_lock(directory: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<output.dir>.lock`` for the length of a run.

    A second run into the same folder is refused with the holder's PID instead of writing
    files in between the first one's. The lock is ``filelock``'s (``flock`` on POSIX, ``msvcrt``
    on Windows), which the OS drops when its holder dies however it dies, so the file of a killed
    run (a stale lock) is simply taken over by the next run. Two things are added here: the
    holder's PID is written into the file (a failed write, e.g. a full disk, is ignored: the
    lock holds without it and a refused run then says "PID unknown"), and the file is removed at
    the end while still locked, with each new holder checking that the file it locked is still
    the one at the path (filelock keeps the file on POSIX for exactly this race).
    """
    from filelock import FileLock, Timeout

    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)

    def claim(fd: int) -> None:
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder before us removed it between our open and our lock
            raise _LockFileReplaced()
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass

    for _ in range(100):
        lock = FileLock(str(path), timeout=0, on_acquired=claim)
        try:
            lock.acquire()
            break
        except _LockFileReplaced:
            continue
        except Timeout:
            try:
                holder = path.read_text(errors="replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise AdaptkitError(f"another adaptkit run (PID {holder}) is writing to {directory}: it holds the lock "
                                f"{path}. Wait for it to finish, or stop it, or choose another output.dir") from None
        except OSError as exc:
            raise AdaptkitError(f"cannot create the lock file {path} ({exc.strerror or exc}); check that its "
                                f"folder is writable and has free space") from None
    else:  # pragma: no cover - another process replacing the file a hundred times in a row
        raise AdaptkitError(f"the lock file {path} keeps being replaced by another process; try again")
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:  # gone already; or Windows, where filelock removes it on release
            pass
        lock.release()


# What a run's metrics.json must hold for the run to be loaded again (predict, push).
RUN_SUMMARY_KEYS = ("recipe", "task_state", "export")


def read_run_summary(folder: Path, keys: Iterable[str] = RUN_SUMMARY_KEYS) -> dict[str, Any]:
    """A run folder's metrics.json, parsed and checked to hold ``keys``, else an ``AdaptkitError``
    naming the file, and the line or the key: a truncated or hand-edited file gave a JSONDecodeError
    or a KeyError traceback from ``predict``."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise AdaptkitError(f"{folder} is not an adaptkit run folder (no metrics.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdaptkitError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        summary = json.loads(text)
    except ValueError as exc:
        line = f":{exc.lineno}" if hasattr(exc, "lineno") else ""
        raise AdaptkitError(f"{path}{line}: is not valid JSON ({getattr(exc, 'msg', exc)}); the file is damaged "
                            f"or truncated. Run the recipe again to rewrite the folder") from None
    if not isinstance(summary, dict):
        raise AdaptkitError(f"{path}: holds a {type(summary).__name__}, not the run's summary")
    missing = [key for key in keys if not isinstance(summary.get(key), dict)]
    if missing:
        raise AdaptkitError(f"{path}: lacks {', '.join(repr(key) for key in missing)}, which loading the run needs; "
                            f"the file is damaged or was edited. Run the recipe again to rewrite the folder")
    return summary

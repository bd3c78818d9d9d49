"""What a failed write was: a disk's error (full, over quota, read-only, I/O) told by the
exception's type and errno rather than by words in its message, and the free space to report.

One copy for every writer: ``outputs`` (the output folder, single files) and ``checkpoint``.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import traceback
from pathlib import Path
from typing import Optional

from adaptkit.errors import AdaptkitError, exception_chain

DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})  # no room left (or quota)
DISK_ERRORS = DISK_FULL | {errno.EIO, errno.EFBIG, errno.EROFS}  # the disk's making, not a bug


def safetensors_errno(exc: BaseException) -> Optional[int]:
    """The errno inside a SafetensorError: Rust's io::Error prints it as ``(os error N)``."""
    match = re.search(r"\(os error (\d+)\)", str(exc))
    return int(match.group(1)) if match else None


def raised_by_torch_writer(exc: BaseException) -> bool:
    """torch.save to a path writes through C++ streams: a failed write surfaces as a RuntimeError
    ("[enforce fail at inline_container.cc] unexpected pos", "PytorchStreamWriter failed writing
    file ...: file write failed") with no errno, raised from torch/serialization.py."""
    if not isinstance(exc, RuntimeError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    innermost = frames[-1].filename.replace(os.sep, "/") if frames else ""
    return innermost.endswith("torch/serialization.py") or any(
        marker in str(exc) for marker in ("PytorchStreamWriter", "inline_container.cc"))


def failed_write_errno(exc: BaseException) -> Optional[int]:
    """Whether ``exc`` is a failed write, told by what it is rather than by words in its message.

    Returns the errno when one is known (``errno.ENOSPC``: a full disk), 0 for a failed write
    whose errno was lost on the way (torch's C++ writer), None for anything else, which is a bug
    to re-raise, not a disk problem. Recognised: an OSError; safetensors' SafetensorError (its
    errno is in the text, as Rust prints it); the bare Exception the tokenizers library raises
    for a Rust io::Error (likewise); a RuntimeError from torch's writer; and a
    RuntimeError whose ``__cause__``/``__context__`` chain holds one of those (torch.save to a
    Python file re-raises the file's OSError that way).
    """
    found: Optional[int] = None
    for current in exception_chain(exc):
        if isinstance(current, OSError):
            return current.errno or 0
        if type(current).__name__ == "SafetensorError":
            return safetensors_errno(current) or 0
        if type(current) is Exception and safetensors_errno(current) is not None:
            # the tokenizers library (Rust, through pyo3) raises a bare Exception for an io::Error,
            # "No space left on device (os error 28)", when tokenizer.json cannot be written
            return safetensors_errno(current)
        if not isinstance(current, RuntimeError):
            break  # only torch's wrappers are looked through: any other error is what it says
        if raised_by_torch_writer(current):
            found = 0
    return found


def disk_write_errno(exc: BaseException) -> Optional[int]:
    """The errno of a failed write of the disk's making (``failed_write_errno``: full,
    over quota, read-only, I/O error; 0 when a writer lost the errno), or None: any other error,
    a missing file say, or an AdaptkitError or Ctrl-C, is what it says and is re-raised as it is."""
    if not isinstance(exc, Exception) or isinstance(exc, AdaptkitError):
        return None
    code = failed_write_errno(exc)
    if code is None or (code not in DISK_ERRORS and (code or isinstance(exc, OSError))):
        return None
    return code


def describe_write_error(exc: BaseException, code: int) -> str:
    if code == errno.ENOSPC:
        return "no space left on the device"
    return os.strerror(code) if code else f"{type(exc).__name__}: {str(exc)[:200]}"


def free_bytes(folder: Path) -> Optional[int]:
    """Bytes free on the file system holding ``folder``; None when that cannot be read."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def free_space(folder: Path) -> str:
    """The free space there, in words: ``1,234 MiB``, or ``unknown space``."""
    free = free_bytes(folder)
    return f"{free / 2**20:,.0f} MiB" if free is not None else "unknown space"

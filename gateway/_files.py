"""Creating a private file (mode 0600) so that a crash, a full disk or a second process starting
at the same time never leaves it empty or half written: the gateway's token signing key and the
embedded default's generated secrets.

The content goes to a temporary file in the same folder, is flushed to the disk (fsync), and is
then linked under its name, which either appears whole or not at all; the folder is fsynced so
that the new name survives a power cut. A link, unlike a rename, never replaces a file that
another process created meanwhile: the first one wins, and every process then reads its content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _written(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file (mode 0600) beside `path`, flushed to the disk."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    return temp


def create_private(path: Path, data: bytes) -> bool:
    """Write `data` to the new file `path` (mode 0600), atomically and durably. False, leaving
    the file untouched, if `path` exists already (another process made it first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _written(path, data)
    try:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: rename, which replaces
            if path.exists():
                return False
            os.rename(temp, path)
        _fsync_folder(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def replace_private(path: Path, data: bytes) -> None:
    """Replace the file `path` by `data` (mode 0600), atomically and durably: a crash leaves the
    old content or the new, never a mix."""
    temp = _written(path, data)
    try:
        os.replace(temp, path)
        _fsync_folder(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)

"""The state directory, against which every relative data path resolves, and whether a data
path can be written.

Data (the store, the API signing key beside it, plugin files, the exec working folder, the
embedded default's generated secrets) lives in the state directory: `[server] state_dir`,
else the first folder of systemd's `STATE_DIRECTORY` (set by the unit's `StateDirectory=`),
else the config file's own folder, which is where relative paths resolved before there was a
state directory, so an upgrade keeps opening the same store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

STATE_ENV = "STATE_DIRECTORY"


def resolve_state_dir(config_dir: Path, configured: str | None, environ: Mapping[str, str]) -> Path:
    """The state directory: `configured` (relative to the config file's folder), else systemd's
    STATE_DIRECTORY (its first entry: the variable is a colon-separated list), else `config_dir`."""
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() else config_dir / path
    from_systemd = environ.get(STATE_ENV, "").split(":")[0]
    return Path(from_systemd) if from_systemd else config_dir


def cannot_write(path: Path, *, folder: bool = False) -> str | None:
    """Why `path` (a file, or a folder with `folder=True`) cannot be created or written by this
    process, or None when it can. A missing path needs its nearest existing ancestor writable,
    since the gateway creates the folders on the way."""
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder"
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            return f"{path} is not writable"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable"
    return None

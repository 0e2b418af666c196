"""Private files written whole or not at all (gateway._files), and what the gateway does with a
signing key or a secrets file that an interrupted first start left behind (issue 13, item 1)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway._files import create_private
from gateway.auth import KEY_FILE, load_or_create_key
from gateway.config import ConfigError
from gateway.defaults import SECRETS_FILE, default_config
from tests.conftest import GATEWAY, MC_SECRET, ROOT, free_port, wait_for


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write fails as on a full disk, after the file was created."""

    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)


def test_create_private_writes_whole_private_files_and_never_replaces_one(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file"
    assert create_private(path, b"first")
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not create_private(path, b"second")  # another process was first: its file stays
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file"]  # no temporary file left


def test_create_private_syncs_the_content_before_the_name_and_then_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        steps.append("fsync folder" if target == str(tmp_path) else f"fsync {Path(target).name}")
        real_fsync(fd)

    def link(src: Any, dst: Any) -> None:
        steps.append(f"link {Path(src).name} -> {Path(dst).name}")
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    create_private(tmp_path / "key", b"k" * 32)
    temp = steps[0].removeprefix("fsync ")
    assert temp.startswith(".key.") and temp.endswith(".tmp")
    assert steps == [f"fsync {temp}", f"link {temp} -> key", "fsync folder"]


def test_a_key_write_cut_short_by_a_full_disk_leaves_no_key_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        disk_full(m)
        with pytest.raises(OSError, match="No space"):
            load_or_create_key(tmp_path)
    assert list(tmp_path.iterdir()) == []
    key = load_or_create_key(tmp_path)  # the next start makes a whole key
    assert len(key) == 32 and (tmp_path / KEY_FILE).read_bytes() == key


@pytest.mark.parametrize("content", [b"", b"short-key"])
def test_a_short_signing_key_is_refused_naming_the_file_and_the_fix(tmp_path: Path, content: bytes) -> None:
    (tmp_path / KEY_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_or_create_key(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / KEY_FILE) in message and f"{len(content)} bytes" in message
    assert f"delete {tmp_path / KEY_FILE}" in message


def test_a_secrets_write_cut_short_by_a_full_disk_leaves_no_file_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    with monkeypatch.context() as m:
        disk_full(m)
        with pytest.raises(OSError, match="No space"):
            default_config(tmp_path, announce=said.append)
    assert said == [] and list((tmp_path / "var").iterdir()) == []
    config = default_config(tmp_path, announce=said.append)
    with (tmp_path / SECRETS_FILE).open("rb") as fh:
        assert tomllib.load(fh) == {name: s.secrets[0].reveal() for name, s in config.sources.items()} | {
            "clients": {"dashboard": config.api.clients["dashboard"].secret.reveal()}}
    assert len(said) == 1


@pytest.mark.parametrize("content", ["", "# only a comment\n", "metacopier = \n"])
def test_an_empty_or_broken_secrets_file_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / SECRETS_FILE
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        default_config(tmp_path, announce=lambda _: None)
    assert f"{path}:" in str(caught.value) and f"delete {path}" in str(caught.value)


def test_gateway_run_refuses_to_start_with_an_empty_signing_key(tmp_path: Path) -> None:
    """The key an interrupted first start left empty would let anyone sign tokens."""
    port = free_port()
    (tmp_path / "gateway.toml").write_text(f"""
[server]
port = {port}
[store]
path = "gateway.db"
[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{MC_SECRET}"
""")
    (tmp_path / KEY_FILE).write_bytes(b"")
    proc = subprocess.Popen([GATEWAY, "run", "--config", str(tmp_path / "gateway.toml"), "--log-format", "text"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: proc.poll() is not None, 30, "gateway run to refuse the key")
    finally:
        proc.kill()
        output = proc.communicate()[0].decode()
    assert proc.returncode == 2, output
    assert f"{tmp_path / KEY_FILE}: the API token signing key is 0 bytes long" in output
    assert "Traceback" not in output

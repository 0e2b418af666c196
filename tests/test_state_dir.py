"""The state directory (issue 13, item 16): relative data paths resolve against it, never
silently away from an existing store, and the shipped unit's layout (a read-only config folder,
a writable state folder) works as deploy/README.md says."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import GATEWAY, ROOT, free_port, serving, wait_for

MC_SECRET = "m" * 40
ENV = {"METACOPIER_SECRET": MC_SECRET, "METACOPIER_SECRET_OLD": "o" * 40, "PIPSYNC_SECRET": "whsec_state_dir_test",
       "TRADRAPI_KEY": "tradrapi-state-dir-key-0123", "DASHBOARD_SECRET": "dashboard-secret-0123456789"}
can_unshare = shutil.which("unshare") is not None and os.geteuid() == 0


def _example(folder: Path, port: int) -> Path:
    """config.example.toml as deploy/README.md installs it, on a free port."""
    folder.mkdir()
    text = (ROOT / "config.example.toml").read_text()
    text, count = re.subn(r"(?m)^port = 8080$", f"port = {port}", text)
    assert count == 1
    (folder / "gateway.toml").write_text(text)
    return folder / "gateway.toml"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "STATE_DIRECTORY")}
    return {**env, **ENV, "PYTHONPATH": str(ROOT), **extra}


def _read_only(folder: Path, *command: str) -> list[str]:
    """`command` in a mount namespace where `folder` is a read-only bind mount of itself: what
    ProtectSystem=strict or a `:ro` volume does to the config folder (as root, chmod cannot)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(folder), *command]


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    port = free_port()
    config = _example(tmp_path / "etc", port)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    yield config, state, port


@pytest.mark.skipif(not can_unshare, reason="needs root and unshare(1) for a read-only bind mount")
def test_the_shipped_unit_layout_runs_with_a_read_only_config_folder(layout: tuple[Path, Path, int]) -> None:
    config, state, port = layout
    env = _env(STATE_DIRECTORY=str(state))  # what StateDirectory= gives the unit

    checked = subprocess.run(_read_only(config.parent, GATEWAY, "check-config", "--config", str(config)),
                             capture_output=True, text=True, env=env, timeout=60, cwd=state)
    assert checked.returncode == 0, checked.stderr
    assert f"store {state / 'var' / 'gateway.db'}" in checked.stdout

    log = state.parent / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(_read_only(config.parent, GATEWAY, "run", "--config", str(config)),
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=state)
    try:
        wait_for(lambda: serving(port) or proc.poll() is not None, 30, "the gateway to serve",
                 seen=log.read_text)
        assert proc.poll() is None, log.read_text()
        sent = subprocess.run([GATEWAY, "send", "metacopier", "--event", "position.opened", "--config", str(config)],
                              capture_output=True, text=True, env=env, timeout=60)
        assert sent.stdout.startswith("200 OK"), sent.stdout + sent.stderr
        journal = state / "var" / "journal.jsonl"
        wait_for(lambda: journal.exists() and b"position.opened" in journal.read_bytes(), 20,
                 "the jsonl plugin to write its file in the state folder", seen=log.read_text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Application shutdown complete" in log.read_text()  # a clean stop (uvicorn re-raises SIGTERM)
    assert "Traceback" not in log.read_text()
    assert sorted(p.name for p in config.parent.iterdir()) == ["gateway.toml"]  # nothing written beside it
    assert stat.S_IMODE((state / "var" / "gateway.db").stat().st_mode) == 0o600  # item 20: like the secrets


@pytest.mark.skipif(not can_unshare, reason="needs root and unshare(1) for a read-only bind mount")
def test_check_config_fails_on_data_paths_that_cannot_be_written(layout: tuple[Path, Path, int]) -> None:
    config, _, _ = layout  # no state directory: the data would go beside the read-only config
    checked = subprocess.run(_read_only(config.parent, GATEWAY, "check-config", "--config", str(config)),
                             capture_output=True, text=True, env=_env(), timeout=60, cwd=config.parent)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "OK" not in checked.stdout
    var = config.parent / "var"
    assert f"store.path: cannot create {var / 'gateway.db'}: {config.parent} is not writable" in checked.stderr
    assert f"plugins[0] (journal).options.path: cannot create {var / 'journal.jsonl'}" in checked.stderr
    assert "state_dir" in checked.stderr


def _config(folder: Path, server: str = "", store: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gateway.toml").write_text(f"""
[server]
{server}
[store]
{store}
[[sources]]
name = "mc"
scheme = "metacopier"
secret = "{MC_SECRET}"
[[plugins]]
name = "journal"
use = "jsonl"
[plugins.options]
path = "var/journal.jsonl"
""")
    return folder / "gateway.toml"


def _loaded(path: Path, environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    config = load_config(path, environ=environ or {})
    return config.state_dir, config.store.path


def test_the_state_directory_defaults_to_the_config_folder(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc")
    assert _loaded(path) == (tmp_path / "etc", tmp_path / "etc" / "var" / "gateway.db")


def test_state_dir_setting_wins_over_systemd_and_resolves_against_the_config_folder(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc")
    assert _loaded(path, {"STATE_DIRECTORY": f"{tmp_path}/sd:{tmp_path}/other"}) == (
        tmp_path / "sd", tmp_path / "sd" / "var" / "gateway.db")
    path = _config(tmp_path / "etc", server='state_dir = "../data"')
    assert _loaded(path, {"STATE_DIRECTORY": str(tmp_path / "sd")})[1] == tmp_path / "etc/../data/var/gateway.db"
    absolute = _config(tmp_path / "abs", store=f'path = "{tmp_path}/fixed.db"')
    assert _loaded(absolute, {"STATE_DIRECTORY": str(tmp_path / "sd")})[1] == tmp_path / "fixed.db"


def test_plugins_resolve_their_files_in_the_state_directory(tmp_path: Path) -> None:
    from gateway.plugins.jsonl import JsonlPlugin
    from gateway.plugins.loader import load_plugins

    config = load_config(_config(tmp_path / "etc", server=f'state_dir = "{tmp_path}/state"'), environ={})
    plugin = load_plugins(config)["journal"]
    assert isinstance(plugin, JsonlPlugin) and plugin.path == tmp_path / "state" / "var" / "journal.jsonl"


def test_a_state_directory_never_silently_replaces_an_existing_store(tmp_path: Path) -> None:
    """An upgrade that adds StateDirectory= (or state_dir) to an install whose store sits beside
    the config must not start on a new, empty store: the dedup history would be lost."""
    path = _config(tmp_path / "etc")
    (tmp_path / "etc" / "var").mkdir()
    (tmp_path / "etc" / "var" / "gateway.db").write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"STATE_DIRECTORY": str(tmp_path / "sd")})
    message = caught.value.errors[0]
    assert "store.path" in message and str(tmp_path / "etc" / "var" / "gateway.db") in message
    assert "STATE_DIRECTORY" in message and "move the store" in message
    (tmp_path / "sd" / "var").mkdir(parents=True)
    (tmp_path / "sd" / "var" / "gateway.db").write_bytes(b"")  # moved (copied) over: fine
    assert _loaded(path, {"STATE_DIRECTORY": str(tmp_path / "sd")})[0] == tmp_path / "sd"

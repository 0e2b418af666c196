"""The embedded default config: one source per scheme, secrets generated once and kept private."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from gateway.config import Config, StoreConfig
from gateway.defaults import default_config


def test_first_start_creates_private_secrets_and_announces_them_once(tmp_path: Path) -> None:
    said: list[str] = []
    config = default_config(tmp_path, announce=said.append)

    path = tmp_path / "var" / "secrets.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(said) == 1
    assert str(path) in said[0]
    with path.open("rb") as fh:
        kept = tomllib.load(fh)
    revealed = {name: source.secrets[0].reveal() for name, source in config.sources.items()}
    client = config.api.clients["dashboard"]
    assert kept == revealed | {"clients": {"dashboard": client.secret.reveal()}}
    for name, value in revealed.items():
        assert f"{name}: {value}" in said[0]
    assert f"client id: dashboard\n  client secret: {client.secret.reveal()}" in said[0]
    assert sorted(client.scopes) == ["deliveries:write", "events:read"]


def test_a_secrets_file_from_before_the_dashboard_client_gets_one_once(tmp_path: Path) -> None:
    path = tmp_path / "var" / "secrets.toml"
    path.parent.mkdir()
    path.write_text('metacopier = "mc-secret-0123456789abcdef-0123456789abcdef"\n'
                    'pipsync = "whsec_0123456789abcdef0123456789abcdef"\n'
                    'tradrapi = "tradrapi-key-0123456789abcdef"\n')
    path.chmod(0o600)
    said: list[str] = []
    config = default_config(tmp_path, announce=said.append)
    secret = config.api.clients["dashboard"].secret.reveal()
    assert len(said) == 1 and f"client secret: {secret}" in said[0]
    assert config.sources["metacopier"].secrets[0].reveal() == "mc-secret-0123456789abcdef-0123456789abcdef"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert default_config(tmp_path, announce=said.append).api.clients["dashboard"].secret.reveal() == secret
    assert len(said) == 1  # announced once, kept after
    with pytest.raises(FileNotFoundError):  # other commands never create anything
        default_config(tmp_path / "elsewhere", announce=said.append, create=False)


def test_second_start_reuses_the_secrets_silently(tmp_path: Path) -> None:
    said: list[str] = []
    first = default_config(tmp_path, announce=said.append)
    mtime = (tmp_path / "var" / "secrets.toml").stat().st_mtime_ns
    second = default_config(tmp_path, announce=said.append)
    assert len(said) == 1
    assert second == first
    assert (tmp_path / "var" / "secrets.toml").stat().st_mtime_ns == mtime


def test_default_sources_and_store(tmp_path: Path) -> None:
    config = default_config(tmp_path, announce=lambda _: None)
    assert isinstance(config, Config)
    assert {name: s.scheme for name, s in config.sources.items()} == {
        "metacopier": "metacopier",
        "pipsync": "pipsync",
        "tradrapi": "tradrapi",
    }
    for source in config.sources.values():
        assert len(source.secrets) == 1
        assert source.options.get("auth", "hmac") == "hmac"
        assert source.allow_ips == ()
    assert config.store == StoreConfig(path=tmp_path / "var" / "gateway.db")


def test_generated_secrets_satisfy_each_scheme(tmp_path: Path) -> None:
    for run in range(20):
        config = default_config(tmp_path / str(run), announce=lambda _: None)
        sizes = {name: len(s.secrets[0].reveal()) for name, s in config.sources.items()}
        assert sizes["metacopier"] >= 32
        assert sizes["pipsync"] >= 8
        assert 20 <= sizes["tradrapi"] <= 140
        assert config.sources["pipsync"].secrets[0].reveal().startswith("whsec_")


def test_each_install_gets_its_own_secrets(tmp_path: Path) -> None:
    one = default_config(tmp_path / "one", announce=lambda _: None)
    two = default_config(tmp_path / "two", announce=lambda _: None)
    for name in one.sources:
        assert one.sources[name].secrets != two.sources[name].secrets


def test_secrets_do_not_show_in_the_config_repr(tmp_path: Path) -> None:
    config = default_config(tmp_path, announce=lambda _: None)
    text = repr(config)
    for source in config.sources.values():
        assert source.secrets[0].reveal() not in text


def test_only_a_creating_caller_generates_secrets(tmp_path: Path) -> None:
    """Item 18: every command but `run` loads the default with create=False."""
    with pytest.raises(FileNotFoundError) as caught:
        default_config(tmp_path, announce=lambda _: None, create=False)
    assert caught.value.filename == str(tmp_path / "var" / "secrets.toml")
    assert list(tmp_path.iterdir()) == []
    created = default_config(tmp_path, announce=lambda _: None)
    assert default_config(tmp_path, announce=lambda _: None, create=False) == created


def test_the_embedded_default_keeps_var_in_systemds_state_directory(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 16: under a unit with StateDirectory=, var/ goes there, not in the working folder."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    config = default_config(tmp_path / "cwd", announce=lambda _: None)
    assert (tmp_path / "state" / "var" / "secrets.toml").exists()
    assert config.store.path == tmp_path / "state" / "var" / "gateway.db"
    assert not (tmp_path / "cwd").exists()

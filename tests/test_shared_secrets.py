"""One secret on two sources (issue 13, item 8): a MetaCopier request captured at one source
would verify at a PipSync source that shares its secret, since both sign `<ts>.<body>`.
`check-config` and `run` refuse it, naming both sources and never the secret;
`allow_shared_secret = true` on one of the two allows it, with a warning at start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import GATEWAY, MC_SECRET, ROOT, free_port, run_gateway

SHARED = "shared-secret-0123456789abcdefgh"


def write(folder: Path, first: str = "", second: str = "", port: int = 0) -> Path:
    path = folder / "gateway.toml"
    path.write_text(f"""
[server]
port = {port}
[store]
path = "gateway.db"
[[sources]]
name = "mc-live"
scheme = "metacopier"
secrets = ["{MC_SECRET}", "{SHARED}"]
{first}
[[sources]]
name = "ps-live"
scheme = "pipsync"
secret = "{SHARED}"
{second}
""")
    path.chmod(0o600)
    return path


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}, "PYTHONPATH": str(ROOT)}
    return subprocess.run([GATEWAY, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def test_a_shared_secret_is_an_error_naming_both_sources_and_not_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path))
    (error,) = caught.value.errors
    assert "sources[1] (ps-live).secrets[0]: is the same secret as sources[0] (mc-live).secrets[1]" in error
    assert "allow_shared_secret = true" in error and SHARED not in error
    with pytest.raises(ConfigError, match="same secret"):
        load_config(write(tmp_path, "allow_shared_secret = false", "allow_shared_secret = false"))


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_refuse_a_shared_secret(tmp_path: Path, command: str) -> None:
    proc = gateway(command, "--config", str(write(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "(ps-live)" in proc.stderr and "(mc-live)" in proc.stderr and "same secret" in proc.stderr
    assert SHARED not in proc.stdout + proc.stderr
    assert not (tmp_path / "gateway.db").exists()


@pytest.mark.parametrize(("first", "second"), [("allow_shared_secret = true", ""), ("", "allow_shared_secret = true"),
                                             ("allow_shared_secret = false", "allow_shared_secret = true")])
def test_allowed_on_either_source_it_loads_with_a_warning(tmp_path: Path, first: str, second: str) -> None:
    config = load_config(write(tmp_path, first, second))
    (warning,) = config.warnings
    assert "'mc-live' and 'ps-live' share a secret" in warning and SHARED not in warning
    assert config.sources["mc-live"].allow_shared_secret is (first == "allow_shared_secret = true")


def test_allowed_it_starts_and_logs_the_warning(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, second="allow_shared_secret = true", port=port)
    config = load_config(path)
    (warning,) = config.warnings
    assert "'mc-live' and 'ps-live' share a secret" in warning and SHARED not in warning

    checked = gateway("check-config", "--config", str(path), cwd=tmp_path)
    assert checked.returncode == 0 and f"warning: {warning}" in checked.stderr

    log = tmp_path / "run.log"
    proc = run_gateway(["run", "--config", str(path), "--log-format", "text"], cwd=tmp_path, port=port, log=log)
    proc.terminate()
    proc.wait(timeout=20)
    assert "WARNING" in log.read_text() and warning in log.read_text()
    assert SHARED not in log.read_text()

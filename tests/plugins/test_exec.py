"""The `exec` plugin with real subprocesses: input, environment, exit statuses, and no orphans."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.plugins import Event, PermanentFailure, PluginContext
from gateway.plugins.exec import CommandFailed, ExecPlugin, factory
from tests.conftest import MC_BODY, MC_SECRET, free_port, mc_sign, run_gateway, wait_for, wait_for_async

pytestmark = pytest.mark.anyio

# Writes what the command received (stdin, environment, cwd) as JSON to the file named in argv[1].
RECORD = (
    "import json, os, sys; data = sys.stdin.buffer.read();"
    "json.dump({'stdin': data.decode(), 'env': dict(os.environ), 'cwd': os.getcwd()}, open(sys.argv[1], 'w'))"
)


def make_event(event_id: int = 9, **changes: Any) -> Event:
    fields: dict[str, Any] = {
        "id": event_id, "source": "tradrapi", "scheme": "tradrapi", "event_type": "open_position",
        "entity_id": "position:5561201", "dedup_key": "tradrapi:open_position:5561201", "status": "stored",
        "conflicts_with": None,
        "account": "99121", "symbol": "EURUSD", "received_at": 1763633702.123, "attempt": 3,
        "payload": {"eventType": "open_position", "payload": {"id": 5561201}}, "body": b"{}",
    }
    return Event(**{**fields, **changes})


@pytest.fixture
def make_plugin(tmp_path: Path) -> Callable[..., ExecPlugin]:
    """Build an exec plugin named `notify` running Python code (`-c`), config folder tmp_path."""

    def make(code: str, *args: str, **options: Any) -> ExecPlugin:
        return factory({"command": [sys.executable, "-c", code, *args], **options}, PluginContext("notify", tmp_path))

    return make


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for a parent that will never reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return os.name != "posix" or not Path("/proc/self").exists()


async def wait_for_file(path: Path) -> str:
    await wait_for_async(lambda: path.exists() and path.read_text().endswith("\n"), what=f"{path} to be written")
    return path.read_text()


async def test_event_on_stdin_and_in_the_environment(make_plugin: Callable[..., ExecPlugin], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INHERITED_FROM_GATEWAY", "yes")
    out = tmp_path / "out.json"
    event = make_event(symbol=None)
    await make_plugin(RECORD, str(out), env={"EXTRA": "x y"}).deliver(event)
    seen = orjson.loads(out.read_bytes())
    assert seen["stdin"].encode() == orjson.dumps(event.to_json()) + b"\n"
    assert seen["cwd"] == str(tmp_path)
    env = seen["env"]
    assert env["INHERITED_FROM_GATEWAY"] == "yes" and env["EXTRA"] == "x y"
    # what the plugin set (the test's own environment may hold GATEWAY_TEST_POSTGRES_URL)
    assert {k: v for k, v in env.items() if k.startswith("GATEWAY_") and k not in os.environ} == {
        "GATEWAY_EVENT_ID": "9", "GATEWAY_EVENT_TYPE": "open_position", "GATEWAY_SOURCE": "tradrapi",
        "GATEWAY_SCHEME": "tradrapi", "GATEWAY_ENTITY_ID": "position:5561201",
        "GATEWAY_DEDUP_KEY": "tradrapi:open_position:5561201", "GATEWAY_STATUS": "stored", "GATEWAY_CONFLICTS_WITH": "",
        "GATEWAY_ACCOUNT": "99121", "GATEWAY_SYMBOL": "", "GATEWAY_RECEIVED_AT": "2025-11-20T10:15:02.123Z",
        "GATEWAY_ATTEMPT": "3", "GATEWAY_PLUGIN": "notify",
    }


async def test_a_conflict_reaches_the_command_with_the_version_it_conflicts_with(
    make_plugin: Callable[..., ExecPlugin], tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    event = make_event(12, status="conflict", conflicts_with=9)
    await make_plugin(RECORD, str(out)).deliver(event)
    seen = orjson.loads(out.read_bytes())
    sent = orjson.loads(seen["stdin"])
    assert (sent["id"], sent["status"], sent["conflicts_with"]) == (12, "conflict", 9)
    assert (seen["env"]["GATEWAY_STATUS"], seen["env"]["GATEWAY_CONFLICTS_WITH"]) == ("conflict", "9")


async def test_cwd_is_relative_to_the_config_folder(make_plugin: Callable[..., ExecPlugin], tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    await make_plugin(RECORD, "out.json", cwd="work").deliver(make_event())
    assert orjson.loads((tmp_path / "work" / "out.json").read_bytes())["cwd"] == str(tmp_path / "work")


async def test_a_command_that_ignores_its_input_succeeds(make_plugin: Callable[..., ExecPlugin]) -> None:
    await make_plugin("pass").deliver(make_event(payload={"big": "x" * 1_000_000}))


async def test_a_relative_command_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    script = tmp_path / "hooks" / "record.py"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n{RECORD}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    plugin = factory({"command": ["hooks/record.py", "out.json"]}, PluginContext("notify", tmp_path))
    await plugin.deliver(make_event())
    assert (tmp_path / "out.json").exists()


@pytest.mark.parametrize("code", [1, 2, 75, 126])
async def test_a_non_zero_exit_is_retried(code: int, make_plugin: Callable[..., ExecPlugin]) -> None:
    program = f"import sys; sys.stderr.write('x' * 2000 + 'the real reason'); sys.exit({code})"
    with pytest.raises(CommandFailed, match=f"exited with status {code}; stderr: x+the real reason$") as caught:
        await make_plugin(program).deliver(make_event())
    assert not isinstance(caught.value, PermanentFailure)
    assert caught.value.returncode == code
    assert 500 <= len(str(caught.value)) < 700  # only the end of stderr


async def test_exit_65_dead_letters(make_plugin: Callable[..., ExecPlugin]) -> None:
    with pytest.raises(PermanentFailure, match="exited with status 65; stderr: bad symbol"):
        await make_plugin("import sys; sys.stderr.write('bad symbol\\n'); sys.exit(65)").deliver(make_event())


async def test_a_signal_is_retried(make_plugin: Callable[..., ExecPlugin]) -> None:
    with pytest.raises(CommandFailed, match="killed by signal 9"):
        await make_plugin("import os, signal; os.kill(os.getpid(), signal.SIGKILL)").deliver(make_event())


async def test_a_timeout_kills_the_command_and_reaps_it(make_plugin: Callable[..., ExecPlugin], tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = "import os, sys, time; open(sys.argv[1], 'w').write(f'{os.getpid()}\\n'); time.sleep(60)"
    delivery = asyncio.ensure_future(make_plugin(program, str(pid_file)).deliver(make_event()))
    pid = int(await wait_for_file(pid_file))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(delivery, timeout=0.2)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):  # killed, and waited for: not even a zombie is left
        os.kill(pid, 0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_a_timeout_also_kills_the_commands_children(make_plugin: Callable[..., ExecPlugin],
                                                          tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "open(sys.argv[1], 'w').write(f'{child.pid}\\n'); time.sleep(60)"
    )
    delivery = asyncio.ensure_future(make_plugin(program, str(pid_file)).deliver(make_event()))
    grandchild = int(await wait_for_file(pid_file))
    try:
        delivery.cancel()
        done, _ = await asyncio.wait({delivery}, timeout=5)
        assert done, "the cancelled delivery did not return"
        with pytest.raises(asyncio.CancelledError):
            delivery.result()
        await wait_for_async(lambda: not pid_alive(grandchild), 5, "the command's child to be killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


async def test_a_background_process_does_not_hold_the_delivery(make_plugin: Callable[..., ExecPlugin],
                                                               tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = (  # the background child inherits stderr; the delivery ends with the command itself
        "import subprocess, sys;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True);"
        "open(sys.argv[1], 'w').write(f'{child.pid}\\n')"
    )
    try:
        await asyncio.wait_for(make_plugin(program, str(pid_file)).deliver(make_event()), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(("options", "message"), [
    ({}, "option 'command' is required"),
    ({"command": []}, "option 'command' is required"),
    ({"command": "notify --fast"}, "option 'command' is required"),
    ({"command": [sys.executable, 1]}, "option 'command' is required"),
    ({"command": ["no-such-program-4f1c"]}, "'no-such-program-4f1c' is not found in PATH"),
    ({"command": ["./missing.sh"]}, "missing.sh is not an executable file"),
    ({"command": [sys.executable], "env": {"A": 1}}, "table of string values"),
    ({"command": [sys.executable], "env": {"GATEWAY_EVENT_ID": "1"}}, "cannot set GATEWAY_EVENT_ID"),
    ({"command": [sys.executable], "cwd": "nowhere"}, "nowhere is not a directory"),
    ({"command": [sys.executable], "shell": True}, "unknown option"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        factory(options, PluginContext("notify", tmp_path))


@pytest.fixture
def small_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary folder on a 1 MiB filesystem of its own: a file written there fills up for real."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real small filesystem needs root (mount)")
    mount = tmp_path / "tmp"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    monkeypatch.setattr(tempfile, "tempdir", str(mount))
    monkeypatch.setenv("TMPDIR", str(mount))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_stderr_is_kept_as_a_bounded_tail_never_on_disk(make_plugin: Callable[..., ExecPlugin],
                                                              small_tmp: Path) -> None:
    """Item 14: 8 MB of stderr neither fills a disk nor memory; the error holds its last bytes."""
    program = ("import sys; err = sys.stderr.buffer;"
               "[err.write(b'x' * 65536) for _ in range(128)]; err.write(b'\\nthe last words'); sys.exit(3)")
    with pytest.raises(CommandFailed) as failed:
        await asyncio.wait_for(make_plugin(program).deliver(make_event()), timeout=30)
    message = str(failed.value)
    assert message.endswith("stderr: " + "x" * (500 - len("\nthe last words")) + "\nthe last words"), message[-600:]
    assert failed.value.returncode == 3


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_sigkilled_gateway_leaves_no_command_or_grandchild_running(tmp_path: Path) -> None:
    """Item 14: `gateway run` killed with SIGKILL while an exec command and the child it started
    run: both end with the gateway."""


    pids = tmp_path / "pids"
    program = ("import os, subprocess, sys, time;"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
               "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}\\n'); time.sleep(300)")
    command = json.dumps([sys.executable, "-c", program, str(pids)])
    config = tmp_path / "gateway.toml"
    config.write_text(f'[store]\npath = "gateway.db"\n\n[[sources]]\nname = "metacopier"\nscheme = "metacopier"\n'
                      f'secret = "{MC_SECRET}"\n\n[[plugins]]\nname = "notify"\nuse = "exec"\n'
                      f'timeout_seconds = 600\n[plugins.options]\ncommand = {command}\n')
    config.chmod(0o600)
    port = free_port()
    proc = run_gateway(["run", "--config", str(config), "--port", str(port)], cwd=tmp_path, port=port,
                       log=tmp_path / "gateway.log")
    running: list[int] = []
    try:
        assert httpx.post(f"http://127.0.0.1:{port}/hooks/metacopier", content=MC_BODY, headers=mc_sign(MC_BODY),
                          timeout=10).status_code == 200
        wait_for(lambda: pids.exists() and pids.read_text().endswith("\n"), 20, "the command to start its child")
        running = [int(pid) for pid in pids.read_text().split()]
        assert all(pid_alive(pid) for pid in running)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_for(lambda: not any(pid_alive(pid) for pid in running), 10, "the command and its child to end",
                 seen=lambda: [pid for pid in running if pid_alive(pid)])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

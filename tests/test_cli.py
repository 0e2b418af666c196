"""The `gateway` command as a user runs it: real subprocesses, a real server, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port, run_gateway, serving, wait_for

GATEWAY = [str(Path(sys.executable).parent / "gateway")]


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    proc = subprocess.run([*GATEWAY, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


class Server:
    """`gateway run --port PORT ARGS` in `cwd`, started through conftest's `run_gateway`."""

    def __init__(self, cwd: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = cwd / f"server-{self.port}.log"
        self.log.write_bytes(b"")  # this start's output only (a restart on the same port reuses the name)
        self.proc = run_gateway(["run", "--port", str(self.port), *args], cwd=cwd, port=self.port, log=self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        return self.log.read_text()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_every_command_has_help(workdir: Path) -> None:
    for command in ([], ["run"], ["check-config"], ["send"], ["events"]):
        out = run(*command, "--help", cwd=workdir).stdout
        assert "Usage:" in out
    assert "Usage:" in subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True,
                                      text=True, check=True).stdout


def test_default_setup_end_to_end(workdir: Path) -> None:
    """The README walk-through: run on the embedded default, send each scheme, list, resend."""
    server = Server(workdir)
    try:
        secrets_file = workdir / "var" / "secrets.toml"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        for name in ("metacopier", "pipsync", "tradrapi"):
            sent = run("send", name, "--url", server.url, "--save", f"{name}.json", cwd=workdir)
            assert sent.stdout.startswith("200 OK"), sent.stdout
            assert '"status": "stored"' in sent.stdout
        lines = run("events", "--json", cwd=workdir).stdout.splitlines()
        events = [orjson.loads(line) for line in lines]
        assert [e["source"] for e in events] == ["tradrapi", "pipsync", "metacopier"]
        for event in events:
            assert {"id", "source", "scheme", "event_type", "entity_id", "dedup_key", "status",
                    "conflicts_with", "received_at", "payload"} <= event.keys()
            assert event["conflicts_with"] is None
            assert event["status"] == "stored" and event["received_at"].endswith("Z")
            assert isinstance(event["payload"], dict)
        assert events[2]["event_type"] == "position.opened"
        assert f"position:{events[2]['payload']['position']['id']}" == events[2]["entity_id"]

        for name in ("metacopier", "pipsync", "tradrapi"):
            again = run("send", name, "--file", f"{name}.json", "--url", server.url, cwd=workdir)
            assert '"status": "duplicate"' in again.stdout, again.stdout
        assert len(run("events", "--json", cwd=workdir).stdout.splitlines()) == 3

        table = run("events", "--source", "pipsync", cwd=workdir).stdout.splitlines()
        assert table[0].split()[:3] == ["ID", "RECEIVED", "SOURCE"] and len(table) == 2
        assert "trade.opened" in table[1]
    finally:
        log = server.stop()
    # The generated secrets are announced once, on the start that created them.
    secrets = dict(line.split(" = ") for line in secrets_file.read_text().splitlines() if " = " in line)
    assert all(value.strip('"') in log for value in secrets.values())
    # the console's client is among them, printed with what to do with it, and the log names the console
    assert f"client id: dashboard\n  client secret: {secrets['dashboard'].strip(chr(34))}" in log
    assert f"the dashboard is at {server.url}/" in log
    server = Server(workdir)
    second_log = server.stop()
    assert not any(value.strip('"') in second_log for value in secrets.values())


def test_send_uses_the_config_and_default_event_types(workdir: Path) -> None:
    port = free_port()
    (workdir / "gateway.toml").write_text(f"""
[server]
port = {port}

[[sources]]
name = "copier"
scheme = "metacopier"
secrets = ["{'k' * 40}"]

[[sources]]
name = "copier-bearer"
scheme = "metacopier"
auth = "bearer"
secret = "env:BEARER_TOKEN"
""")
    os.environ["BEARER_TOKEN"] = "t" * 32
    try:
        server = Server(workdir, port=port)
        try:
            out = run("send", "copier", "--event", "position.closed", cwd=workdir).stdout
            assert "copier:position.closed:" in out
            out = run("send", "copier-bearer", "--event", "history.updated", cwd=workdir).stdout
            assert "copier-bearer:history.updated:#sha256-" in out  # no position: named by its content
            bad = run("send", "nope", cwd=workdir, check=False)
            assert bad.returncode != 0 and "copier" in bad.stderr
            types = [orjson.loads(x)["event_type"] for x in run("events", "--json", "--type", "position.*",
                                                                 cwd=workdir).stdout.splitlines()]
            assert types == ["position.closed"]
        finally:
            server.stop()
    finally:
        del os.environ["BEARER_TOKEN"]


def test_send_reports_rejections_with_nonzero_exit(workdir: Path) -> None:
    server = Server(workdir)
    try:
        (workdir / "other.toml").write_text(f"""
[[sources]]
name = "metacopier"
scheme = "metacopier"
secret = "{'w' * 40}"
""")
        proc = run("send", "metacopier", "--config", "other.toml", "--url", server.url, cwd=workdir, check=False)
        assert proc.returncode == 1
        assert proc.stdout.startswith("401 Unauthorized") and "bad_signature" in proc.stdout
    finally:
        server.stop()
    unreachable = run("send", "metacopier", "--url", f"http://127.0.0.1:{free_port()}", cwd=workdir, check=False)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    # --url is the gateway's base URL, as for `tail` (item 19)
    full = run("send", "metacopier", "--url", f"{server.url}/hooks/metacopier", cwd=workdir, check=False)
    assert full.returncode == 2 and "base URL" in full.stderr and server.url in full.stderr


def test_check_config(workdir: Path) -> None:
    good = workdir / "good.toml"
    good.write_text('[[sources]]\nname = "tr"\nscheme = "tradrapi"\nsecret = "0123456789abcdefghijk"\n')
    assert "OK: 1 source(s): tr (tradrapi)" in run("check-config", "--config", str(good), cwd=workdir).stdout
    bad = workdir / "bad.toml"
    bad.write_text('[server]\nport = "80"\n[[sources]]\nname = "x y"\nscheme = "nope"\nscret = "a"\n')
    proc = run("check-config", "--config", str(bad), cwd=workdir, check=False)
    assert proc.returncode == 2
    errors = proc.stderr.splitlines()
    assert len(errors) >= 4
    assert all(line.startswith(f"config error: {bad}:") for line in errors)
    for fragment in ("server.port: must be int", "sources[0].scret: unknown key", "scheme: must be one of",
                     "name: 'x y' must be"):
        assert any(fragment in line for line in errors), (fragment, errors)
    # `run` refuses to start on the same file, with the same messages.
    proc = run("run", "--config", str(bad), cwd=workdir, check=False)
    assert proc.returncode == 2 and "sources[0].scret" in proc.stderr


def test_events_before_any_store_exists(workdir: Path) -> None:
    (workdir / "gateway.toml").write_text('[[sources]]\nname = "p"\nscheme = "pipsync"\nsecret = "s3cr3t-value"\n')
    proc = run("events", cwd=workdir, check=False)
    assert proc.returncode == 1 and "no event store" in proc.stderr


def test_readme_run_command(workdir: Path) -> None:
    """`scripts/run` installs (a no-op here, the suite runs from that venv) and serves the default;
    `gateway send` finds the port it was given in the address it recorded (item 19)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "run"
    port = free_port()
    log = (workdir / "run.log").open("w")
    proc = subprocess.Popen([str(script), "--port", str(port)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: serving(port) or proc.poll() is not None, 120, "scripts/run to answer /healthz",
                 seen=lambda: (workdir / "run.log").read_text()[-3000:])
        assert proc.poll() is None, (workdir / "run.log").read_text()
        assert (workdir / "var" / "gateway.url").read_text() == f"http://127.0.0.1:{port}\n"
        sent = run("send", "tradrapi", cwd=workdir)  # not 8080: the port it runs on
        assert '"status": "stored"' in sent.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    assert (workdir / "var" / "gateway.db").exists()
    assert not (workdir / "var" / "gateway.url").exists()  # removed at a clean stop


def test_tail_follows_and_resumes_after_the_gateway_restarts(workdir: Path) -> None:
    port = free_port()
    (workdir / "gateway.toml").write_text(f"""
[server]
port = {port}
[[sources]]
name = "copier"
scheme = "metacopier"
secret = "{'k' * 40}"
[[clients]]
id = "ops"
secret = "ops-secret-0123456789"
""")
    server = Server(workdir, port=port)
    notes = workdir / "tail.err"
    # From the first event on (`--since 0`), not "from now on": what it shows does not depend on
    # when it got connected (test_stream covers "from now on").
    with notes.open("w") as err_file:
        tail = subprocess.Popen([*GATEWAY, "tail", "--since", "0", "--count", "4", "--type", "position.*"],
                                cwd=workdir, stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        run("send", "copier", "--event", "position.opened", cwd=workdir)
        run("send", "copier", "--event", "history.updated", cwd=workdir)  # filtered out
        run("send", "copier", "--event", "position.closed", cwd=workdir)
        server.stop()  # the connection drops; tail keeps trying
        wait_for(lambda: "reconnecting" in notes.read_text(), 30, "tail to notice the gateway is gone",
                 seen=notes.read_text)
        server = Server(workdir, port=port)
        run("send", "copier", "--event", "position.opened", cwd=workdir)
        run("send", "copier", "--event", "position.closed", cwd=workdir)
        out, _ = tail.communicate(timeout=30)
    finally:
        tail.kill()
        server.stop()
    err = notes.read_text()
    lines = out.splitlines()
    assert len(lines) == 4, (out, err)
    assert [line.split()[3] for line in lines] == ["position.opened", "position.closed"] * 2
    ids = [int(line.split()[0]) for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == 4 and 2 not in ids  # event 2 is the filtered one
    assert "reconnecting" in err


def test_backup_is_a_capability_of_the_backend(tmp_path: Path) -> None:
    """A backend without file backup (testsqlite://, registered from tests/) gets a clear error."""
    import asyncio

    from click.testing import CliRunner

    from gateway.cli import main
    from gateway.config import StoreConfig
    from gateway.store import open_store
    from tests.store import testsqlite

    url = f"{testsqlite.SCHEME}:///{tmp_path}/t.db"

    async def create() -> None:
        store = open_store(StoreConfig(url=url))
        await store.open()
        await store.close()

    asyncio.run(create())
    config = tmp_path / "gateway.toml"
    config.write_text(f'[store]\nurl = "{url}"\n[[sources]]\nname = "m"\nscheme = "metacopier"\n'
                      f'secret = "{"x" * 40}"\n')
    result = CliRunner().invoke(main, ["backup", "--config", str(config), str(tmp_path / "copy.db")])
    assert result.exit_code == 1
    assert "the testsqlite store cannot back up to a file: use its own backup tools" in result.output
    assert not (tmp_path / "copy.db").exists()
    listed = CliRunner().invoke(main, ["events", "--config", str(config), "--json"])
    assert listed.exit_code == 0 and listed.output == ""  # the same store serves every other command


def test_cli_options_are_validated_as_the_config_file_is(workdir: Path) -> None:
    """Item 17: `run --port 99999` used to listen on 99999 mod 65536 and log 99999."""
    _one_source(workdir, "m")
    for args, fragment in ((["run", "--port", "99999"], "99999 is not in the range 0<=x<=65535"),
                           (["run", "--port", "-1"], "--port"), (["run", "--host", " "], "--host"),
                           (["prune", "--days", "40000"], "--days"), (["tail", "--since", "-5"], "--since"),
                           (["deliveries", "--event", "0"], "--event"), (["tail", "--url", "ftp://x"], "--url")):
        proc = run(*args, cwd=workdir, check=False)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert fragment in proc.stderr, (args, proc.stderr)
    assert not (workdir / "var").exists()  # none of them started anything


def test_only_run_creates_the_default_config(workdir: Path) -> None:
    """Item 18: a command run where there is no config says what it looked for and where, and
    creates nothing (it used to generate var/secrets.toml and print three fresh secrets)."""
    for args in (["events"], ["deliveries"], ["check-config"], ["send", "metacopier"], ["tail"],
                 ["prune", "--days", "1"], ["backup", "copy.db"], ["replay", "--plugin", "p", "--dead"]):
        proc = run(*args, cwd=workdir, check=False)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert f"no gateway.toml in {workdir}" in proc.stderr and "--config" in proc.stderr, (args, proc.stderr)
        assert str(workdir / "var" / "secrets.toml") in proc.stderr and "`gateway run` creates it" in proc.stderr
        assert "Generated secrets" not in proc.stdout + proc.stderr
        assert list(workdir.iterdir()) == [], args


def test_send_refuses_an_event_type_its_scheme_does_not_have(workdir: Path) -> None:
    _one_source(workdir, "m")
    proc = run("send", "m", "--event", "nosuch", "--url", f"http://127.0.0.1:{free_port()}", cwd=workdir, check=False)
    assert proc.returncode == 2 and "cannot reach" not in proc.stderr  # refused before anything is sent
    assert "'nosuch' is not a metacopier event type" in proc.stderr
    assert "position.opened" in proc.stderr and "history.updated" in proc.stderr


def test_tail_against_a_gateway_never_reached_exits(workdir: Path) -> None:
    """Item 19: it used to retry forever; a gateway that once answered is still waited for
    (test_tail_follows_and_resumes_after_the_gateway_restarts)."""
    (workdir / "gateway.toml").write_text(f"""
[[sources]]
name = "m"
scheme = "metacopier"
secret = "{'k' * 40}"
[[clients]]
id = "ops"
secret = "ops-secret-0123456789"
""")
    url = f"http://127.0.0.1:{free_port()}"
    proc = run("tail", "--url", url, cwd=workdir, check=False)
    assert proc.returncode == 1
    assert f"cannot reach the gateway at {url}" in proc.stderr and "reconnecting" not in proc.stderr


def _one_source(workdir: Path, name: str) -> None:
    """gateway.toml with the store in gateway.db and one MetaCopier source `name`."""
    (workdir / "gateway.toml").write_text(f'[store]\npath = "gateway.db"\n[[sources]]\nname = "{name}"\n'
                                          f'scheme = "metacopier"\nsecret = "{"k" * 40}"\n')


def test_events_of_an_unknown_source(workdir: Path) -> None:
    _one_source(workdir, "copier")
    server = Server(workdir)
    try:
        run("send", "copier", "--url", server.url, cwd=workdir)
    finally:
        server.stop()
    proc = run("events", "--source", "nosuch", cwd=workdir, check=False)
    assert proc.returncode == 2 and "unknown source 'nosuch' (configured: copier)" in proc.stderr
    assert len(run("events", "--source", "copier", cwd=workdir).stdout.splitlines()) == 2
    # events of a source since removed from the config are still listed, with a note
    _one_source(workdir, "other")
    kept = run("events", "--source", "copier", cwd=workdir)
    assert len(kept.stdout.splitlines()) == 2 and "not in the config" in kept.stderr


def test_send_opens_a_position_and_closes_it_in_parts_for_every_sender(workdir: Path) -> None:
    """`gateway send --position ID --volume V`: one position opened, then closed in two parts,
    for each scheme; the stored events name that position and volume, and normalize to it."""
    from gateway.normalized import normalize
    from gateway.store.records import StoredEvent

    server = Server(workdir)
    try:
        steps = {"metacopier": ("position.opened", "position.closed"), "pipsync": ("trade.opened", "trade.closed"),
                 "tradrapi": ("open_position", "close_position")}
        for name, (opening, closing) in steps.items():
            for event_type, volume in ((opening, "1"), (closing, "0.4"), (closing, "0.6")):
                sent = run("send", name, "--event", event_type, "--position", f"pos-{name}", "--volume", volume,
                           "--url", server.url, cwd=workdir)
                assert '"status": "stored"' in sent.stdout, sent.stdout
        refused = run("send", "metacopier", "--volume", "-1", "--url", server.url, cwd=workdir, check=False)
        assert refused.returncode == 2 and "--volume" in refused.stderr
        events = [orjson.loads(line) for line in run("events", "--json", cwd=workdir).stdout.splitlines()]
    finally:
        server.stop()
    assert len(events) == 9
    for event in events:
        assert event["entity_id"] == f"position:pos-{event['source']}"
    records = [normalize(StoredEvent(id=e["id"], source=e["source"], scheme=e["scheme"], event_type=e["event_type"],
                                     entity_id=e["entity_id"], dedup_key=e["dedup_key"], status=e["status"],
                                     conflicts_with=None, account=e["account"], symbol=e["symbol"], received_at=0.0,
                                     payload=e["payload"], request_id="", attempt=None, remote_addr=None,
                                     quarantine_reason=None)) for e in reversed(events)]
    assert [(r.source, r.kind, r.position_id, r.volume) for r in records if r is not None] == [
        (source, kind, f"pos-{source}", volume) for source in ("metacopier", "pipsync", "tradrapi")
        for kind, volume in (("position.opened", 1.0), ("position.closed", 0.4), ("position.closed", 0.6))]

"""`exec`: run a command for every event, with the event as JSON on its standard input.

Options:
    command (list of strings, required): the program and its arguments, run without a shell.
        A bare name is looked up in PATH; a path with a `/` that is relative resolves against
        the config file's folder. Both are checked when the config loads.
    env (table of strings): extra environment variables, on top of the gateway's environment.
    cwd (str): the working directory, relative to the config file's folder (its default).

Standard input is `orjson.dumps(event.to_json())` plus a newline. The environment also holds
GATEWAY_EVENT_ID, GATEWAY_EVENT_TYPE, GATEWAY_SOURCE, GATEWAY_SCHEME, GATEWAY_ENTITY_ID,
GATEWAY_DEDUP_KEY, GATEWAY_STATUS, GATEWAY_CONFLICTS_WITH (the first version's id for a
`conflict`, else empty), GATEWAY_ACCOUNT, GATEWAY_SYMBOL (empty when absent),
GATEWAY_RECEIVED_AT (ISO 8601, UTC), GATEWAY_ATTEMPT and GATEWAY_PLUGIN (the plugin's name).

Exit status 0 acknowledges; 65 (EX_DATAERR) dead-letters the event; anything else, 75
(EX_TEMPFAIL) included, asks for a retry. The last 500 bytes of stderr go into the error
message, and only those are kept, however much the command writes; stdout is discarded.

The command runs in its own process group: when the gateway gives up on a delivery (its
timeout cancels `deliver`) or shuts down, the whole group is killed and reaped. If the gateway
dies (even by SIGKILL), the command and the processes of its group die too (`_reaper`). A
process that leaves the group (`setsid`) or outlives a command that exited is on its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.model import iso_utc
from gateway.plugins import Event, PermanentFailure, PluginContext
from gateway.plugins._reaper import DIE_WITH_PARENT, Reaper
from gateway.plugins.options import check_keys, optional_string, string_table

EX_DATAERR = 65
STDERR_TAIL = 500
STDERR_CHUNK = 65536
STDERR_GRACE = 0.5  # after the command exits, how long a background process may hold stderr open
_POSIX = os.name == "posix"


class CommandFailed(Exception):
    """The command exited non-zero (or was killed by a signal): the delivery is retried."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class ExecPlugin:
    """Runs `command` once per event."""

    def __init__(self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env or {})
        self.cwd = cwd
        self._reaper = Reaper()

    def __repr__(self) -> str:
        return f"ExecPlugin({self.name!r}, {self.command!r})"

    async def start(self) -> None:
        """Start the reaper that ends running commands if the gateway dies."""
        self._reaper.start()

    async def stop(self) -> None:
        """Every delivery has ended (its command killed if it was cancelled): end the reaper."""
        await asyncio.to_thread(self._reaper.close)

    def environment(self, event: Event) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "GATEWAY_EVENT_ID": str(event.id),
            "GATEWAY_EVENT_TYPE": event.event_type,
            "GATEWAY_SOURCE": event.source,
            "GATEWAY_SCHEME": event.scheme,
            "GATEWAY_ENTITY_ID": event.entity_id,
            "GATEWAY_DEDUP_KEY": event.dedup_key,
            "GATEWAY_STATUS": event.status,
            "GATEWAY_CONFLICTS_WITH": "" if event.conflicts_with is None else str(event.conflicts_with),
            "GATEWAY_ACCOUNT": event.account or "",
            "GATEWAY_SYMBOL": event.symbol or "",
            "GATEWAY_RECEIVED_AT": iso_utc(event.received_at),
            "GATEWAY_ATTEMPT": str(event.attempt),
            "GATEWAY_PLUGIN": self.name,
        }

    async def deliver(self, event: Event) -> None:
        # stderr is a pipe of our own, read as it comes, keeping its tail: never a file on disk,
        # and closed by us even when a background process still holds its other end.
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=write_fd,
                cwd=self.cwd, env=self.environment(event), start_new_session=_POSIX, preexec_fn=DIE_WITH_PARENT,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._reaper.hold(proc.pid)  # its group's id: it leads a new session
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), open(read_fd, "rb", buffering=0))  # noqa: SIM115 (the transport closes it)
        stderr = asyncio.create_task(_tail(reader))
        try:
            try:
                _, code = await asyncio.gather(_feed(proc, orjson.dumps(event.to_json()) + b"\n"), proc.wait())
            except BaseException:  # cancelled by the gateway's timeout, or shutting down: leave no orphan
                _kill(proc)
                await asyncio.shield(proc.wait())
                raise
            finally:
                self._reaper.release(proc.pid)
            # A background process may still hold stderr open: the delivery ends with the command.
            done, _ = await asyncio.wait({stderr}, timeout=STDERR_GRACE)
            tail = stderr.result() if done else b""
        finally:
            stderr.cancel()
            transport.close()
        if code == 0:
            return
        text = tail.decode("utf-8", "replace").strip()
        what = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        message = f"{self.command[0]} {what}" + (f"; stderr: {text}" if text else "")
        if code == EX_DATAERR:
            raise PermanentFailure(message)
        raise CommandFailed(message, code)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command need not read its input
    finally:
        proc.stdin.close()


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """Read `stream` to its end, keeping only its last STDERR_TAIL bytes."""
    kept = b""
    while chunk := await stream.read(STDERR_CHUNK):
        kept = (kept + chunk)[-STDERR_TAIL:]
    return kept


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        if _POSIX:
            os.killpg(proc.pid, signal.SIGKILL)  # the command's own children too
        else:
            proc.kill()
    except ProcessLookupError:
        pass  # already gone


def factory(options: Mapping[str, Any], context: PluginContext) -> ExecPlugin:
    check_keys(options, "exec", ("command", "env", "cwd"))
    command = options.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(arg, str) for arg in command) or not command[0]):
        raise ValueError('option \'command\' is required: a non-empty list of strings, e.g. ["notify", "--fast"]')
    env = string_table(options, "env")
    reserved = sorted(k for k in env if k.startswith("GATEWAY_"))
    if reserved:
        raise ValueError(f"option 'env' cannot set {', '.join(reserved)}: GATEWAY_* variables describe the event")
    cwd = optional_string(options, "cwd")
    workdir = context.base_dir / cwd if cwd else context.base_dir
    if not workdir.is_dir():
        raise ValueError(f"option 'cwd': {workdir} is not a directory")
    program = _executable(command[0], context.base_dir, env.get("PATH"))
    return ExecPlugin(context.name, [program, *command[1:]], env=env, cwd=workdir)


def _executable(program: str, base_dir: Path, search_path: str | None) -> str:
    if os.sep in program or (os.altsep and os.altsep in program):
        path = base_dir / Path(program).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ValueError(f"option 'command': {path} is not an executable file")
        return str(path)
    if shutil.which(program, path=search_path) is None:  # the child searches its own PATH
        raise ValueError(f"option 'command': {program!r} is not found in PATH")
    return program

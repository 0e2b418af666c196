"""`jsonl`: append every event to a file as one JSON line, on disk before it is acknowledged.

Options:
    path (str, required): the file. A relative path resolves against the config file's folder
        (`~` is expanded); missing parent folders are created at start.

Each line is `orjson.dumps(event.to_json())` followed by a newline, so `tail -f` and log
shippers always see whole JSON objects. `deliver` returns only after its line was written and
fsync'ed, but deliveries share that cost (group commit): the first waiting line starts a flush
task, which writes every line queued so far in one `write` and one `fsync` (in a thread, so the
event loop never blocks); lines that arrive meanwhile wait for the next flush. A failed write is
truncated away, so a half-written line never stays in the file, and its `OSError` reaches every
delivery of the batch: the gateway retries them. A line torn by a crash (a process killed inside
`write`) is cut off before anything is appended. Several processes may append to one file
(workers, a second gateway): each batch is written, after any torn line is cut off, under the
file's `flock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.plugins import Event, PluginContext
from gateway.plugins.options import check_keys, required_string

_Pending = tuple[bytes, "asyncio.Future[None]"]


class JsonlPlugin:
    """Appends events to `path`, one fsync per batch of concurrent deliveries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fsyncs = 0  # flushes done: fewer than lines written when deliveries overlap
        self._fd: int | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"JsonlPlugin({str(self.path)!r})"

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    async def stop(self) -> None:
        """Wait for queued lines to reach the disk, then close the file."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def deliver(self, event: Event) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((orjson.dumps(event.to_json()) + b"\n", done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all(), name=f"jsonl-flush:{self.path}")
        await done

    async def _flush_all(self) -> None:
        while self._pending:
            # A delivery cancelled before its flush began (a timeout) is retried by the gateway:
            # writing it now would only duplicate the line.
            batch = [item for item in self._pending if not item[1].cancelled()]
            self._pending = []
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._write, b"".join(line for line, _ in batch))
            except asyncio.CancelledError:  # the loop is shutting down: no waiter may hang
                for _, done in batch + self._pending:
                    if not done.done():
                        done.set_exception(RuntimeError(f"jsonl writer for {self.path} was cancelled"))
                raise
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        return self._fd

    def _write(self, data: bytes) -> None:
        """Append `data` completely and fsync it, or leave the file as it was and raise (in a thread)."""
        fd = self._open()
        with _locked(fd):
            _drop_torn_line(fd)  # another process's, killed inside its write
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # drop a partial line; the batch will be retried
                    os.ftruncate(fd, size)
                raise
        self.fsyncs += 1


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    """Hold the file's lock: the workers of `gateway run --workers N`, and a second gateway,
    append to one file, and cutting back a torn or failed batch must never cut another
    process's lines. The kernel releases it if its holder dies."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _drop_torn_line(fd: int) -> None:
    """A process killed inside `write` (SIGKILL, power loss) can leave part of a batch: cut the
    file back to its last whole line. Nothing of that batch was acknowledged, so the gateway
    delivers it again; appending behind the fragment would instead glue it to the next line."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end < size:
        os.ftruncate(fd, end)
        os.fsync(fd)


def factory(options: Mapping[str, Any], context: PluginContext) -> JsonlPlugin:
    check_keys(options, "jsonl", ("path",))
    path = required_string(options, "path", " (the file to append to)")
    return JsonlPlugin(context.base_dir / Path(path).expanduser())

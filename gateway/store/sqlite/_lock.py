"""One writer at a time across processes, handed over the moment it is free.

SQLite serialises writers itself, but a writer that finds the lock taken polls: its busy
handler sleeps 1, 2, 5, 10 ... up to 100 ms between tries. With two gateway processes
committing back to back, the waiting one kept missing the short gaps between the other's
transactions: p99 latency of about 1 s with `--workers 2` (docs/benchmarks.md). A `flock` on a
file beside the store queues the waiter in the kernel, which wakes it when the lock is released,
and the kernel releases the lock of a process that dies.

`flock` cannot time out, and a lock held too long must still end in 503 `store_unavailable`
rather than a wait without end. So a contended acquire waits in a helper thread: the writer
waits for it at most `timeout` s. If it gives up, the helper keeps waiting, and releases the lock
at once if nobody wants it by the time it has it, or hands it to the writer's next acquire.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
from pathlib import Path


class WriterBusy(Exception):
    """Another process held the store's write lock for longer than the timeout."""


class WriterLock:
    """An exclusive `flock` on `path`, shared by every process writing one store. Used from
    one thread (the committer's), plus one helper thread that waits for it when it is taken."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._mutex = threading.Lock()
        self._got = threading.Event()
        self._asks: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: wait for the lock; False: end
        self._helper: threading.Thread | None = None
        self._waiting = False  # the helper waits in flock
        self._wanted = False  # the writer waits for the helper
        self._closed = False

    def acquire(self, timeout: float) -> None:
        """Hold the lock, or raise WriterBusy after `timeout` s."""
        with self._mutex:
            if not self._waiting:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    self._waiting = True
                    if self._helper is None:
                        self._helper = threading.Thread(target=self._help, name="store-writer-lock", daemon=True)
                        self._helper.start()
                    self._asks.put(True)
            self._wanted = True
        got = self._got.wait(timeout)
        with self._mutex:
            self._wanted = False
            if got or self._got.is_set():
                self._got.clear()
                return
        raise WriterBusy(f"another process held the store's write lock for over {timeout:g} s")

    def _help(self) -> None:
        while self._asks.get():
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._mutex:
                self._waiting = False
                if self._closed:  # closed while waiting: the descriptor is the helper's to close
                    os.close(self._fd)
                    return
                if self._wanted:
                    self._got.set()
                else:  # the writer gave up meanwhile: keep nobody else waiting
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._asks.put(False)
            if self._waiting:
                return
        os.close(self._fd)

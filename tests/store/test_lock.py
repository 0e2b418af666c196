"""The store's write lock between processes (gateway/store/sqlite/_lock.py): handed over at
once when free, a bounded wait when not, and never left held by a writer that gave up."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.store.sqlite._lock import WriterBusy, WriterLock


def held_elsewhere(path: Path) -> int:
    """A lock held by another open file description (as another process holds it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_free_lock_is_taken_and_released(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "w.lock")
    lock.acquire(1)
    assert not free(tmp_path / "w.lock")
    lock.release()
    assert free(tmp_path / "w.lock")
    lock.close()


def test_a_waiter_gets_the_lock_as_soon_as_it_is_released(tmp_path: Path) -> None:
    other = held_elsewhere(tmp_path / "w.lock")
    lock = WriterLock(tmp_path / "w.lock")
    threading.Timer(0.2, lambda: fcntl.flock(other, fcntl.LOCK_UN)).start()
    started = time.monotonic()
    lock.acquire(5)
    waited = time.monotonic() - started
    assert 0.15 < waited < 0.25, waited  # woken by the release, not by polling
    assert not free(tmp_path / "w.lock")
    lock.release()
    lock.close()
    os.close(other)


def test_a_lock_held_too_long_is_busy_and_never_kept_by_the_writer_that_gave_up(tmp_path: Path) -> None:
    other = held_elsewhere(tmp_path / "w.lock")
    lock = WriterLock(tmp_path / "w.lock")
    started = time.monotonic()
    with pytest.raises(WriterBusy):
        lock.acquire(0.1)
    assert 0.1 <= time.monotonic() - started < 0.5
    fcntl.flock(other, fcntl.LOCK_UN)  # the helper gets it now, and lets it go: nobody wants it
    time.sleep(0.1)
    assert free(tmp_path / "w.lock")
    lock.acquire(1)  # and the writer can take it again
    lock.release()
    lock.close()
    os.close(other)


def test_the_next_acquire_takes_over_a_wait_still_under_way(tmp_path: Path) -> None:
    other = held_elsewhere(tmp_path / "w.lock")
    lock = WriterLock(tmp_path / "w.lock")
    with pytest.raises(WriterBusy):
        lock.acquire(0.05)
    threading.Timer(0.1, lambda: fcntl.flock(other, fcntl.LOCK_UN)).start()
    lock.acquire(5)  # the helper still waiting hands its lock over; no second helper was started
    assert sum(t.name == "store-writer-lock" for t in threading.enumerate()) == 1
    assert not free(tmp_path / "w.lock")
    lock.release()
    lock.close()
    os.close(other)

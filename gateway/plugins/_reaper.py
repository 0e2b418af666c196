"""Ends the exec plugin's commands, and the processes they start, when the gateway dies, even
by SIGKILL, which no handler in the gateway can see.

Two layers. Each command is started with `PR_SET_PDEATHSIG` = SIGKILL (Linux): the kernel kills
it when the thread that forked it exits. asyncio forks from the event loop's thread, which lives
as long as the gateway serves, so this fires at the gateway's death, not earlier. It reaches the
direct child only, so a small reaper process also holds the process group of every running
command: it reads "+pgid"/"-pgid" lines on a pipe from the gateway, and when the pipe reaches
end of file (the gateway exited, however it exited) it kills every group still listed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger("gateway.plugins.exec")

PR_SET_PDEATHSIG = 1

_SCRIPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ends when the gateway does: end of its input
groups = set()
for line in sys.stdin.buffer:
    pgid = int(line[1:])
    (groups.add if line[:1] == b"+" else groups.discard)(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


def _pdeathsig() -> Callable[[], None] | None:
    """A `preexec_fn` that asks the kernel to SIGKILL the child when its parent thread exits."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, never in the forked child

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return die_with_parent


DIE_WITH_PARENT = _pdeathsig()


class Reaper:
    """The reaper process of one exec plugin, from `start()` to `close()`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.name == "posix" and self._proc is None:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SCRIPT], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, start_new_session=True)

    def _send(self, line: bytes) -> None:
        if self._proc is None or self._proc.stdin is None:
            return  # not started (a plugin used without start(), as in unit tests)
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except OSError as exc:
            log.warning("the exec reaper is gone (%s): if the gateway crashes, commands' children may "
                        "keep running", exc)

    def hold(self, pgid: int) -> None:
        """Kill process group `pgid` if the gateway dies before `release(pgid)`."""
        self._send(b"+%d\n" % pgid)

    def release(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """End the reaper (it kills any group still held: none after a clean stop)."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait()
            self._proc = None

"""Profile the gateway under one benchmark workload with py-spy; print where its threads spend time.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py metacopier 32          # workload, connections
    .venv/bin/python bench/profile.py tradrapi-500 8 --seconds 10
    .venv/bin/python bench/profile.py metacopier 32 --workers 2   # every worker, summed

Starts the gateway exactly as bench/run.py does, samples it with `py-spy record --format raw`
while wrk drives the workload, and prints the CPU the process used (user/system, as a share of
one core), the group-commit sizes, and the top functions by own and inclusive samples, split by
thread: the event loop (HTTP, verification, answers) and the store writer (SQLite), with the
samples where a thread only waits for work (epoll, an empty queue) counted apart as idle.
"""

from __future__ import annotations

import collections
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # bench/ is not a package

# Where a thread waits for work: the loop's epoll, the executors' and the writer's queue.get.
IDLE = ("Runner.run (", "_worker (concurrent/futures/thread.py:81)", "_connection_worker_thread (aiosqlite/core.py:59)",
        "select (selectors.py", "GroupCommitter._run (",  # the writer's own frame: its blocking get
        "WriterLock._help (")  # the helper blocked in flock for the writer


def tree_ticks(target: bench.Target) -> tuple[int, int]:
    """User and system CPU, in clock ticks, of the target's live processes (workers included)."""
    user = system = 0
    for pid in target.processes():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def summarise(raw: Path, top: int) -> str:
    """Own and inclusive sample shares per thread kind from py-spy's raw (collapsed) output."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(f.startswith("WriterLock.acquire (") for f in frames):
            kind = "store writer, waiting its turn (another process writes)"
        elif any(f.startswith("WriterLock._help (") for f in frames):
            kind = "store writer's lock helper"
        elif any("aiosqlite" in f for f in frames):
            kind = "reader (aiosqlite)"
        elif any("GroupCommitter._run" in f or "concurrent/futures/thread.py" in f for f in frames):
            kind = "store writer"
        else:
            kind = "event loop"
        if any(frames[-1].startswith(idle) for idle in IDLE):
            kind += ", idle"
        n = int(count)
        totals[kind] += n
        own[kind][frames[-1]] += n
        for frame in set(frames):
            inclusive[kind][frame] += n
    grand = sum(totals.values()) or 1
    lines: list[str] = []
    for kind in sorted(totals):
        if kind.endswith("idle"):
            lines.append(f"== {kind}: {100 * totals[kind] / grand:.0f}% of samples")
            continue
        lines.append(f"== {kind}: {100 * totals[kind] / grand:.0f}% of samples")
        lines.append("-- own")
        lines += [f"{100 * n / grand:5.1f}%  {f}" for f, n in own[kind].most_common(top)]
        lines.append("-- inclusive")
        below_root = [(f, n) for f, n in inclusive[kind].most_common() if n < 0.97 * totals[kind]]
        lines += [f"{100 * n / grand:5.1f}%  {f}" for f, n in below_root[:top]]
    return "\n".join(lines)


@click.command()
@click.argument("workload", type=click.Choice(bench.WORKLOADS))
@click.argument("connections", type=int)
@click.option("--seconds", type=float, default=8.0, show_default=True)
@click.option("--top", type=int, default=20, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes (gateway run --workers); py-spy then samples all of them.")
def main(workload: str, connections: int, seconds: float, top: int, workers: int) -> None:
    spy_binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy_binary is None:
        raise click.ClickException("py-spy is needed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmp:
        folder = Path(tmp)
        requests_file = None if workload == "tradrapi-500" else bench.request_file(workload, folder, 150_000)
        target = bench.Target("gateway", folder / "gateway", workers=workers)
        raw = folder / "profile.txt"
        try:
            spy = subprocess.Popen([spy_binary, "record", "-p", str(target.proc.pid), "-o", str(raw), "--format",
                                    "raw", "-r", "200", "-d", str(round(seconds) + 1),
                                    *(["--subprocesses"] if workers > 1 else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            args = ["tradrapi", hashlib.sha1(bench.TR_KEY.encode()).hexdigest(), "500"] \
                if workload == "tradrapi-500" else ["file", str(requests_file)]
            before, started = tree_ticks(target), time.monotonic()
            result = bench.wrk(bench.ensure_wrk(), target.port, connections, seconds, args)
            after, elapsed = tree_ticks(target), time.monotonic() - started
            metrics = httpx.get(f"http://127.0.0.1:{target.port}/metrics").text
            spy.wait(timeout=seconds + 30)
        finally:
            target.stop()
        per_request = 500 if workload == "tradrapi-500" else 1
        click.echo(f"{workload} c={connections}: {result['rps']:,.0f} req/s, {result['rps'] * per_request:,.0f} "
                   f"events/s, p99 {result['p99_us'] / 1000:.2f} ms")
        ticks = 100  # os.sysconf("SC_CLK_TCK") on Linux
        click.echo(f"gateway CPU: user {(after[0] - before[0]) / ticks / elapsed:.0%}, "
                   f"system {(after[1] - before[1]) / ticks / elapsed:.0%} of one core")
        sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                 if line.startswith(("gateway_commit_batch_size_count", "gateway_commit_batch_size_sum"))}
        if sizes.get("gateway_commit_batch_size_count"):
            groups = sizes["gateway_commit_batch_size_count"]
            click.echo(f"group commits: {groups:,.0f}, {sizes['gateway_commit_batch_size_sum'] / groups:.1f} "
                       "events per group")
        click.echo(summarise(raw, top))


if __name__ == "__main__":
    main()

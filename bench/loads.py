"""Load runs only (no fan-out, floors or listing), one JSON line per run: for comparing two
builds side by side. Run it from each checkout, with that checkout's venv, alternately:

    .venv/bin/python bench/loads.py --workloads metacopier,tradrapi-500 --kinds gateway

docs/benchmarks.md compares releases this way (the gateway alone, two alternating rounds).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/ is not a package


@click.command()
@click.option("--workloads", default="metacopier,tradrapi-500", show_default=True)
@click.option("--connections", default="1,8,32,128", show_default=True)
@click.option("--seconds", type=float, default=8.0, show_default=True)
@click.option("--kinds", default="gateway", show_default=True,
              help="Any of bare, minimal, gateway, gateway-pg (with --store).")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes per target.")
@click.option("--store", "pg_server", metavar="postgresql://...", help="The server for the gateway-pg kind.")
def main(workloads: str, connections: str, seconds: float, kinds: str, workers: int, pg_server: str | None) -> None:
    binary = run.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="gateway-loads-") as tmp:
        folder = Path(tmp)
        for workload in workloads.split(","):
            requests_file = None if workload == "tradrapi-500" else run.request_file(workload, folder, 150_000)
            for level in (int(c) for c in connections.split(",")):
                for kind in kinds.split(","):
                    result = run.load_run(binary, kind, workload, level, seconds, folder, requests_file, workers,
                                          pg_server)
                    click.echo(json.dumps({"checkout": Path.cwd().name, "kind": kind, "workload": workload,
                                           "connections": level, "workers": workers, "rps": round(result["rps"]),
                                           "cpu_s_per_1k": round(result["cpu_s_per_1k_requests"], 3),
                                           "events_per_s": round(result["events_per_s"]),
                                           "p99_ms": round(result["p99_us"] / 1000, 2), "non2xx": result["non2xx"]}))


if __name__ == "__main__":
    main()

"""A smoke run of the benchmark (seconds, tiny load), so bench/run.py cannot rot."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by scripts/setup test")
def test_quick_benchmark_writes_results_and_chart(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path),
                           "--workloads", "metacopier,tradrapi-500,bad-signature"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
    runs = {(r["kind"], r["workload"], r["connections"]): r for r in results["load"]}
    assert len(runs) == 3 * 3 * 2  # bare, minimal and gateway; three workloads; two levels
    for (kind, workload, _), run in runs.items():
        assert run["requests"] > 0 and run["socket_errors"] == 0
        if kind != "bare" and workload != "bad-signature":  # both durable targets stored what they acknowledged
            assert run["non2xx"] == 0 and run["events_stored"] > 0 and run["ratio_to_bare"] > 0
        if kind == "gateway":
            assert run["ratio_to_minimal"] > 0 and run["p99_ratio_to_minimal"] > 0
        if workload == "bad-signature" and kind == "minimal":
            assert run["non2xx"] == run["requests"] and run["events_stored"] == 0
        if workload == "bad-signature" and kind == "gateway":
            assert run["non2xx"] == run["requests"] and run["events_stored"] == 0  # nothing but forensics
            assert run["rejections_kept"] <= 1000  # the bounded log
    assert runs[("gateway", "tradrapi-500", 1)]["events_per_s"] == pytest.approx(
        runs[("gateway", "tradrapi-500", 1)]["rps"] * 500)
    assert results["fanout"]["journal_lines"] == results["fanout"]["events"] > 0
    assert set(results["listing"]["queries"]) >= {"unfiltered", "source", "type glob"}


def test_cost_table_runs_every_experiment() -> None:
    """bench/costs.py (docs/benchmarks.md's cost table) in miniature: every row measured."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "costs.py"), "--requests", "300", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = (re.split(r"\s{2,}", line.strip()) for line in proc.stdout.splitlines()[1:])
    rows = {name: figures for name, *figures in lines}
    for part in ("gateway", "minimal pipeline", "metrics", "secondary indexes",
                 "store handoff (queue, futures, wake-ups)", "with one plugin (routes, outbox rows)",
                 "verify and parse (HMAC, identity, fingerprint)"):
        assert float(rows[part][0]) > 0, (part, proc.stdout)
    assert float(rows["gateway"][1]) > 0 and float(rows["minimal pipeline"][1]) > 0  # both writers did work
    assert "guarded protocol" in rows


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by scripts/setup test")
def test_load_runs_alone_print_one_line_each() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "loads.py"), "--workloads", "metacopier",
                           "--connections", "1", "--seconds", "1", "--kinds", "minimal,gateway"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [r["kind"] for r in runs] == ["minimal", "gateway"]
    assert all(r["rps"] > 0 and r["non2xx"] == 0 for r in runs)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by scripts/setup test")
def test_load_runs_with_two_workers_report_cpu_per_request() -> None:
    """`--workers 2`: every target runs two worker processes, and the CPU of all of them is counted."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "loads.py"), "--workloads", "metacopier",
                           "--connections", "8", "--seconds", "1", "--kinds", "bare,gateway", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["kind"], r["workers"]) for r in runs] == [("bare", 2), ("gateway", 2)]
    assert all(r["rps"] > 0 and r["non2xx"] == 0 and r["cpu_s_per_1k"] > 0 for r in runs)

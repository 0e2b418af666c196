"""Ingest metrics at /metrics after known traffic: exact counts, skew with both signs."""

from __future__ import annotations

import time

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MC_BODY, PS_BODY, TR_BODY, RunningGateway, mc_sign, ps_sign, tr_sign


def samples(gw: RunningGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = gw.client.get("/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_ingest_metrics_after_known_traffic(gateway: RunningGateway) -> None:
    now_ms = int(time.time() * 1000)
    for _ in range(3):  # three bad signatures
        gateway.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY, "x" * 40))
    gateway.post("/hooks/metacopier", MC_BODY, mc_sign(MC_BODY, ts_ms=now_ms - 30_000))  # stored, 30 s behind
    for _ in range(2):  # two duplicates, with a clock 20 s ahead
        gateway.post("/hooks/metacopier", MC_BODY, {**mc_sign(MC_BODY, ts_ms=now_ms + 20_000),
                                                    "X-MetaCopier-Delivery-Attempt": "3"})
    gateway.post("/hooks/pipsync", PS_BODY, ps_sign(PS_BODY))
    gateway.post("/hooks/tradrapi", TR_BODY, tr_sign())
    gateway.post("/hooks/tradrapi", TR_BODY, {})  # missing_signature
    junk = b"not json"
    gateway.post("/hooks/metacopier", junk, mc_sign(junk))  # quarantined
    gateway.post("/hooks/random-name", b"", {})
    gateway.post("/hooks/another-name", b"", {})

    m = samples(gateway)
    assert value(m, "gateway_rejections_total", source="metacopier", code="bad_signature") == 3
    assert value(m, "gateway_rejections_total", source="tradrapi", code="missing_signature") == 1
    assert value(m, "gateway_rejections_total", source="?", code="unknown_source") == 2
    assert value(m, "gateway_requests_total", source="metacopier") == 7
    assert value(m, "gateway_requests_total", source="?") == 2
    assert value(m, "gateway_events_total", source="metacopier", event_type="position.opened", status="stored") == 1
    assert value(m, "gateway_events_total", source="metacopier", event_type="position.opened",
                 status="duplicate") == 2
    assert value(m, "gateway_events_total", source="metacopier", event_type="-", status="quarantined") == 1
    assert value(m, "gateway_events_total", source="pipsync", event_type="trade.opened", status="stored") == 1
    assert value(m, "gateway_events_total", source="tradrapi", event_type="open_position", status="stored") == 1
    # skew: one request about -30 s, two about +20 s; the histogram keeps both signs
    assert value(m, "gateway_sender_clock_skew_seconds_count", source="metacopier") == 4  # incl. quarantined one
    assert value(m, "gateway_sender_clock_skew_seconds_bucket", source="metacopier", le="-10.0") == 1
    assert value(m, "gateway_sender_clock_skew_seconds_bucket", source="metacopier", le="10.0") == 2
    assert value(m, "gateway_sender_clock_skew_seconds_bucket", source="metacopier", le="60.0") == 4
    assert value(m, "gateway_sender_attempt_bucket", source="metacopier", le="2.0") == 2  # attempt 1 twice
    assert value(m, "gateway_sender_attempt_count", source="metacopier") == 4
    assert value(m, "gateway_sender_attempt_count", source="tradrapi") == 1  # the batch's "attempts"
    assert value(m, "gateway_ingest_latency_seconds_count", source="metacopier") == 4
    assert value(m, "gateway_commit_batch_size_count") >= 1
    assert value(m, "gateway_commit_batch_size_sum") == 4  # events written: 1 + 1 + 1 + 1 quarantined
    assert value(m, "gateway_store_size_bytes") > 0
    for secret_like in ("x" * 40, orjson.loads(MC_BODY)["accountId"]):
        assert secret_like not in gateway.client.get("/metrics").text  # no ids or secrets in labels

"""The OpenAPI document matches the running API: schemathesis generates requests from it and
checks every response (status, content type, body schema) against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.app import GatewayApp
from gateway.config import parse_config
from gateway.ledger_api import LedgerApi
from gateway.overview_api import OverviewApi
from tests.conftest import RunningGateway, mc_sign, source_table, wait_for

SECRET = "openapi-client-secret-0123"
# "Valid per schema, yet refused" is expected for one input a schema cannot describe: a
# cursor must be one this gateway signed. Every other check stays on.
UNEXPRESSIBLE = [positive_data_acceptance]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, str]]:
    folder: Path = tmp_path_factory.mktemp("openapi")
    config = parse_config({
        "sources": [source_table("metacopier", "metacopier")],
        "store": {"path": str(folder / "gateway.db")},
        "plugins": [{"name": "sink", "use": "tests.fanout_plugins:recorder"}],
        "clients": [{"id": "probe", "secret": SECRET, "scopes": ["events:read", "deliveries:write"]}],
    }, origin="test.toml", base_dir=folder)
    with RunningGateway(GatewayApp(config)) as gw:
        for i in range(5):  # something to list, fetch and retry
            body = orjson.dumps({"type": "position.opened", "position": {"id": f"o{i}", "symbol": "EURUSD"}})
            assert gw.post("/hooks/metacopier", body, mc_sign(body)).status_code == 200
        body = orjson.dumps({"type": "position.closed", "position": {"id": "lost", "volume": 1}})
        assert gw.post("/hooks/metacopier", body, mc_sign(body)).status_code == 200  # an anomaly to acknowledge
        gw.post("/hooks/metacopier", b"{}", {"X-MetaCopier-Signature": "0" * 64})  # a rejection
        token = gw.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "probe",
                                                      "client_secret": SECRET}).json()["access_token"]
        wait_for(lambda: len(gw.client.get("/api/v1/positions", headers={"Authorization": f"Bearer {token}"})
                             .json()["positions"]) == 6)
        yield gw, token


def test_api_conforms_to_its_openapi_document(running: tuple[RunningGateway, str]) -> None:
    """Every operation (the never-ending stream excepted: it has its own tests), driven with
    generated valid and invalid requests; each response must match the document."""
    gw, token = running
    schema = schemathesis.openapi.from_url(f"{gw.url}/api/v1/openapi.json").exclude(path="/api/v1/stream")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, excluded_checks=UNEXPRESSIBLE)

        check()
        tested.append(operation.label)
    assert len(tested) == 18, tested  # every operation but the stream


def test_document_is_openapi_3_1_and_lists_every_route(running: tuple[RunningGateway, str]) -> None:
    gw, _ = running
    doc = gw.client.get("/api/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    api_paths = ({route.path for route in gw.app.api.routes()} | {route.path for route in gw.app.streams.routes()}
                 | {route.path for route in LedgerApi(gw.app.api).routes()}
                 | {route.path for route in OverviewApi(gw.app.api, []).routes()})
    documented = {path.replace("{event_id}", "{event_id:id}").replace("{delivery_id}", "{delivery_id:id}")
                  .replace("{anomaly_id}", "{anomaly_id:id}").replace("{position_id}", "{position_id:path}")
                  for path in doc["paths"]}
    assert api_paths - {"/api/v1/openapi.json", "/api/v1/ws"} == documented

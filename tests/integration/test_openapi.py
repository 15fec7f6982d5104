"""schemathesis against the live daemon: no server error, every answer as /openapi.json says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from collectord.api.openapi import document
from tests.integration.daemon import RunningDaemon, start_daemon

pytestmark = pytest.mark.integration

# Streams never end, so they are left to tests/integration/test_streams.py.
schema = schemathesis.openapi.from_dict(document()).exclude(path_regex=r"^/api/v1/(stream|ws)$")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    daemon = start_daemon(tmp)
    yield daemon
    assert daemon.stop() == 0, daemon.log()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_description(case: schemathesis.Case, live: RunningDaemon) -> None:
    # Values the schema cannot tie together (start < end, a timestamp within the accepted
    # window) may be refused although each is valid alone.
    case.call_and_validate(base_url=live.url(""), excluded_checks=[positive_data_acceptance])


def test_description_is_served_and_names_every_route(daemon: RunningDaemon) -> None:
    status, served = daemon.get("/openapi.json")
    assert status == 200 and served["openapi"].startswith("3.1")
    assert served == document()
    for path in ("/api/v1/metrics", "/api/v1/metrics/batch", "/api/v1/query", "/api/v1/stream", "/api/v1/ws"):
        assert path in served["paths"]
    metric = served["components"]["schemas"]["MetricIn"]
    assert metric["properties"]["name"]["pattern"] == "^[a-zA-Z][a-zA-Z0-9._-]*$"
    assert metric["properties"]["tags"]["maxProperties"] == 20

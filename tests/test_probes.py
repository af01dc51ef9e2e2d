"""HttpHealthProbe over real HTTP (runbook 6.1): a failing check is a result, not an exception."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from bot.core.ports import HealthProbe
from integrations.probes import HttpHealthProbe, mismatches
from tests.harness.trading_api import FakeTradingApi

COMPONENTS_OK = {"components": {"database": "OK", "cache": "OK", "message_queue": "OK",
                                "external_apis": "OK"}}


@pytest.fixture
def fake_api() -> Iterator[FakeTradingApi]:
    """A running fake serving healthy /health and /health/detailed."""
    with FakeTradingApi() as fake:
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One httpx client for the module (building its TLS context takes ~0.1 s)."""
    with httpx.Client() as shared:
        yield shared


@pytest.fixture
def probe(http: httpx.Client) -> HttpHealthProbe:
    """A probe with a short timeout."""
    return HttpHealthProbe(timeout=0.5, client=http)


def test_probe_satisfies_the_port(probe: HttpHealthProbe) -> None:
    """HttpHealthProbe can be used where the core expects a HealthProbe."""
    port: HealthProbe = probe
    assert callable(port.check)


def test_healthy(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """/health answering {"status": "healthy"} is ok."""
    result = probe.check(fake_api.url("/health"), {"status": "healthy"})
    assert result.ok, result.detail
    assert "HTTP 200" in result.detail


def test_detailed_components_all_ok(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """Nested component expectations match recursively."""
    assert probe.check(fake_api.url("/health/detailed"), COMPONENTS_OK).ok


def test_degraded_names_the_mismatch(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """A degraded status fails, the detail saying what was expected and what came."""
    fake_api.set_unhealthy("degraded")
    result = probe.check(fake_api.url("/health"), {"status": "healthy"})
    assert not result.ok
    assert result.detail == "status: expected 'healthy', got 'degraded'"


def test_nested_component_mismatch_and_missing(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """A failed component and a missing one are both named with their dotted path."""
    fake_api.set_health_detailed({"status": "healthy", "components": {
        "database": "DOWN", "message_queue": "OK", "external_apis": "OK"}})
    result = probe.check(fake_api.url("/health/detailed"), COMPONENTS_OK)
    assert not result.ok
    assert "components.database: expected 'OK', got 'DOWN'" in result.detail
    assert "components.cache: missing" in result.detail


def test_non_json_fails(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """A 200 HTML page is not a healthy answer."""
    fake_api.respond_raw("/health", 200, "<html>It works!</html>", "text/html")
    result = probe.check(fake_api.url("/health"), {"status": "healthy"})
    assert not result.ok and "not JSON" in result.detail and "text/html" in result.detail


def test_http_500_fails(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """A 500 fails with the status code in the detail."""
    fake_api.fail_next(1, status=500)
    result = probe.check(fake_api.url("/health"), {"status": "healthy"})
    assert not result.ok and "HTTP 500" in result.detail


def test_503_with_unhealthy_body_names_both(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """A 503 JSON body is explained too: the status code and the mismatching field."""
    fake_api.set_health({"status": "unhealthy"}, status=503)
    result = probe.check(fake_api.url("/health"), {"status": "healthy"})
    assert not result.ok
    assert "HTTP 503" in result.detail and "status: expected 'healthy', got 'unhealthy'" in result.detail


def test_timeout_fails(probe: HttpHealthProbe, fake_api: FakeTradingApi) -> None:
    """A slower answer than the timeout is a failed check saying it timed out."""
    fake_api.delay_next(1, seconds=2.0)
    result = probe.check(fake_api.url("/health"), {"status": "healthy"})
    assert not result.ok and "timed out after 0.5 s" in result.detail


def test_connection_refused_fails(probe: HttpHealthProbe) -> None:
    """Nothing listening is a failed check saying it could not connect."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe.check(f"http://127.0.0.1:{port}/health", {"status": "healthy"})
    assert not result.ok and "cannot connect" in result.detail


def test_json_array_is_not_an_object() -> None:
    """A top-level JSON array fails with 'expected a JSON object'."""
    assert mismatches({"status": "healthy"}, ["healthy"]) == ["body: expected a JSON object, got ['healthy']"]


def test_boolean_is_not_a_number() -> None:
    """JSON true does not satisfy an expected 1."""
    assert mismatches({"up": 1}, {"up": True}) == ["up: expected 1, got True"]

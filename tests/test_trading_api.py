"""TradingApiClient against a fake trading admin API over real HTTP on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from bot.core.ports import TradingControls, TradingStatus
from bot.errors import BackendUnavailable, IntegrationError
from integrations.trading_api import TradingApiClient, TradingPaths
from tests.harness.trading_api import DEFAULT_API_KEY, FakeTradingApi


@pytest.fixture
def fake_api() -> Iterator[FakeTradingApi]:
    """A running fake admin API with 20 bots, trading, maintenance off."""
    with FakeTradingApi() as fake:
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One httpx client for the module (building its TLS context takes ~0.1 s)."""
    with httpx.Client() as shared:
        yield shared


@pytest.fixture
def client(fake_api: FakeTradingApi, http: httpx.Client) -> TradingApiClient:
    """A client holding the right key, with a short timeout."""
    return TradingApiClient(fake_api.base_url, DEFAULT_API_KEY, timeout=0.5, client=http)


def test_client_satisfies_the_port(client: TradingApiClient) -> None:
    """TradingApiClient can be used where the core expects TradingControls."""
    controls: TradingControls = client
    assert callable(controls.stop) and callable(controls.start)


def test_stop_stops_trading_and_sends_the_reason(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """stop() POSTs the reason with the graceful mode by default and the swarm stops trading."""
    client.stop("deploy v2.3.0 (runbook 5.2)")
    assert fake_api.calls_to("/admin/trading/stop")[0].body == {"reason": "deploy v2.3.0 (runbook 5.2)",
                                                                 "mode": "graceful"}
    assert fake_api.trading is False and fake_api.active_bots == 0


def test_graceful_stop_cancels_orders_and_keeps_positions(client: TradingApiClient) -> None:
    """A graceful stop (stopentry + cancel): no bot trades, no resting order, the positions are still there."""
    before = client.status()
    assert before.trading and before.open_orders == 20 and before.open_positions == 7 and before.halt is None
    client.stop("runbook 5.2")
    after = client.status()
    assert (after.trading, after.active_bots, after.open_orders) == (False, 0, 0)
    assert after.open_positions == 7 and after.halt == "graceful"


def test_emergency_stop_is_sent_and_reported(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """stop(mode="emergency") sends that mode; the status says which halt is in force until a start."""
    client.stop("runbook 8.2", mode="emergency")
    assert fake_api.calls_to("/admin/trading/stop")[0].body["mode"] == "emergency"
    assert client.status().halt == "emergency"
    client.start(0.25)
    resumed = client.status()
    assert resumed.trading and resumed.halt is None and resumed.open_orders == resumed.active_bots == 5


def test_unknown_stop_mode_is_refused_before_any_call(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """stop(mode="later") raises ValueError and sends nothing."""
    with pytest.raises(ValueError, match="graceful, emergency"):
        client.stop("x", mode="later")  # type: ignore[arg-type]
    assert fake_api.calls == []


def test_a_lying_api_answers_200_but_keeps_trading(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """In "lie" mode the stop is answered 200 and nothing halts: only the status tells the truth."""
    fake_api.set_mode("lie")
    client.stop("incident")  # no error: the API claims success
    status = client.status()
    assert status.trading and status.active_bots == 20 and status.open_orders == 20


def test_a_failing_api_raises_backend_unavailable_on_every_call(client: TradingApiClient,
                                                                 fake_api: FakeTradingApi) -> None:
    """In "fail" mode every call gets a 5xx (BackendUnavailable) and nothing changes; "ok" heals it."""
    fake_api.set_mode("fail", status=502)
    for call in (lambda: client.stop("x"), client.status, client.health_detailed):
        with pytest.raises(BackendUnavailable, match="502"):
            call()
    fake_api.set_mode("ok")
    assert client.status().trading is True


def test_a_hanging_api_times_out_and_recovers(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """In "hang" mode a call gets no answer within the client's timeout (BackendUnavailable, timed out);
    after set_mode("ok") the API answers again."""
    fake_api.set_mode("hang", seconds=30)
    with pytest.raises(BackendUnavailable, match="timed out"):
        client.status()
    fake_api.set_mode("ok")
    assert client.status().total_bots == 20


def test_a_slow_api_still_answers_within_the_timeout(fake_api: FakeTradingApi, http: httpx.Client) -> None:
    """In "slow" mode answers come late but come: a client with a longer timeout gets them."""
    fake_api.set_mode("slow", seconds=0.3)
    patient = TradingApiClient(fake_api.base_url, DEFAULT_API_KEY, timeout=5, client=http)
    assert patient.status().trading is True


def test_status_optional_fields_may_be_missing(fake_api: FakeTradingApi, client: TradingApiClient) -> None:
    """An API that reports only the required fields gives None for orders, positions, PnL and halt."""
    fake_api.respond_raw("/admin/trading/status", 200,
                         '{"trading": true, "active_bots": 2, "total_bots": 2, "maintenance": false}',
                         "application/json")
    status = client.status()
    assert (status.open_orders, status.open_positions, status.pnl, status.halt) == (None, None, None, None)


def test_status_optional_field_of_the_wrong_type_is_malformed(fake_api: FakeTradingApi,
                                                              client: TradingApiClient) -> None:
    """"open_orders": "many" is a malformed status, named in the error."""
    fake_api.respond_raw("/admin/trading/status", 200, '{"trading": true, "active_bots": 2, "total_bots": 2, '
                         '"maintenance": false, "open_orders": "many"}', "application/json")
    with pytest.raises(IntegrationError, match="open_orders: expected int or null"):
        client.status()


def test_health_detailed_lists_the_runbook_components(client: TradingApiClient) -> None:
    """GET /health/detailed: database, cache, message_queue and external_apis OK (runbook 6.1)."""
    report = client.health_detailed()
    assert report.healthy and report.status == "healthy"
    assert report.components == {"database": "OK", "cache": "OK", "message_queue": "OK", "external_apis": "OK"}


def test_unhealthy_503_with_a_body_is_a_report(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """A 503 that carries the health JSON is an unhealthy report naming the failed component, not an error."""
    fake_api.set_health_detailed({"status": "unhealthy", "components": {"database": "FAIL", "cache": "OK"}}, 503)
    report = client.health_detailed()
    assert not report.healthy and report.http_status == 503 and report.components["database"] == "FAIL"


def test_health_detailed_5xx_without_a_body_is_backend_unavailable(client: TradingApiClient,
                                                                   fake_api: FakeTradingApi) -> None:
    """A 502 from a proxy (HTML body) is BackendUnavailable, as for any other call."""
    fake_api.respond_raw("/health/detailed", 502, "<html>Bad Gateway</html>")
    with pytest.raises(BackendUnavailable, match="502"):
        client.health_detailed()


def test_stop_twice_is_fine(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """Stopping an already stopped swarm succeeds (idempotent)."""
    client.stop("first")
    client.stop("second")
    assert client.status().trading is False


def test_start_sends_the_fraction(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """start(0.25) POSTs {"fraction": 0.25} and a quarter of the bots trade."""
    client.stop("maintenance")
    client.start(0.25)
    assert fake_api.calls_to("/admin/trading/start")[0].body == {"fraction": 0.25}
    assert client.status().active_bots == 5


def test_status_is_parsed(client: TradingApiClient) -> None:
    """status() turns the JSON answer into a TradingStatus, extra keys in detail."""
    status = client.status()
    assert status == TradingStatus(trading=True, active_bots=20, total_bots=20, maintenance=False,
                                   detail={"last_reason": None}, open_orders=20, open_positions=7, pnl=1234.5)


def test_maintenance_on_and_off(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """maintenance(True/False) POSTs {"enabled": bool} and the flag follows."""
    client.maintenance(True)
    assert client.status().maintenance is True
    client.maintenance(False)
    bodies = [c.body for c in fake_api.calls_to("/admin/maintenance")]
    assert bodies == [{"enabled": True}, {"enabled": False}]
    assert client.status().maintenance is False


def test_api_key_is_sent_in_the_header(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """Every call carries X-API-Key."""
    client.status()
    client.maintenance(True)
    assert [c.header("X-API-Key") for c in fake_api.calls] == [DEFAULT_API_KEY, DEFAULT_API_KEY]


def test_wrong_key_gives_a_hint_and_never_the_key(fake_api: FakeTradingApi) -> None:
    """A rejected key raises IntegrationError with an API-key hint, and the key appears nowhere in it."""
    wrong = "wrong-secret-key-123"
    api = TradingApiClient(fake_api.base_url, wrong, timeout=0.5)
    with api, pytest.raises(IntegrationError) as info:
        api.stop("x")
    exc = info.value
    assert not isinstance(exc, BackendUnavailable)
    assert "401" in exc.message and "API key" in (exc.hint or "")
    assert wrong not in exc.user_text() and wrong not in repr(exc) and wrong not in str(exc.__cause__)


def test_missing_key_hint_says_none_is_configured(fake_api: FakeTradingApi) -> None:
    """Without a key the hint says to configure trading_api.api_key_env."""
    api = TradingApiClient(fake_api.base_url, None, timeout=0.5)
    with api, pytest.raises(IntegrationError) as info:
        api.status()
    assert "api_key_env" in (info.value.hint or "")
    assert fake_api.calls[0].header("X-API-Key") is None


def test_key_is_not_logged(fake_api: FakeTradingApi, caplog: pytest.LogCaptureFixture) -> None:
    """Even at DEBUG level, no log record contains the API key."""
    caplog.set_level(logging.DEBUG)
    with TradingApiClient(fake_api.base_url, DEFAULT_API_KEY, timeout=0.5) as api:
        api.stop("x")
        api.status()
    assert caplog.records  # httpx and httpcore did log something
    assert all(DEFAULT_API_KEY not in r.getMessage() for r in caplog.records)


def test_server_error_is_backend_unavailable(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """A 5xx answer raises BackendUnavailable naming the trading API and the status."""
    fake_api.fail_next(1, status=503)
    with pytest.raises(BackendUnavailable) as info:
        client.stop("x")
    assert info.value.system == "trading API" and "503" in info.value.message


def test_timeout_is_backend_unavailable(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """A call slower than the timeout raises BackendUnavailable saying it timed out."""
    fake_api.delay_next(1, seconds=2.0)
    with pytest.raises(BackendUnavailable, match="timed out"):
        client.status()


def test_connection_refused_is_backend_unavailable() -> None:
    """Nothing listening raises BackendUnavailable."""
    with FakeTradingApi() as fake:
        url = fake.base_url
    api = TradingApiClient(url, DEFAULT_API_KEY, timeout=0.5)
    with api, pytest.raises(BackendUnavailable) as info:
        api.status()
    assert DEFAULT_API_KEY not in info.value.user_text()


def test_other_4xx_quotes_the_server_message(client: TradingApiClient) -> None:
    """A 409 becomes an IntegrationError carrying the server's own explanation."""
    client.maintenance(True)
    with pytest.raises(IntegrationError) as info:
        client.start(0.25)
    assert not isinstance(info.value, BackendUnavailable)
    assert "409" in info.value.message and "maintenance mode is on" in info.value.message


def test_long_server_message_is_truncated(client: TradingApiClient, fake_api: FakeTradingApi) -> None:
    """A huge error body is cut down in the message."""
    fake_api.respond_raw("/admin/trading/stop", 400, "x" * 5000, "text/plain")
    with pytest.raises(IntegrationError) as info:
        client.stop("x")
    assert len(info.value.message) < 300 and info.value.message.endswith("…")


@pytest.mark.parametrize("body", ["<html>oops</html>", '{"trading": "yes"}', "[1, 2]"])
def test_malformed_status_is_integration_error(client: TradingApiClient, fake_api: FakeTradingApi,
                                               body: str) -> None:
    """A status answer that is not JSON, or lacks the expected fields, raises IntegrationError."""
    fake_api.respond_raw("/admin/trading/status", 200, body, "application/json")
    with pytest.raises(IntegrationError, match="trading API: GET /admin/trading/status"):
        client.status()


@pytest.mark.parametrize("fraction", [0, -0.5, 1.01, float("nan"), True])
def test_invalid_fraction_is_rejected_before_any_call(client: TradingApiClient, fake_api: FakeTradingApi,
                                                      fraction: float) -> None:
    """start() outside 0 < f <= 1 raises ValueError and sends nothing."""
    with pytest.raises(ValueError):
        client.start(fraction)
    assert fake_api.calls == []


def test_paths_are_configurable() -> None:
    """Custom TradingPaths send requests to the configured paths."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={"trading": False, "active_bots": 0, "total_bots": 3,
                                         "maintenance": True})

    paths = TradingPaths(stop="/v2/stop", start="/v2/start", status="/v2/state", maintenance="/v2/maint")
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        api = TradingApiClient("http://swarm.invalid/", "k", paths=paths, client=http)
        api.stop("r")
        api.start(1)
        api.maintenance(False)
        assert api.status().total_bots == 3
    assert seen == ["POST /v2/stop", "POST /v2/start", "POST /v2/maint", "GET /v2/state"]


def test_repr_hides_the_key(client: TradingApiClient) -> None:
    """repr() of the client shows *** instead of the key."""
    assert DEFAULT_API_KEY not in repr(client) and "***" in repr(client)

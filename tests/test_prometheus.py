"""PrometheusMetrics and canary analysis against a real Prometheus scraping a live exporter.

One Prometheus (scrape every 1 s) and one exporter serve the module; each test works in its own
namespace so knob changes do not leak between tests. Checks use 5 s rate windows
(`default_checks("5s")`) so a change shows within a few scrapes; production uses 1m.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest

from bot.core.analysis import AnalysisResult, analyse, default_checks
from bot.errors import BackendUnavailable, IntegrationError
from integrations.prometheus import PrometheusMetrics
from tests.harness.exporter import MetricsExporter
from tests.harness.prometheus import PrometheusServer, free_port, require_prometheus

T = TypeVar("T")
WINDOW = "5s"
CHECKS = default_checks(WINDOW)
DEADLINE = 20.0  # seconds; a 5 s window plus a few 1 s scrapes needs well under this


def error_rate_query(namespace: str) -> str:
    sel = f'namespace="{namespace}",version="canary"'
    return (f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[{WINDOW}])) / '
            f"sum(rate(http_requests_total{{{sel}}}[{WINDOW}]))")


def poll(produce: Callable[[], T], done: Callable[[T], bool], timeout: float = DEADLINE) -> T:
    """Call `produce` every 0.2 s until `done(value)`; the last value is returned either way."""
    deadline = time.monotonic() + timeout
    value = produce()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = produce()
    return value


@pytest.fixture(scope="module")
def exporter() -> Iterator[MetricsExporter]:
    """A live metrics exporter on 127.0.0.1."""
    with MetricsExporter(namespace="trading") as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(exporter: MetricsExporter) -> Iterator[PrometheusServer]:
    """A real Prometheus that has scraped the exporter once (skips without one; fails under CI)."""
    binary = require_prometheus()
    with PrometheusServer([exporter.target], binary=binary) as server:
        yield server


@pytest.fixture
def metrics(prometheus: PrometheusServer) -> Iterator[PrometheusMetrics]:
    """PrometheusMetrics pointed at the test server."""
    with PrometheusMetrics(prometheus.url, timeout=5.0) as source:
        yield source


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def test_ready_is_true_for_a_running_server(metrics: PrometheusMetrics) -> None:
    """ready() reports a started Prometheus as ready."""
    assert metrics.ready() is True


def test_ready_is_false_when_unreachable(dead_url: str) -> None:
    """ready() answers False, without raising, when nothing listens."""
    with PrometheusMetrics(dead_url, timeout=1.0) as source:
        assert source.ready() is False


def test_query_follows_a_live_error_rate_change(exporter: MetricsExporter,
        metrics: PrometheusMetrics) -> None:
    """After exporter.set(error_rate=0.2) the query returns 0.2 within a few scrapes."""
    exporter.set(namespace="live", error_rate=0.002)
    query = error_rate_query("live")
    healthy = poll(lambda: metrics.query(query), lambda v: v is not None and abs(v - 0.002) < 1e-6)
    assert healthy == pytest.approx(0.002)
    change = exporter.set(namespace="live", error_rate=0.2)
    value = poll(lambda: metrics.query(query), lambda v: v is not None and abs(v - 0.2) < 1e-6)
    assert value == pytest.approx(0.2)
    assert time.monotonic() - change.monotonic < DEADLINE


def test_query_returns_the_exporters_p95_latency(exporter: MetricsExporter,
        metrics: PrometheusMetrics) -> None:
    """histogram_quantile over the exporter's histogram yields the p95 knob."""
    exporter.set(namespace="latency", p95_latency_s=0.35)
    query = (f'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket'
             f'{{namespace="latency",version="canary"}}[{WINDOW}])))')
    value = poll(lambda: metrics.query(query), lambda v: v is not None and abs(v - 0.35) < 1e-6)
    assert value == pytest.approx(0.35)


def test_no_data_is_none(metrics: PrometheusMetrics) -> None:
    """A query matching no series answers None."""
    assert metrics.query('sum(rate(http_requests_total{namespace="nowhere"}[5s]))') is None


def test_nan_from_a_canary_without_traffic_is_none(exporter: MetricsExporter,
        metrics: PrometheusMetrics) -> None:
    """0/0 (the canary serves no requests) answers None, not NaN."""
    exporter.set(namespace="idle", request_rate=0)
    total = f'sum(rate(http_requests_total{{namespace="idle",version="canary"}}[{WINDOW}]))'
    assert poll(lambda: metrics.query(total), lambda v: v is not None) == 0.0  # the series exists
    assert metrics.query(error_rate_query("idle")) is None


def test_scalar_result_is_its_value(metrics: PrometheusMetrics) -> None:
    """A scalar expression answers its number."""
    assert metrics.query("2 * 21") == 42.0


def test_scalar_nan_is_none(metrics: PrometheusMetrics) -> None:
    """A scalar NaN answers None."""
    assert metrics.query("0 / 0") is None


def test_infinity_is_a_float(metrics: PrometheusMetrics) -> None:
    """+Inf and -Inf come back as float infinities."""
    assert metrics.query("1 / 0") == math.inf
    assert metrics.query("-1 / 0") == -math.inf


def test_bad_promql_is_an_integration_error(metrics: PrometheusMetrics) -> None:
    """Unparseable PromQL raises IntegrationError "<errorType>: <error>", not BackendUnavailable."""
    with pytest.raises(IntegrationError) as caught:
        metrics.query("sum(rate(http_requests_total[1m])")
    assert not isinstance(caught.value, BackendUnavailable)
    assert caught.value.message.startswith("prometheus: bad_data: ")


def test_several_series_must_be_aggregated(metrics: PrometheusMetrics) -> None:
    """A vector of several series raises IntegrationError asking for aggregation."""
    with pytest.raises(IntegrationError, match="must aggregate to one series"):
        metrics.query('http_requests_total{namespace="trading"}')


def test_range_vector_is_refused(metrics: PrometheusMetrics) -> None:
    """A range-vector result raises IntegrationError."""
    with pytest.raises(IntegrationError, match="range vector"):
        metrics.query('up{job="exporter"}[5s]')


def test_connection_refused_is_backend_unavailable(dead_url: str) -> None:
    """Nothing listening raises BackendUnavailable."""
    with PrometheusMetrics(dead_url, timeout=1.0) as source:
        with pytest.raises(BackendUnavailable, match="prometheus"):
            source.query("up")


def test_timeout_is_backend_unavailable() -> None:
    """A server that accepts but never answers raises BackendUnavailable after the timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with PrometheusMetrics(url, timeout=0.3) as source:
            with pytest.raises(BackendUnavailable, match="timed out"):
                source.query("up")


def test_server_error_is_backend_unavailable() -> None:
    """An HTTP 503 (Prometheus overloaded or starting) raises BackendUnavailable."""
    transport = httpx.MockTransport(lambda request: httpx.Response(
        503, json={"status": "error", "errorType": "unavailable", "error": "overloaded"}))
    with httpx.Client(transport=transport) as client, pytest.raises(BackendUnavailable, match="503"):
        PrometheusMetrics("http://prometheus.invalid", client=client).query("up")


def settled(metrics: PrometheusMetrics, namespace: str, verdict: str) -> AnalysisResult:
    """Analyse until Prometheus has enough samples for `verdict` (or the deadline passes)."""
    return poll(lambda: analyse(metrics, CHECKS, {"namespace": namespace}), lambda r: r.verdict == verdict)


def test_default_checks_pass_on_healthy_numbers(exporter: MetricsExporter,
        metrics: PrometheusMetrics) -> None:
    """Healthy canary numbers pass every default check."""
    exporter.set(namespace="healthy", error_rate=0.002, p95_latency_s=0.12, order_success=0.998)
    result = settled(metrics, "healthy", "pass")
    assert result.verdict == "pass", result.summary()
    assert [c.verdict for c in result.checks] == ["pass", "pass", "pass"]


def test_default_checks_fail_at_twenty_percent_errors(exporter: MetricsExporter,
        metrics: PrometheusMetrics) -> None:
    """A 20 % canary error rate fails the error_rate check (and only it)."""
    exporter.set(namespace="broken", error_rate=0.2)
    result = settled(metrics, "broken", "fail")
    assert result.verdict == "fail", result.summary()
    assert {c.name: c.verdict for c in result.checks} == {"error_rate": "fail", "p95_latency_ms": "pass",
                                                         "order_success": "pass"}
    assert result.checks[0].value == pytest.approx(0.2)


def test_analysis_fails_safe_when_prometheus_is_unreachable(dead_url: str) -> None:
    """An unreachable Prometheus makes the analysis fail, each check naming the cause."""
    with PrometheusMetrics(dead_url, timeout=1.0) as source:
        result = analyse(source, CHECKS, {"namespace": "trading"})
    assert result.verdict == "fail"
    assert all(c.verdict == "error" for c in result.checks)
    assert all(c.detail.startswith("prometheus unreachable: ") for c in result.checks)

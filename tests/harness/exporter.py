"""A small Trading Bot Swarm metrics exporter over real HTTP, for Prometheus to scrape in tests.

`/metrics` on 127.0.0.1:<free port> serves Prometheus text format (0.0.4) with, per (namespace, version):

    http_requests_total{namespace,version,status}            counter, status "200" or "500"
    http_request_duration_seconds_bucket/_sum/_count{namespace,version}   histogram
    orders_total{namespace,version}, orders_successful_total{namespace,version}   counters

A background thread advances every counter every `tick` seconds (default 0.1 s) by elapsed time x rate,
as exact fractions (counter values are floats), so ratios of rates equal the knobs exactly once a rate
window has only post-change samples in it. Knobs, settable at any time with `set()`:

    error_rate      fraction of requests answered 500                     (default 0.002)
    p95_latency_s   the p95 that histogram_quantile(0.95, ...) will yield (default 0.12; exact for
                    5 ms .. 10 s, the finite bucket range)
    order_success   orders_successful / orders                            (default 0.998)
    request_rate    requests per second                                   (default 100)
    order_rate      orders per second                                     (default 20)

Every `set()` is recorded in `changes` with its wall time and monotonic time (benchmarks measure the
delay to Prometheus from it). Usage::

    with MetricsExporter(namespace="trading") as exporter:
        exporter.target            # "127.0.0.1:<port>" for a scrape config
        exporter.set(error_rate=0.2, version="canary")
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DEFAULT_KNOBS: dict[str, float] = {"error_rate": 0.002, "p95_latency_s": 0.12, "order_success": 0.998,
                                   "request_rate": 100.0, "order_rate": 20.0}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class KnobChange:
    """One `set()`: when it happened and what it set."""

    wall_time: float  # time.time()
    monotonic: float  # time.monotonic()
    namespace: str
    version: str
    knobs: dict[str, float]


@dataclass
class _Series:
    knobs: dict[str, float]
    ok: float = 0.0
    errors: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS) + 1))  # last: +Inf
    duration_sum: float = 0.0
    orders: float = 0.0
    orders_ok: float = 0.0

    def advance(self, seconds: float) -> None:
        k = self.knobs
        requests = k["request_rate"] * seconds
        self.errors += requests * k["error_rate"]
        self.ok += requests * (1.0 - k["error_rate"])
        for value, share in _latency_mix(k["p95_latency_s"]):
            n = requests * share
            index = bisect.bisect_left(BUCKETS, value)  # first bucket with le >= value
            for i in range(index, len(self.buckets)):
                self.buckets[i] += n
            self.duration_sum += n * value
        orders = k["order_rate"] * seconds
        self.orders += orders
        self.orders_ok += orders * k["order_success"]


def _latency_mix(p95: float) -> list[tuple[float, float]]:
    """Observations (value, share) whose histogram makes histogram_quantile(0.95) interpolate to `p95`.

    With p95 in bucket (lo, hi] and f = (p95 - lo) / (hi - lo), Prometheus returns
    lo + (hi - lo) * (0.95 - below) / inside; the shares are chosen so that ratio is f.
    """
    index = bisect.bisect_left(BUCKETS, p95)
    if index >= len(BUCKETS):  # beyond the last finite bucket: Prometheus answers that bucket's bound
        return [(p95, 1.0)]
    hi = BUCKETS[index]
    lo = BUCKETS[index - 1] if index else 0.0
    f = (p95 - lo) / (hi - lo)
    above = BUCKETS[index + 1] if index + 1 < len(BUCKETS) else hi * 2
    if index == 0 and f < 0.95:  # nothing can sit below the first bucket: best effort
        return [(p95, 1.0)]
    if f <= 0.95:
        below = (0.95 - f) / (1.0 - f)
        return [(lo, below), (p95, 1.0 - below)]
    inside = 0.95 / f
    return [(p95, inside), (above, 1.0 - inside)]


class MetricsExporter:
    """The exporter: a stdlib HTTP server plus a ticking thread. Start with `start()` or `with`."""

    def __init__(self, *, namespace: str = "trading", versions: tuple[str, ...] = ("stable", "canary"),
                 tick: float = 0.1) -> None:
        self.namespace = namespace
        self.tick = tick
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {
            (namespace, v): _Series(dict(DEFAULT_KNOBS)) for v in versions}
        self._last = time.monotonic()
        self.changes: list[KnobChange] = []
        self.scrapes = 0
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- control ----------------------------------------------------------------------------------

    def set(self, *, version: str = "canary", namespace: str | None = None, **knobs: float) -> KnobChange:
        """Change knobs of one (namespace, version) series, creating it if new; returns the record."""
        unknown = set(knobs) - set(DEFAULT_KNOBS)
        if unknown:
            raise ValueError(f"unknown knob(s) {sorted(unknown)}; known: {sorted(DEFAULT_KNOBS)}")
        for name, value in knobs.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
            if name in ("error_rate", "order_success") and value > 1:
                raise ValueError(f"{name} is a fraction between 0 and 1, not {value!r}")
            if name == "p95_latency_s" and value <= 0:
                raise ValueError("p95_latency_s must be > 0")
        key = (namespace or self.namespace, version)
        with self._lock:
            self._advance_locked()  # time so far is credited to the old knobs
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(dict(DEFAULT_KNOBS))
            series.knobs.update({k: float(v) for k, v in knobs.items()})
            change = KnobChange(time.time(), time.monotonic(), key[0], key[1], dict(series.knobs))
            self.changes.append(change)
        return change

    def knobs(self, version: str = "canary", namespace: str | None = None) -> dict[str, float]:
        with self._lock:
            return dict(self._series[(namespace or self.namespace, version)].knobs)

    @property
    def last_change(self) -> KnobChange | None:
        with self._lock:
            return self.changes[-1] if self.changes else None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("exporter not started")
        return int(self._server.server_address[1])

    @property
    def target(self) -> str:
        """`host:port` for a Prometheus static_configs target."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def start(self) -> MetricsExporter:
        if self._server is not None:
            return self
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._stop.clear()
        self._last = time.monotonic()
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                          name="exporter-http", daemon=True),
                         threading.Thread(target=self._run, name="exporter-tick", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._server = None
        self._threads = []

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                self._advance_locked()

    def _advance_locked(self) -> None:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        for series in self._series.values():
            series.advance(elapsed)

    def render(self) -> str:
        """The exposition text for the current counters."""
        with self._lock:
            self.scrapes += 1
            items = sorted(self._series.items())
            lines = ["# HELP http_requests_total HTTP requests handled.",
                     "# TYPE http_requests_total counter"]
            for (ns, ver), s in items:
                for status, count in (("200", s.ok), ("500", s.errors)):
                    lines.append(f'http_requests_total{{namespace="{ns}",version="{ver}",status="{status}"}} '
                                 f"{count!r}")
            lines += ["# HELP http_request_duration_seconds HTTP request latency.",
                      "# TYPE http_request_duration_seconds histogram"]
            for (ns, ver), s in items:
                labels = f'namespace="{ns}",version="{ver}"'
                for le, count in zip((*(repr(b) for b in BUCKETS), "+Inf"), s.buckets, strict=True):
                    lines.append(f'http_request_duration_seconds_bucket{{{labels},le="{le}"}} {count!r}')
                lines.append(f"http_request_duration_seconds_sum{{{labels}}} {s.duration_sum!r}")
                lines.append(f"http_request_duration_seconds_count{{{labels}}} {s.buckets[-1]!r}")
            lines += ["# HELP orders_total Orders placed.", "# TYPE orders_total counter"]
            lines += [f'orders_total{{namespace="{ns}",version="{ver}"}} {s.orders!r}'
                      for (ns, ver), s in items]
            lines += ["# HELP orders_successful_total Orders executed successfully.",
                      "# TYPE orders_successful_total counter"]
            lines += [f'orders_successful_total{{namespace="{ns}",version="{ver}"}} {s.orders_ok!r}'
                      for (ns, ver), s in items]
        return "\n".join(lines) + "\n"

"""A throwaway, real Prometheus server for integration tests.

:class:`PrometheusServer` writes a config (scrape_interval 1s, evaluation_interval 1s, one job
`exporter` scraping the given 127.0.0.1 targets), keeps its TSDB in a fresh temp dir and listens only on
``127.0.0.1:<free port>``. ``start()`` waits, bounded and without blind sleeps, for ``/-/ready`` and then
for the first successful scrape (``up{job="exporter"} == 1`` for every target); ``stop()`` sends SIGTERM,
waits, and deletes the temp dir.

The binary: ``$CHATOPS_TEST_PROMETHEUS`` (a path), else ``/usr/bin/prometheus`` (Debian package
``prometheus``), else ``prometheus`` on ``PATH``. Install on Debian/Ubuntu with::

    apt-get update && apt-get install -y --no-install-recommends prometheus

Policy, :func:`prometheus_or_skip_reason` -> ``(binary, None)`` or ``(None, reason)``; callers skip on the
reason, except under CI (``$CI`` set) where :func:`require_prometheus` fails instead. Usage::

    with MetricsExporter() as exporter, PrometheusServer([exporter.target]) as prom:
        PrometheusMetrics(prom.url).query("up")
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

ENV_BINARY = "CHATOPS_TEST_PROMETHEUS"
DEBIAN_BINARY = "/usr/bin/prometheus"
INSTALL_HINT = "apt-get update && apt-get install -y --no-install-recommends prometheus"
_PORT_IN_USE = "address already in use"


class PrometheusUnavailable(RuntimeError):
    """The Prometheus binary is missing, or the server did not start / scrape in time."""


def find_prometheus() -> str | None:
    """Path of a Prometheus binary, or None."""
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    return shutil.which("prometheus")


def prometheus_or_skip_reason() -> tuple[str | None, str | None]:
    """(binary, None) when a real Prometheus can be started, else (None, why not)."""
    binary = find_prometheus()
    if binary is not None:
        return binary, None
    if os.environ.get(ENV_BINARY):
        return None, f"${ENV_BINARY}={os.environ[ENV_BINARY]} is not an executable file"
    return None, f"no prometheus binary ({DEBIAN_BINARY} or on PATH); install it with: {INSTALL_HINT}"


def require_prometheus() -> str:
    """The binary path; otherwise pytest.skip, or pytest.fail under CI (a missing server must not pass)."""
    import pytest

    binary, reason = prometheus_or_skip_reason()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"Prometheus is required in CI: {reason}")
        print(f"\nskipping Prometheus tests: {reason}")
        pytest.skip(reason or "Prometheus unavailable")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(targets: list[str], scrape_interval: str, *, rules: bool = False,
            alertmanagers: list[str] | None = None) -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    text = (
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  scrape_timeout: {scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n"
        "scrape_configs:\n"
        "  - job_name: exporter\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: [{listed}]\n"
    )
    if rules:
        text += "rule_files: [rules.yml]\n"
    if alertmanagers:
        text += ("alerting:\n  alertmanagers:\n    - static_configs:\n"
                 f"        - targets: [{', '.join(repr(a) for a in alertmanagers)}]\n")
    return text


class PrometheusServer:
    """A real Prometheus on 127.0.0.1 scraping `targets` ("host:port") every `scrape_interval`."""

    def __init__(self, targets: list[str], *, scrape_interval: str = "1s", binary: str | None = None,
                 startup_timeout: float = 30.0, scrape_timeout: float = 15.0, rules: str | None = None,
                 alertmanagers: list[str] | None = None) -> None:
        """`rules`: the text of an alerting rule file it evaluates; `alertmanagers`: "host:port" of the
        Alertmanagers its firing alerts go to (loopback only, like the targets)."""
        for target in [*targets, *(alertmanagers or [])]:
            if not target.startswith(("127.0.0.1:", "localhost:", "[::1]:")):
                raise ValueError(f"test Prometheus may only talk to loopback, not {target!r}")
        self.rules = rules
        self.alertmanagers = list(alertmanagers or [])
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.binary = binary or find_prometheus()
        self.startup_timeout = startup_timeout
        self.scrape_timeout = scrape_timeout
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after: float | None = None  # seconds from spawn to /-/ready
        self.scraped_after: float | None = None  # seconds from spawn to the first successful scrape
        self._started = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "prometheus.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def start(self) -> PrometheusServer:
        if self.binary is None:
            raise PrometheusUnavailable(prometheus_or_skip_reason()[1])
        self.dir = Path(tempfile.mkdtemp(prefix="chatops-prom-"))
        (self.dir / "prometheus.yml").write_text(_config(self.targets, self.scrape_interval, rules=bool(self.rules),
                                                         alertmanagers=self.alertmanagers))
        if self.rules:
            (self.dir / "rules.yml").write_text(self.rules)
        try:
            for attempt in range(3):  # the free port can be taken between probe and bind
                try:
                    self._spawn()
                    break
                except PrometheusUnavailable as exc:
                    if _PORT_IN_USE not in str(exc) or attempt == 2:
                        raise
            self._wait_for_scrape()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        assert self.dir is not None and self.binary is not None
        self.port = free_port()
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it; closed below)
        started = self._started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", "--storage.tsdb.retention.time=1h",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        finally:
            log.close()
        deadline = started + self.startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    tail = self.log_tail()
                    self.process = None
                    raise PrometheusUnavailable(f"prometheus exited at startup:\n{tail}")
                try:
                    if client.get(self.url + "/-/ready").status_code == 200:
                        self.ready_after = time.monotonic() - started
                        return
                except httpx.HTTPError:
                    pass
                try:  # poll interval that also returns at once if the process dies
                    self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        raise PrometheusUnavailable(f"prometheus not ready within {self.startup_timeout:g}s:\n"
                                    f"{self.log_tail()}")

    def _wait_for_scrape(self) -> None:
        """Until every target has been scraped successfully once (`up == 1`)."""
        deadline = time.monotonic() + self.scrape_timeout
        last = ""
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                response = client.get(self.url + "/api/v1/query", params={"query": 'up{job="exporter"} == 1'})
                result = response.json().get("data", {}).get("result", [])
                if len(result) == len(self.targets):
                    self.scraped_after = time.monotonic() - self._started
                    return
                last = f"{len(result)}/{len(self.targets)} targets up"
                time.sleep(0.1)  # poll interval, not a wait for a guess
        raise PrometheusUnavailable(f"no successful scrape within {self.scrape_timeout:g}s ({last}):\n"
                                    f"{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

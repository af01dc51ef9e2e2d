"""A throwaway, real Alertmanager for integration tests (Debian package `prometheus-alertmanager`).

:class:`AlertmanagerServer` writes a config with one receiver — posting to `webhook_url` with a
bearer token (low `group_wait` / `group_interval`, `send_resolved`), or, with no `webhook_url`,
delivering nowhere (for tests of its API alone) — keeps its storage in a fresh temp dir, listens only
on ``127.0.0.1:<free port>`` with clustering off (``--cluster.listen-address=``), and `start()` waits
for ``/-/ready`` without blind sleeps. `fire()` / `resolve()` post alerts to its API v2
(``POST /api/v2/alerts``), as Prometheus would; `silences()` reads ``GET /api/v2/silences``.

The binary: ``$CHATOPS_TEST_ALERTMANAGER`` (a path), else ``/usr/bin/prometheus-alertmanager``, else
``alertmanager`` or ``prometheus-alertmanager`` on ``PATH``. Install with
``apt-get install -y prometheus-alertmanager``. Without it tests skip, except under CI (``$CI``) where
:func:`require_alertmanager` fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ENV_BINARY = "CHATOPS_TEST_ALERTMANAGER"
DEBIAN_BINARY = "/usr/bin/prometheus-alertmanager"
INSTALL_HINT = "apt-get update && apt-get install -y --no-install-recommends prometheus-alertmanager"


class AlertmanagerUnavailable(RuntimeError):
    """The binary is missing, or the server did not become ready in time."""


def find_alertmanager() -> str | None:
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def require_alertmanager() -> str:
    import pytest

    binary = find_alertmanager()
    if binary is None:
        reason = f"no Alertmanager binary ({DEBIAN_BINARY} or on PATH); install it with: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"Alertmanager is required in CI: {reason}")
        pytest.skip(reason)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(webhook_url: str | None, token: str | None, *, group_wait: str, group_interval: str,
                repeat_interval: str, group_by: list[str]) -> str:
    listed = ", ".join(group_by)
    head = (
        "route:\n"
        "  receiver: chatops\n"
        f"  group_by: [{listed}]\n"
        f"  group_wait: {group_wait}\n"
        f"  group_interval: {group_interval}\n"
        f"  repeat_interval: {repeat_interval}\n"
        "receivers:\n"
        "  - name: chatops\n"
    )
    if webhook_url is None:
        return head
    return head + (
        "    webhook_configs:\n"
        f"      - url: {webhook_url}\n"
        "        send_resolved: true\n"
        "        http_config:\n"
        "          authorization:\n"
        "            type: Bearer\n"
        f"            credentials: {token}\n"
    )


class AlertmanagerServer:
    """A real Alertmanager on 127.0.0.1 whose only receiver is the bot's webhook (or nothing)."""

    def __init__(self, webhook_url: str | None = None, *, token: str | None = None, binary: str | None = None,
                 group_wait: str = "1s", group_interval: str = "1s", repeat_interval: str = "1h",
                 group_by: list[str] | None = None, startup_timeout: float = 30.0) -> None:
        if webhook_url is not None and not webhook_url.startswith(("http://127.0.0.1:", "http://localhost:")):
            raise ValueError(f"the test Alertmanager may only post to loopback, not {webhook_url!r}")
        if webhook_url is not None and not token:
            raise ValueError("a webhook receiver needs the bot's token")
        self.webhook_url = webhook_url
        self.token = token
        self.binary = binary or find_alertmanager()
        self.options = {"group_wait": group_wait, "group_interval": group_interval,
                        "repeat_interval": repeat_interval, "group_by": group_by or ["alertname", "env"]}
        self.startup_timeout = startup_timeout
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            assert self.dir is not None
            return "\n".join((self.dir / "alertmanager.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def start(self) -> AlertmanagerServer:
        if self.binary is None:
            raise AlertmanagerUnavailable(f"no Alertmanager binary; {INSTALL_HINT}")
        self.dir = Path(tempfile.mkdtemp(prefix="chatops-am-"))
        (self.dir / "alertmanager.yml").write_text(config_text(self.webhook_url, self.token, **self.options))  # type: ignore[arg-type]
        try:
            for attempt in range(3):  # the free port can be taken between probe and bind
                try:
                    self._spawn()
                    return self
                except AlertmanagerUnavailable as exc:
                    if "address already in use" not in str(exc) or attempt == 2:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        assert self.dir is not None and self.binary is not None
        self.port = free_port()
        log = open(self.dir / "alertmanager.log", "ab")  # noqa: SIM115 (the child owns it; closed below)
        started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'alertmanager.yml'}",
                 f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--cluster.listen-address=", f"--web.external-url={self.url}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        finally:
            log.close()
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < started + self.startup_timeout:
                if self.process.poll() is not None:
                    self.process = None
                    raise AlertmanagerUnavailable(f"alertmanager exited at startup:\n{self.log_tail()}")
                try:
                    if client.get(self.url + "/-/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                try:  # a poll interval that returns at once if the process dies
                    self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        raise AlertmanagerUnavailable(f"alertmanager not ready within {self.startup_timeout:g}s:\n{self.log_tail()}")

    # --- its API ----------------------------------------------------------------------------------
    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        response = httpx.post(self.url + "/api/v2/alerts", json=alerts, timeout=5)
        response.raise_for_status()

    def fire(self, labels: dict[str, str], annotations: dict[str, str] | None = None,
             generator_url: str = "http://127.0.0.1:9090/graph") -> None:
        self.post_alerts([{"labels": labels, "annotations": annotations or {}, "generatorURL": generator_url,
                           "startsAt": datetime.now(UTC).isoformat()}])

    def resolve(self, labels: dict[str, str], annotations: dict[str, str] | None = None) -> None:
        """Prometheus resolves an alert by sending it again with `endsAt` in the past."""
        now = datetime.now(UTC).isoformat()
        self.post_alerts([{"labels": labels, "annotations": annotations or {}, "endsAt": now}])

    def silences(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v2/silences", timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

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

    def __enter__(self) -> AlertmanagerServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

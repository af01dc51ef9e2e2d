"""`integrations.alertmanager.AlertmanagerClient` against a real Alertmanager (Debian package
`prometheus-alertmanager`) on 127.0.0.1, and its error mapping against a dead port and a 5xx server."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bot.errors import BackendUnavailable, IntegrationError, NotFound
from integrations.alertmanager import AlertmanagerClient, Matcher, matchers_from_labels

DEBIAN_BINARY = "/usr/bin/prometheus-alertmanager"
CONFIG = """\
route:
  receiver: bot
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: bot
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalAlertmanager:
    """A real Alertmanager on 127.0.0.1: generated config, temp storage, no clustering, `/-/ready` awaited.
    (A stand-in for the intake branch's `tests/harness/alertmanager.py` until it is merged.)"""

    def __init__(self, binary: str, config: str = CONFIG) -> None:
        self.binary = binary
        self.config = config
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalAlertmanager:
        self.dir = Path(tempfile.mkdtemp(prefix="chatops-am-"))
        (self.dir / "alertmanager.yml").write_text(self.config)
        self.port = _free_port()
        log = open(self.dir / "alertmanager.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'alertmanager.yml'}", f"--storage.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"alertmanager exited: {self.log_tail()}")
                try:
                    if client.get(self.url + "/-/ready").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                threading.Event().wait(0.05)  # bounded poll of a readiness condition, not a blind sleep
        self.stop()
        raise RuntimeError(f"alertmanager not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return (self.dir / "alertmanager.log").read_text(errors="replace")[-2000:] if self.dir else ""
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def alertmanager_binary() -> str:
    binary = os.environ.get("CHATOPS_TEST_ALERTMANAGER") or (
        DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else shutil.which("alertmanager"))
    if not binary:
        reason = "no alertmanager binary; apt-get install -y prometheus-alertmanager"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[LocalAlertmanager]:
    """A real Alertmanager for this module."""
    server = LocalAlertmanager(alertmanager_binary()).start()
    yield server
    server.stop()


@pytest.fixture
def client(alertmanager: LocalAlertmanager) -> Iterator[AlertmanagerClient]:
    with AlertmanagerClient(alertmanager.url) as am:
        yield am


def test_create_silence_is_reported_by_alertmanager(client: AlertmanagerClient) -> None:
    """A silence created from a group's labels comes back from the API with its matchers, author and comment."""
    labels = {"alertname": "HighErrorRate", "env": "production", "instance": "10.0.0.1:9100"}
    silence_id = client.silence_for(timedelta(hours=1), labels, created_by="alice (U0ALICE)",
                                    comment="silenced from Slack")
    got = client.get_silence(silence_id)
    assert got.active
    assert set(got.matchers) == {Matcher("alertname", "HighErrorRate"), Matcher("env", "production")}
    assert got.created_by == "alice (U0ALICE)" and got.comment == "silenced from Slack"
    assert timedelta(minutes=59) < got.ends_at - datetime.now(UTC) <= timedelta(hours=1)
    assert silence_id in {s.id for s in client.list_silences(matchers=[Matcher("env", "production")])}


def test_delete_silence_expires_it(client: AlertmanagerClient) -> None:
    """Deleting a silence expires it in Alertmanager; deleting it again is harmless."""
    silence_id = client.silence_for(timedelta(hours=4), {"alertname": "DiskFull"}, created_by="bob",
                                    comment="maintenance")
    client.delete_silence(silence_id)
    assert client.get_silence(silence_id).state == "expired"
    client.delete_silence(silence_id)


def test_unknown_silence_is_not_found(client: AlertmanagerClient) -> None:
    """An id Alertmanager does not know is NotFound, not a crash; a non-id never reaches the URL."""
    with pytest.raises(NotFound):
        client.get_silence("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFound):
        client.delete_silence("../../-/reload")


def test_refused_silence_is_a_clear_integration_error(client: AlertmanagerClient) -> None:
    """Alertmanager's 400 (an invalid regex matcher) becomes an IntegrationError carrying its message."""
    with pytest.raises(IntegrationError) as caught:
        client.create_silence([Matcher("alertname", "(", regex=True)], created_by="carol", comment="x",
                              ends_at=datetime.now(UTC) + timedelta(hours=1))
    assert not isinstance(caught.value, BackendUnavailable)
    assert "400" in caught.value.message


def test_labels_without_matchable_values_are_refused() -> None:
    """A group whose labels are all per-instance cannot be silenced (it would silence everything)."""
    with pytest.raises(ValueError, match="at least one matcher"):
        matchers_from_labels({"instance": "a", "pod": "b"})


def test_unreachable_alertmanager_is_backend_unavailable() -> None:
    """Connection refused is BackendUnavailable naming the URL."""
    url = f"http://127.0.0.1:{_free_port()}"
    with AlertmanagerClient(url, timeout=1.0) as am, pytest.raises(BackendUnavailable) as caught:
        am.list_silences()
    assert url in caught.value.message


class _Failing(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/slow"):
            threading.Event().wait(2.0)
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"secret-token overloaded")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_5xx_is_backend_unavailable_and_the_token_is_scrubbed(failing_server: str) -> None:
    """A 503 is BackendUnavailable; the configured token never appears in the error."""
    with AlertmanagerClient(failing_server, token="secret-token") as am, pytest.raises(BackendUnavailable) as caught:
        am.list_silences()
    assert "503" in caught.value.message and "secret-token" not in caught.value.message
    assert "secret-token" not in repr(am)


def test_timeout_is_backend_unavailable(failing_server: str) -> None:
    """A server slower than the timeout is BackendUnavailable ("timed out")."""
    with AlertmanagerClient(failing_server + "/slow", timeout=0.3) as am, \
            pytest.raises(BackendUnavailable, match="timed out"):
        am.list_silences()

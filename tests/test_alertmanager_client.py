"""`integrations.alertmanager.AlertmanagerClient` against a real Alertmanager (Debian package
`prometheus-alertmanager`) on 127.0.0.1, and its error mapping against a dead port and a 5xx server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.errors import BackendUnavailable, IntegrationError, NotFound
from integrations.alertmanager import AlertmanagerClient, Matcher, matchers_from_labels
from tests.alerting import alertmanager_api
from tests.harness.alertmanager import AlertmanagerServer, free_port

__all__ = ["alertmanager_api"]


@pytest.fixture
def client(alertmanager_api: AlertmanagerServer) -> Iterator[AlertmanagerClient]:
    with AlertmanagerClient(alertmanager_api.url) as am:
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
    url = f"http://127.0.0.1:{free_port()}"
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

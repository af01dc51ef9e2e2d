"""HTTP health probes (runbook 6.1): `/health` -> {"status": "healthy"}, `/health/detailed` components.

Implements `bot.core.ports.HealthProbe`. A failing health check is data, not an exception: every
outcome (mismatch, non-JSON, non-2xx, timeout, connection refused) is a `ProbeResult` whose detail
says what was wrong, e.g. `status: expected 'healthy', got 'degraded'` or `components.cache: missing`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bot.core.ports import ProbeResult

#: longest value or body quoted in a detail
MAX_QUOTE = 80


class HttpHealthProbe:
    """`HealthProbe` over httpx: GET, then 2xx + JSON object + every expected key/value present."""

    label = "http"

    def __init__(self, *, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._client = client if client is not None else httpx.Client(timeout=timeout, follow_redirects=False)
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpHealthProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, url: str, expect: dict[str, Any]) -> ProbeResult:
        started = time.monotonic()
        try:
            response = self._client.get(url, headers={"Accept": "application/json"}, timeout=self.timeout)
        except httpx.TimeoutException:
            return ProbeResult(False, f"GET {url} timed out after {self.timeout:g} s")
        except httpx.TransportError as exc:
            return ProbeResult(False, f"GET {url} failed: cannot connect ({type(exc).__name__}: {exc})")
        elapsed_ms = (time.monotonic() - started) * 1000
        status = response.status_code
        try:
            body: Any = response.json()
            is_json = True
        except ValueError:
            body, is_json = None, False
        if not 200 <= status < 300:
            detail = f"GET {url} answered HTTP {status}"
            if is_json and isinstance(body, dict) and expect:
                problems = mismatches(expect, body) or ["body matches, but the status is an error"]
                detail += ": " + "; ".join(problems)
            elif response.text.strip():
                detail += f": {_quote_text(response.text)}"
            return ProbeResult(False, detail)
        if not is_json:
            kind = response.headers.get("content-type", "no content type")
            return ProbeResult(False, f"GET {url} answered HTTP {status} but not JSON ({kind}): "
                                      f"{_quote_text(response.text)}")
        problems = mismatches(expect, body)
        if problems:
            return ProbeResult(False, "; ".join(problems))
        checked = count_expected(expect)
        return ProbeResult(True, f"HTTP {status} in {elapsed_ms:.0f} ms; {checked} expected "
                                 f"value{'s' if checked != 1 else ''} present")


def mismatches(expect: dict[str, Any], actual: Any, prefix: str = "") -> list[str]:
    """Every way `actual` fails to contain `expect` (nested dicts recursively), as `path: problem` lines."""
    if not isinstance(actual, dict):
        where = prefix.rstrip(".") or "body"
        return [f"{where}: expected a JSON object, got {_quote(actual)}"]
    problems: list[str] = []
    for key, wanted in expect.items():
        path = f"{prefix}{key}"
        if key not in actual:
            problems.append(f"{path}: missing")
        elif isinstance(wanted, dict):
            problems.extend(mismatches(wanted, actual[key], path + "."))
        elif not _equal(wanted, actual[key]):
            problems.append(f"{path}: expected {_quote(wanted)}, got {_quote(actual[key])}")
    return problems


def count_expected(expect: dict[str, Any]) -> int:
    return sum(count_expected(v) if isinstance(v, dict) else 1 for v in expect.values())


def _equal(wanted: Any, got: Any) -> bool:
    # JSON true is not 1: keep booleans apart from numbers
    if isinstance(wanted, bool) or isinstance(got, bool):
        return isinstance(wanted, bool) and isinstance(got, bool) and wanted is got
    return bool(wanted == got)


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 1] + "…"


def _quote_text(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= MAX_QUOTE else flat[: MAX_QUOTE - 1] + "…")

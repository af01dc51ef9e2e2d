"""Prometheus over its HTTP API (httpx): the `MetricsSource` port for canary analysis.

Only instant queries (`/api/v1/query`). A query must come down to one number: a vector of exactly one
sample, or a scalar. Vendor failures become our error tree:

* connection refused, timeout, HTTP 5xx         -> `BackendUnavailable("prometheus", ...)`
* `"status": "error"` (bad PromQL, exec error)  -> `IntegrationError("prometheus", "<errorType>: <error>")`
* several series, a range vector, a string, junk -> `IntegrationError`

No data (empty vector) and NaN (e.g. 0/0 when the canary has no traffic) both answer None: the
analysis calls that inconclusive. +Inf / -Inf come back as float infinities.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any

import httpx

from bot.errors import BackendUnavailable, IntegrationError

SYSTEM = "prometheus"
_MAX_SERIES_SHOWN = 3


class PrometheusMetrics:
    """`MetricsSource` backed by a Prometheus server at `url` (e.g. `http://prometheus:9090`)."""

    def __init__(self, url: str, *, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"prometheus url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    # -- the port ---------------------------------------------------------------------------------

    def query(self, promql: str) -> float | None:
        """Instant query; one number, or None for no data / NaN."""
        # POST (form-encoded) so long queries never hit URL length limits; Prometheus accepts both.
        response = self._request("POST", "/api/v1/query", data={"query": promql})
        body = _json(response)
        if body.get("status") != "success":
            error_type = body.get("errorType") or f"http {response.status_code}"
            raise IntegrationError(SYSTEM, f"{error_type}: {body.get('error') or 'no error message'}",
                                   hint=f"query: {promql}")
        if response.status_code >= 400:
            raise IntegrationError(SYSTEM, f"http {response.status_code} with status success")
        return _single_value(body.get("data"), promql)

    # -- health -----------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when `/-/ready` answers 200 (the server is up and has loaded its TSDB)."""
        try:
            response = self._client.get(self.url + "/-/ready", timeout=self.timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> PrometheusMetrics:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusMetrics({self.url!r})"

    # -- internals --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(SYSTEM, f"timed out after {self.timeout:g}s ({self.url})") from exc
        except httpx.HTTPError as exc:  # connect errors, protocol errors, ...
            raise BackendUnavailable(SYSTEM, f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            # Prometheus answers 503 for query timeouts/cancellation and while starting up
            detail = _error_text(response)
            raise BackendUnavailable(SYSTEM, f"http {response.status_code} from {self.url}: {detail}")
        if response.status_code in (401, 403, 404, 405):
            raise IntegrationError(SYSTEM, f"http {response.status_code} from {self.url}{path}",
                                   hint="check the configured Prometheus url (path prefix? auth proxy?)")
        return response


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise IntegrationError(SYSTEM, f"http {response.status_code}: answer is not JSON: "
                                       f"{response.text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise IntegrationError(SYSTEM, "answer is not a JSON object")
    return body


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict) and body.get("error"):
        return f"{body.get('errorType', 'error')}: {body['error']}"
    return response.reason_phrase


def _single_value(data: Any, promql: str) -> float | None:
    if not isinstance(data, dict):
        raise IntegrationError(SYSTEM, "answer has no data object")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        return _number(result)
    if result_type == "vector":
        if not isinstance(result, list):
            raise IntegrationError(SYSTEM, "vector result is not a list")
        if not result:
            return None
        if len(result) > 1:
            shown = ", ".join(_labels(s) for s in result[:_MAX_SERIES_SHOWN])
            more = f" and {len(result) - _MAX_SERIES_SHOWN} more" if len(result) > _MAX_SERIES_SHOWN else ""
            raise IntegrationError(
                SYSTEM, f"query returned {len(result)} series ({shown}{more}); "
                        "it must aggregate to one series, e.g. wrap it in sum(...) or max(...)",
                hint=f"query: {promql}")
        sample = result[0]
        return _number(sample.get("value") if isinstance(sample, dict) else None)
    if result_type == "matrix":
        raise IntegrationError(SYSTEM, "query returned a range vector; an instant query needs an instant "
                                       "expression (e.g. rate(x[1m]), not x[1m])", hint=f"query: {promql}")
    raise IntegrationError(SYSTEM, f"query returned a {result_type!r} result; a number is needed",
                           hint=f"query: {promql}")


def _number(pair: Any) -> float | None:
    """`[<unix time>, "<value>"]` -> float; "NaN" -> None; "+Inf"/"-Inf" -> +-inf."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise IntegrationError(SYSTEM, f"malformed sample {pair!r}")
    try:
        value = float(pair[1])  # Python's float() reads Prometheus's "NaN", "+Inf" and "-Inf"
    except ValueError as exc:
        raise IntegrationError(SYSTEM, f"sample value {pair[1]!r} is not a number") from exc
    return None if math.isnan(value) else value


def _labels(sample: Any) -> str:
    metric = sample.get("metric") if isinstance(sample, dict) else None
    if not isinstance(metric, dict) or not metric:
        return "{}"
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"

"""What the small httpx API clients of the integrations share: a checked base URL, a timeout, and an
`httpx.Client` that is closed with the client unless the caller passed its own (tests, pooling)."""

from __future__ import annotations

from typing import Self

import httpx


class HttpApi:
    """Base of `AlertmanagerClient` and `PagerDutyClient`; `system` names the service in errors."""

    system = "api"

    def __init__(self, base_url: str, *, timeout: float, client: httpx.Client | None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{self.system} url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = client if client is not None else httpx.Client(timeout=timeout, follow_redirects=False)
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A small Python client of the HTTP API (the CLI is built on it)."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """The server refused a request; ``str()`` names the fields at fault."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        if isinstance(self.detail, list):
            lines = [f"{e.get('field', '?')}: {e.get('message', '')}" for e in self.detail]
            return "invalid job spec:\n  " + "\n  ".join(lines)
        return f"HTTP {self.status_code}: {self.detail}"


class TunerClient:
    """Talks to one tuner-service API server."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                  transport=transport)

    def __enter__(self) -> TunerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Submit a job spec; returns the new job."""
        return self._call("POST", "/v1/jobs", json=spec)

    def jobs(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """A page of jobs, newest first."""
        return self._call("GET", "/v1/jobs", params={"offset": offset, "limit": limit})

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's status and progress."""
        return self._call("GET", f"/v1/jobs/{job_id}")

    def trials(self, job_id: str) -> dict[str, Any]:
        """A job's trials."""
        return self._call("GET", f"/v1/jobs/{job_id}/trials")

    def report(self, job_id: str) -> dict[str, Any]:
        """A job's best-config report."""
        return self._call("GET", f"/v1/jobs/{job_id}/report")

    def report_html(self, job_id: str) -> str:
        """A job's report as one self-contained HTML page (plotly.js inlined)."""
        # The live page loads plotly.js from /static; a saved file must work offline.
        return self._request("GET", f"/v1/jobs/{job_id}/report.html",
                             params={"standalone": "true"}).text

    def report_url(self, job_id: str) -> str:
        """Where a browser shows the live report page."""
        return f"{self._http.base_url}/v1/jobs/{job_id}/report.html"

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        # No body, so no Content-Type: the server refuses POSTs whose content type is not JSON.
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def healthy(self) -> bool:
        """True when the server answers its health check."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._request(method, path, **kwargs).json()
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

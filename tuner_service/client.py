"""A small Python client of the HTTP API (the CLI is built on it); answers are the API's models."""

from __future__ import annotations

import email.utils
import io
import os
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
from pydantic import BaseModel

from tuner_service.config import Settings
from tuner_service.report_schema import ReportPublic
from tuner_service.schemas import (
    DatasetPublic,
    DatasetsPublic,
    JobPublic,
    JobsPublic,
    Me,
    ModelFilePublic,
    ModelsPublic,
    SigninLink,
    TrialsPublic,
)

Model = TypeVar("Model", bound=BaseModel)

TOKEN_HELP = "supply one with --token, the TUNER_TOKEN variable, or the file $TUNER_HOME/token"


class ApiError(Exception):
    """The server refused a request; ``str()`` says why and what to do about it."""

    def __init__(self, status_code: int, detail: Any, retry_after: float | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        if isinstance(self.detail, list):
            lines = [f"{e.get('field', '?')}: {e.get('message', '')}" for e in self.detail]
            what = "upload refused" if any(e.get("type") == "upload_problem"
                                           for e in self.detail) else "invalid job spec"
            return f"{what}:\n  " + "\n  ".join(lines)
        if 300 <= self.status_code < 400:
            return (f"the server answered with a redirect to {self.detail}, as its pages do "
                    f"when no valid API token comes\n  {TOKEN_HELP}")
        if self.status_code == 401:
            return f"missing or invalid API token: {self.detail}\n  {TOKEN_HELP}"
        if self.status_code == 404:
            # The server's own text usually says "not found" already.
            text = str(self.detail)
            return text if "not found" in text else f"not found: {text}"
        if self.status_code == 429:
            wait = f"; retry after {self.retry_after:g} s" if self.retry_after is not None else ""
            return f"too many requests: {self.detail}{wait}"
        return f"HTTP {self.status_code}: {self.detail}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: better no hint than a wrong one
    return max(0.0, moment.timestamp() - time.time())


class BearerToken(httpx.Auth):
    """Sends ``Authorization: Bearer <token>`` with every request."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class TunerClient:
    """Talks to one tuner-service API server.

    Its token: ``token=``, else TUNER_TOKEN, else the file ``$TUNER_HOME/token`` that
    ``tuner up`` writes (as the CLI); or any httpx ``auth=`` instead.
    """

    def __init__(self, base_url: str | None = None, timeout_s: float = 30.0, *,
                 token: str | None = None, auth: httpx.Auth | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if token is not None and auth is not None:
            raise ValueError("pass token= or auth=, not both")
        settings = Settings()
        if auth is None:
            found = settings.client_token(token)
            auth = BearerToken(found) if found is not None else None
        self._timeout_s = timeout_s
        self._http = httpx.Client(base_url=(base_url or settings.url).rstrip("/"),
                                  timeout=timeout_s, auth=auth, transport=transport)

    def __enter__(self) -> TunerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, spec: dict[str, Any]) -> JobPublic:
        """Submit a job spec; returns the new job."""
        return self._call(JobPublic, "POST", "/v1/jobs", json=spec)

    def jobs(self, offset: int = 0, limit: int = 50) -> JobsPublic:
        """A page of jobs, newest first."""
        return self._call(JobsPublic, "GET", "/v1/jobs",
                          params={"offset": offset, "limit": limit})

    def job(self, job_id: str) -> JobPublic:
        """One job's status and progress."""
        return self._call(JobPublic, "GET", f"/v1/jobs/{job_id}")

    def trials(self, job_id: str) -> TrialsPublic:
        """A job's trials."""
        return self._call(TrialsPublic, "GET", f"/v1/jobs/{job_id}/trials")

    def report(self, job_id: str) -> ReportPublic:
        """A job's best-config report."""
        return self._call(ReportPublic, "GET", f"/v1/jobs/{job_id}/report")

    def report_html(self, job_id: str) -> str:
        """A job's report as one self-contained HTML page (plotly.js inlined)."""
        # The live page loads plotly.js from /static; a saved file must work offline.
        return self._request("GET", f"/v1/jobs/{job_id}/report.html",
                             params={"standalone": "true"}).text

    def report_url(self, job_id: str) -> str:
        """Where a browser shows the live report page."""
        return f"{self._http.base_url}/v1/jobs/{job_id}/report.html"

    def cancel(self, job_id: str) -> JobPublic:
        """Cancel a job."""
        # No body, so no Content-Type: the server refuses POSTs whose content type is not JSON.
        return self._call(JobPublic, "POST", f"/v1/jobs/{job_id}/cancel")

    def upload_dataset(self, path: str | os.PathLike[str], *, name: str | None = None,
                       label_column: str | None = None, task: str | None = None,
                       progress: Callable[[int], None] | None = None) -> DatasetPublic:
        """Upload a data set file (.npz, .csv, .parquet), streamed from disk; ``progress``
        is called with each chunk's size as it is sent. Uploading the same file again
        returns the same data set."""
        fields = {"name": name, "label_column": label_column, "task": task}
        return self._upload(DatasetPublic, "/v1/datasets", path, fields, progress)

    def _upload(self, model: type[Model], route: str, path: str | os.PathLike[str],
                fields: dict[str, str | None], progress: Callable[[int], None] | None
                ) -> Model:
        with open(path, "rb") as file:
            # httpx reads a file part in chunks as it sends: counting reads counts the upload.
            source: Any = _Counting(file, progress) if progress else file
            return self._call(model, "POST", route,
                              data={key: value for key, value in fields.items() if value},
                              files={"file": (Path(path).name, source)},
                              timeout=httpx.Timeout(self._timeout_s, write=None, read=600.0))

    def datasets(self, offset: int = 0, limit: int = 50) -> DatasetsPublic:
        """The caller's data sets, newest first."""
        return self._call(DatasetsPublic, "GET", "/v1/datasets",
                          params={"offset": offset, "limit": limit})

    def dataset(self, dataset_id: str) -> DatasetPublic:
        """One data set."""
        return self._call(DatasetPublic, "GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a data set (409 while a queued or running job trains on it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def upload_model(self, path: str | os.PathLike[str], *, name: str | None = None,
                     progress: Callable[[int], None] | None = None) -> ModelFilePublic:
        """Upload a .keras model file; a worker then inspects it (``wait_for_model``).
        Uploading the same file again returns the same model."""
        return self._upload(ModelFilePublic, "/v1/models", path, {"name": name}, progress)

    def models(self, offset: int = 0, limit: int = 50) -> ModelsPublic:
        """Built-ins, the plugins live workers offer, and a page of the caller's files."""
        return self._call(ModelsPublic, "GET", "/v1/models",
                          params={"offset": offset, "limit": limit})

    def model(self, model_id: str) -> ModelFilePublic:
        """One model file, with its inspection's verdict."""
        return self._call(ModelFilePublic, "GET", f"/v1/models/{model_id}")

    def wait_for_model(self, model_id: str, timeout_s: float = 300.0,
                       poll_s: float = 0.5) -> ModelFilePublic:
        """Poll a model file until its inspection ends (ready or rejected); TimeoutError
        when it has not after ``timeout_s`` (no worker running?)."""
        deadline = time.monotonic() + timeout_s
        while True:
            model = self.model(model_id)
            if model.status != "validating":
                return model
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {model_id} is still being inspected after "
                                   f"{timeout_s:.0f} s: is a worker running?")
            time.sleep(poll_s)

    def delete_model(self, model_id: str) -> None:
        """Delete a model file (409 while a queued or running job trains it)."""
        self._request("DELETE", f"/v1/models/{model_id}")

    def me(self) -> Me:
        """The tenant the token acts for, and whether it is an admin token."""
        return self._call(Me, "GET", "/v1/me")

    def signin_link(self, next_path: str = "/") -> SigninLink:
        """A one-time link (valid for a minute) that signs a browser in as this token and
        then shows ``next_path``."""
        return self._call(SigninLink, "POST", "/v1/auth/signin-links",
                          params={"next": next_path})

    def healthy(self) -> bool:
        """True when the server answers its health check."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if not response.is_success:
            raise _api_error(response)
        return response


class _Counting(io.RawIOBase):
    """A file that reports how many bytes each read took (httpx streams files by reads)."""

    def __init__(self, file: BinaryIO, progress: Callable[[int], None]) -> None:
        super().__init__()
        self._file, self._progress = file, progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._progress(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _api_error(response: httpx.Response) -> ApiError:
    if response.is_redirect:
        # Not followed: a redirect is how the HTML pages send a browser without a session to
        # sign in, and saving that sign-in page as the report would hide the refusal.
        return ApiError(response.status_code, response.headers["location"])
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return ApiError(response.status_code, detail,
                    parse_retry_after(response.headers.get("Retry-After")))

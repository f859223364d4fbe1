"""Error answers as the OpenAPI schema documents them: every one is JSON (``ErrorBody``),
HTML pages' errors included, so clients and the fuzzer can rely on what the schema says."""

from __future__ import annotations

from typing import Any

Responses = dict[int | str, dict[str, Any]]
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}


def json_error(description: str) -> dict[str, Any]:
    """An error answered as ``ErrorBody`` JSON, also on routes that answer HTML (FastAPI
    would document a ``model`` under the route's own media type)."""
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


# What any route may answer besides its own: a refused Host, a bad parameter, the database
# down, or a bug (with the request id that is in the log).
COMMON: Responses = {
    400: json_error("Host not allowed (TUNER_ALLOWED_HOSTS) or a malformed request"),
    422: json_error("A parameter or the body is invalid; each problem names its field"),
    500: json_error("Unexpected error; the body's request_id is in the server log"),
    503: json_error("The database is unavailable; retry after the Retry-After seconds"),
}
NOT_FOUND: Responses = {404: json_error("No such job (or it is another tenant's)")}
# Every route but the health checks and the sign-in pages needs a token.
SIGNED_IN: Responses = {
    401: json_error("No token, a malformed Authorization header, or an unknown or revoked "
                    "token (WWW-Authenticate: Bearer)"),
}
OVER_LIMIT: Responses = {
    429: json_error("A limit of the caller's tenant would be passed; retry after the "
                    "Retry-After seconds"),
}
# What a write (POST) may answer besides: a foreign Origin, a non-JSON body, a too large one.
WRITES: Responses = {
    403: json_error("Cross-site request refused (foreign Origin)"),
    413: json_error("Request body larger than TUNER_MAX_REQUEST_BYTES"),
    415: json_error("The body must be JSON (Content-Type: application/json)"),
}

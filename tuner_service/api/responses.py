"""Answers built from cached renderings: entity tags, 304s and pre-gzipped bodies."""

from __future__ import annotations

from fastapi import Request, Response

from tuner_service.render_cache import Rendered


def accepts_gzip(request: Request) -> bool:
    """True when the client said it takes gzip."""
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def rendered_response(request: Request, rendered: Rendered, media_type: str,
                      cache_control: str = "no-cache") -> Response:
    """``rendered`` as the answer: 304 when the client holds it already, gzipped once when
    the client takes gzip (the GZip middleware leaves an encoded answer alone)."""
    headers = {"ETag": rendered.etag, "Cache-Control": cache_control,
               "Vary": "Accept-Encoding"}
    if rendered.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return Response(rendered.gzipped, media_type=media_type, headers=headers)
    return Response(rendered.body, media_type=media_type, headers=headers)


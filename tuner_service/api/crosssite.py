"""Refuse requests a browser on another site could make: DNS rebinding and cross-site writes.

A page on any site can point a browser at the loopback API (by rebinding its own DNS name to
127.0.0.1, or by a plain cross-site form POST). The Host check refuses the first, since the
browser then sends that site's name; the Origin and Content-Type checks refuse the second, since
a form cannot send ``application/json`` and every browser names the page's origin on a POST.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tuner_service.api.middleware import send_json

# Probes often call by IP address (a load balancer, a kubelet): they must not need a host name.
HOST_EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The sign-in pages' plain HTML forms: the one place a form body is taken, and only with the
# browser's Origin naming this site (a form on another site could sign a victim in as the
# attacker, or out).
FORM_PATHS = frozenset({"/signin", "/signout"})
# File uploads: multipart/form-data, and still a bearer token (a cookie never writes).
UPLOAD_PATHS = frozenset({"/v1/datasets", "/v1/models"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_port(header: str) -> int | None:
    """The port a Host header names, None when it names none (``"[::1]:8000"`` -> 8000)."""
    value = header.strip()
    tail = value[value.find("]") + 1:] if value.startswith("[") else value
    if tail.count(":") != 1:  # no port, or a bare IPv6 address
        return None
    port = tail.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def host_name(header: str) -> str:
    """``"[::1]:8000"`` -> ``"::1"``, ``"LocalHost:80"`` -> ``"localhost"``; '' if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:  # more than one colon is a bare IPv6 address, no port
        value = value.partition(":")[0]
    return value.rstrip(".")


class AllowedHosts:
    """The names of ``TUNER_ALLOWED_HOSTS``: exact, ``*.example.org`` (subdomains), or ``*``."""

    def __init__(self, names: Iterable[str]) -> None:
        normal = {host_name(name) if name != "*" else "*" for name in names}
        self.any = "*" in normal
        self.suffixes = tuple(name[1:] for name in normal if name.startswith("*."))
        self.exact = frozenset(name for name in normal if not name.startswith("*"))

    def named(self, host: str) -> bool:
        """Is ``host`` listed by name (``*`` does not count: see ``CrossSiteGuard``)."""
        return bool(host) and (host in self.exact or host.endswith(self.suffixes))

    def allows(self, host: str) -> bool:
        """May a request carry ``Host: host``."""
        return self.any or self.named(host)


def is_json(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters ignored."""
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def is_form(content_type: str) -> bool:
    """``application/x-www-form-urlencoded``, parameters ignored."""
    return content_type.partition(";")[0].strip().lower() == "application/x-www-form-urlencoded"


def has_no_body(headers: Headers) -> bool:
    """True when the request declares no body (what the CLI's body-less POSTs send)."""
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers


class CrossSiteGuard:
    """400 for a Host not allowed; 403 for a foreign Origin; 415 for a write that is not JSON."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = AllowedHosts(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await send_json(scope, send, refusal[0], {"detail": refusal[1]})

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = host_name(headers.get("host", ""))
        if scope["path"] not in HOST_EXEMPT_PATHS and not self.hosts.allows(host):
            shown = headers.get("host", "")[:100]
            return 400, (f"host {shown!r} is not allowed; add its name to TUNER_ALLOWED_HOSTS "
                         "(comma-separated) to serve it")
        if scope["method"] not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if scope["path"] in FORM_PATHS:
            return self._form_refusal(origin, host, headers)
        if origin is not None and not self._same_site(origin[:200], host,
                                                      host_port(headers.get("host", ""))):
            return 403, (f"cross-site request refused: Origin {origin[:100]!r} is not an "
                         "allowed host (TUNER_ALLOWED_HOSTS)")
        content_type = headers.get("content-type")
        if content_type is None and has_no_body(headers):
            return None
        if scope["path"] in UPLOAD_PATHS:
            return None  # the route answers 415 unless multipart/form-data
        if content_type is None or not is_json(content_type):
            return 415, (f"{scope['method']} needs a JSON body (Content-Type: "
                         f"application/json), not {(content_type or 'none')[:100]!r}")
        return None

    def _form_refusal(self, origin: str | None, host: str, headers: Headers
                      ) -> tuple[int, str] | None:
        # Our pages send no referrer, so a browser names their form's origin "null"; it then
        # still says where the form came from in Sec-Fetch-Site. Neither said: refused.
        named = origin not in (None, "null")
        fetch_site = headers.get("sec-fetch-site")
        same_site = ((not named or self._same_site(str(origin)[:200], host,
                                                    host_port(headers.get("host", ""))))
                     and (named or fetch_site is not None)
                     and fetch_site in (None, "same-origin"))
        if not same_site:
            return 403, "sign-in forms are taken only from this site's own pages (Origin)"
        content_type = headers.get("content-type", "")
        if has_no_body(headers) or is_form(content_type):
            return None
        return 415, "a sign-in form is application/x-www-form-urlencoded"

    def _same_site(self, origin: str, host: str, port: int | None) -> bool:
        # '*' admits any Host, never any Origin: a server answering every name must still
        # refuse a write that a page on another site started. Its own origin is fine. When
        # the Host names a port, the Origin's must match: a page of another local server
        # (localhost:3000) could otherwise send body-less writes (cancel) with mode no-cors.
        try:
            parts = urlsplit(origin)
            origin_host = parts.hostname or ""
            origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # e.g. "http://[::1" ; "null" parses to no host at all
            return False
        if not origin_host or (port is not None and origin_port != port):
            return False
        return origin_host == host or self.hosts.named(origin_host)

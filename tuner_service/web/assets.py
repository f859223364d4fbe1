"""The pages' scripts as assets: plotly.js and pages.js, each named by its version or content
hash so that a browser may cache it for good, and gzipped once, not on every request."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from tuner_service.render_cache import Rendered
from tuner_service.web.plots import plotly_js, plotly_version

PREFIX = "/assets"


@dataclass(frozen=True)
class Asset:
    """One static file, served under a name that changes with its content."""

    name: str
    rendered: Rendered
    media_type: str = "text/javascript; charset=utf-8"

    @property
    def url(self) -> str:
        """Where the API serves it."""
        return f"{PREFIX}/{self.name}"

    @property
    def text(self) -> str:
        """The body as text (for inlining into a standalone page)."""
        return self.rendered.body.decode("utf-8")


@dataclass(frozen=True)
class Script:
    """A script tag of a page: loaded from ``src``, or carried ``inline``."""

    src: str
    inline: str | None = None


def _asset(name: str, body: bytes) -> Asset:
    return Asset(name, Rendered.of(body, name))


@functools.cache
def plotly_asset() -> Asset:
    """plotly.js, named by its version."""
    return _asset(f"plotly-{plotly_version()}.min.js", plotly_js().encode("utf-8"))


@functools.cache
def pages_asset() -> Asset:
    """pages.js (draws the plots, wires copy buttons), named by a hash of its content."""
    body = resources.files("tuner_service.web").joinpath("static/pages.js").read_bytes()
    return _asset(f"pages-{hashlib.sha256(body).hexdigest()[:12]}.js", body)


def find_asset(name: str) -> Asset | None:
    """The asset served under ``name``, if any."""
    for asset in (pages_asset(), plotly_asset()):
        if asset.name == name:
            return asset
    return None


def page_scripts(*, with_plotly: bool, standalone: bool) -> list[Script]:
    """The scripts a page loads, in order; a standalone page carries them inline."""
    chosen = [plotly_asset()] if with_plotly else []
    chosen.append(pages_asset())
    return [Script(a.url, a.text if standalone else None) for a in chosen]

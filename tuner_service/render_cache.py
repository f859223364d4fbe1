"""Rendered reports, kept while their job's study is unchanged.

A report (JSON or HTML page with plots) costs up to a second of CPU to build, and a running
job's page reloads every few seconds in every open tab. Each entry is keyed by what it shows
and stamped with a fingerprint of the job (status, slot states, and the study's counts, newest
epoch and latest finish): the same fingerprint means the same report, so it is served as is.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from tuner_service.lru import LRU

DEFAULT_ENTRIES = 128


@dataclass(frozen=True)
class Rendered:
    """A rendered body, gzipped once, and its entity tag."""

    body: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes, tag: str) -> Rendered:
        """``body`` gzipped now (mtime 0: the same body, the same bytes), tagged ``tag``."""
        return cls(body, gzip.compress(body, compresslevel=6, mtime=0), f'"{tag}"')


class RenderCache:
    """A bounded, thread-safe map from key to the latest rendering and its fingerprint."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self._items: LRU[Hashable, tuple[Hashable, Rendered]] = LRU(entries)

    def get_or_render(self, key: Hashable, fingerprint: Hashable,
                      render: Callable[[], bytes]) -> Rendered:
        """The cached rendering when ``fingerprint`` still matches, else a fresh one.

        Two requests that miss at once both render; the later one's result is kept. Cheaper
        than holding a lock across a render that takes a second.
        """
        hit = self._items.get(key)
        if hit is not None and hit[0] == fingerprint:
            return hit[1]
        body = render()
        tag = hashlib.sha256(repr((key, fingerprint)).encode() + body).hexdigest()[:20]
        rendered = Rendered.of(body, tag)
        self._items.put(key, (fingerprint, rendered))
        return rendered

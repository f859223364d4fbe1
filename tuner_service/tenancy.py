"""Who is asking: the tenant a token acts for, and the limits each tenant's work is held to.

Plain data and rules (no web, no ORM): the routes resolve a ``Caller`` from a token, the use
cases take it, and the repository filters every job by its tenant in SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuner_service.db.models import LOCAL_TENANT

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# How long a refused submit is told to wait: about as long as a short trial takes.
LIMIT_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Caller:
    """A request's tenant; an admin sees every tenant's jobs (its own jobs are its tenant's)."""

    tenant: str
    is_admin: bool = False
    token_id: str | None = None

    @property
    def scope(self) -> str | None:
        """The ``tenant=`` of the repository's reads: None (every tenant) for an admin."""
        return None if self.is_admin else self.tenant


LOCAL = Caller(LOCAL_TENANT)


class LimitExceeded(Exception):
    """A tenant's limit would be passed: the request is refused and nothing is written."""

    def __init__(self, message: str, retry_after_s: int = LIMIT_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def tenant_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a tenant, or None."""
    if TENANT_NAME.fullmatch(name):
        return None
    return ("a tenant name is 1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a "
            f"letter or digit: {name[:80]!r}")

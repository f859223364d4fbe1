"""Sending trial slots to the queue, after the commit that stored them."""

from __future__ import annotations

import logging

from tuner_service.db import repository as repo
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime

log = logging.getLogger(__name__)


def dispatch(rt: Runtime, job_id: str, slots: range | list[int]) -> None:
    """Send the slots' tasks; a send that fails is left for ``recover_lost_work`` to repeat.

    The sent slots are marked in one commit: should the process die before it, the recovery
    loop resends them, and a duplicate delivery is harmless.
    """
    sent = []
    for slot in slots:
        try:
            rt.queue.send_trial(job_id, slot)
        except Exception:
            log.exception("could not enqueue %s/%s; it will be sent again", job_id, slot)
            continue
        sent.append(slot)
    if sent:
        with session_scope(rt.sessions) as session:
            repo.mark_dispatched(session, job_id=job_id, slots=sent)

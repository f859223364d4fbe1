"""Leases: which worker delivery holds which slots of a job, kept alive by heartbeats.

A worker leases a pack of K slots of one job at once; each slot keeps its own claim, heartbeat,
retry count and recovery, so a lost pack returns each of its slots to the queue and a duplicate
delivery trains nothing twice.

Celery may deliver a task more than once (late ack, redelivery after a lost worker or a lost
broker connection, the recovery loop's resend); every function here is safe to repeat. A claim
is a compare-and-set on the slot row that bumps ``attempts``; the pair (task id, attempt) is the
claim's token, and every later write of the slot checks it. So a run that was superseded (its
worker was thought lost, yet lived on) finds out at its next epoch and stops without writing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from tuner_service.db import repository as repo
from tuner_service.db.models import TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime
from tuner_service.states import SlotState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """Which delivery owns a slot: its task id and the attempt number it claimed."""

    job_id: str
    slot: int
    task_id: str
    attempt: int


@dataclass(frozen=True)
class Claimed:
    """A fresh claim, and the number of the trial a lost earlier attempt left in the slot."""

    claim: Claim
    lost_number: int | None


def claim(rt: Runtime, job_id: str, slot: int, task_id: str) -> Claimed | None:
    """Compare-and-set one slot to running for this task; None when another live delivery
    owns it, or it has ended (a slot whose workers were lost too often is failed here)."""
    stale = _stale_before(rt)
    with session_scope(rt.sessions) as session:
        before = repo.find_slot(session, job_id, slot)
        if before is None or SlotState(before.state).ended:
            return None
        won = _take(session, before, task_id, stale, rt.settings.max_trial_attempts)
    if won is not None:
        return won
    if before.attempts >= rt.settings.max_trial_attempts and _is_lost(before, task_id, stale):
        from tuner_service.job_status import give_up

        give_up(rt, before)
    return None


def claim_partners(rt: Runtime, first: Claim, kind: str, count: int,
                   seed: int | None = None) -> list[Claimed]:
    """Lease up to ``count`` more slots of the same job and kind for the same task (for a
    confirm slot, those of runs on the same ``seed``: a pack shares its batches and initial
    weights), lowest slot first. A slot another delivery wins meanwhile is skipped."""
    if count <= 0:
        return []
    stale = _stale_before(rt)
    with session_scope(rt.sessions) as session:
        query = (select(TrialSlotModel)
                 .where(_partners(first, kind, seed, stale),
                        TrialSlotModel.attempts < rt.settings.max_trial_attempts)
                 .order_by(TrialSlotModel.slot))
        won: list[Claimed] = []
        for row in session.scalars(query.limit(count * 2)):
            taken = _take(session, row, first.task_id, stale, rt.settings.max_trial_attempts)
            if taken is not None:
                won.append(taken)
            if len(won) == count:
                break
    return won


def open_slots(rt: Runtime, first: Claim, kind: str, seed: int | None = None) -> int:
    """How many slots of the job, of this kind, a pack led by ``first`` could still lease
    (``first`` included)."""
    stale = _stale_before(rt)
    with session_scope(rt.sessions) as session:
        query = (select(func.count()).select_from(TrialSlotModel)
                 .where(_partners(first, kind, seed, stale)))
        return 1 + int(session.scalar(query) or 0)


def _partners(first: Claim, kind: str, seed: int | None, stale: datetime
              ) -> ColumnElement[bool]:
    """The other slots a pack led by ``first`` may lease."""
    partners = ((TrialSlotModel.job_id == first.job_id) & (TrialSlotModel.kind == kind)
                & (TrialSlotModel.slot != first.slot) & _claimable(first.task_id, stale))
    if seed is not None:
        partners &= TrialSlotModel.slot.in_(repo.confirm_slots_on_seed(first.job_id, seed))
    return partners


def _take(session: Session, before: TrialSlotModel, task_id: str, stale: datetime,
          max_attempts: int) -> Claimed | None:
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(TrialSlotModel)
        .where(repo.slot_key(before.job_id, before.slot),
               TrialSlotModel.attempts == before.attempts,
               TrialSlotModel.attempts < max_attempts, _claimable(task_id, stale))
        .values(state=SlotState.RUNNING, task_id=task_id, attempts=TrialSlotModel.attempts + 1,
                heartbeat_at=utcnow(), trial_number=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return Claimed(Claim(before.job_id, before.slot, task_id, before.attempts + 1),
                   before.trial_number)


def _claimable(task_id: str, stale: datetime) -> ColumnElement[bool]:
    """Queued, or running under this task (a redelivery) or under a worker gone quiet."""
    return or_(
        TrialSlotModel.state == SlotState.QUEUED,
        (TrialSlotModel.state == SlotState.RUNNING)
        & or_(TrialSlotModel.task_id == task_id, TrialSlotModel.heartbeat_at < stale),
    )


def _stale_before(rt: Runtime) -> datetime:
    return utcnow() - timedelta(seconds=rt.settings.stale_after_s)


def _is_lost(slot: TrialSlotModel, task_id: str, stale: datetime) -> bool:
    """True when no live delivery owns the slot any more."""
    if slot.state == SlotState.QUEUED or slot.task_id == task_id or slot.heartbeat_at is None:
        return True
    beat = slot.heartbeat_at
    # SQLite hands back naive datetimes; they were written in UTC.
    return (beat if beat.tzinfo else beat.replace(tzinfo=UTC)) < stale


def owned_by(claim: Claim) -> ColumnElement[bool]:
    """The slot is still running under this claim."""
    return (repo.slot_key(claim.job_id, claim.slot) & (TrialSlotModel.state == SlotState.RUNNING)
            & (TrialSlotModel.task_id == claim.task_id)
            & (TrialSlotModel.attempts == claim.attempt))


def _owned_by_any(claims: Sequence[Claim]) -> ColumnElement[bool]:
    """Those of the slots still running under their claims (one job, one task)."""
    first = claims[0]
    return ((TrialSlotModel.job_id == first.job_id)
            & (TrialSlotModel.state == SlotState.RUNNING)
            & (TrialSlotModel.task_id == first.task_id)
            & tuple_(TrialSlotModel.slot, TrialSlotModel.attempts).in_(
                [(c.slot, c.attempt) for c in claims]))


def update_slot(session: Session, where: ColumnElement[bool], **values: Any) -> bool:
    """Update the one slot ``where`` selects; False when it no longer matches."""
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(TrialSlotModel).where(where).values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def beat(session: Session, claims: Sequence[Claim]) -> set[int]:
    """Heartbeat every slot of a lease in two statements; returns the slots still owned."""
    if not claims:
        return set()
    owned = _owned_by_any(claims)
    session.execute(update(TrialSlotModel).where(owned).values(heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False))
    return set(session.scalars(select(TrialSlotModel.slot).where(owned)))


def owned(rt: Runtime, claims: Sequence[Claim]) -> set[int]:
    """Heartbeat the lease now; the slots it still holds."""
    with session_scope(rt.sessions) as session:
        return beat(session, claims)


def end_slots(session: Session, claims: Sequence[Claim], state: SlotState,
              error: str | None = None) -> int:
    """End the slots the lease still holds; how many it ended."""
    if not claims:
        return 0
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(TrialSlotModel).where(_owned_by_any(claims))
        .values(state=state, error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)


@contextmanager
def keep_alive(rt: Runtime, claims: Sequence[Claim]) -> Iterator[None]:
    """Heartbeat the lease from a thread while a long epoch runs, so it is not taken for lost."""
    stop = threading.Event()
    interval = max(1.0, rt.settings.stale_after_s / 4)

    def beating() -> None:
        while not stop.wait(interval):
            try:
                owned(rt, claims)
            except Exception:  # a missed beat is retried; the training itself goes on
                log.warning("heartbeat of %s/%s failed", claims[0].job_id,
                            [c.slot for c in claims], exc_info=True)

    thread = threading.Thread(target=beating, name="tuner-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

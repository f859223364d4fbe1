"""A pack of trials, as a worker drives it: lease K slots, ask the study for K configurations,
report each copy's epochs to its own trial, tell K results.

The lease itself (claims, heartbeats, recovery of a lost attempt's slot) is ``leases``; what a
job does once its slots end is ``job_status``; how big a pack is, ``packing``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuner_service import confirmation, job_status, leases, packing
from tuner_service.adam import AdamConfig
from tuner_service.datasets.catalog import stamped_data
from tuner_service.db import repository as repo
from tuner_service.db.models import utcnow
from tuner_service.db.session import session_scope
from tuner_service.leases import Claim, Claimed
from tuner_service.model_sources.resolve import stamped_model
from tuner_service.model_sources.types import ModelDescription
from tuner_service.packing import PackChoice, PackRequest
from tuner_service.runtime import Runtime
from tuner_service.schemas import DataDescription, JobCreate
from tuner_service.states import (
    BUDGET_SPENT,
    INTERRUPTED,
    JobStatus,
    SlotState,
    StopReason,
    TrialState,
)
from tuner_service.studies import SearchStopped

log = logging.getLogger(__name__)
SEARCHED_MODEL = ("the HyperModel's searched hyperparameters change the model from trial to "
                  "trial")


@dataclass(frozen=True)
class JobContext:
    """A job as a worker needs it to size and train a pack; plain data."""

    job_id: str
    study_name: str
    status: JobStatus
    spec: JobCreate
    data: DataDescription
    model: ModelDescription


@dataclass(frozen=True)
class WorkerFit:
    """What the worker knows of the pack it could train: how many copies its free memory
    holds, and why the model cannot be packed (None when it can)."""

    memory_fit: int
    problem: str | None = None


# The worker's assessment of a job's model; None: this caller trains one at a time.
Assess = Callable[[JobContext], WorkerFit]


@dataclass(frozen=True)
class TrialTicket:
    """What a worker needs to train one configuration of a pack; plain data.

    A search slot's ticket has the Optuna trial ``number``; a confirm slot's has none (its
    result goes to its confirmation run, not to the study) and a fresh ``init_seed``.
    """

    claim: Claim
    study_name: str
    number: int | None
    config: AdamConfig
    spec: JobCreate
    data: DataDescription
    model: ModelDescription
    init_seed: int | None = None
    pack_size: int = 1

    @property
    def confirms(self) -> bool:
        """True for a confirmation run."""
        return self.number is None

    @property
    def job_id(self) -> str:
        """The job this trial belongs to."""
        return self.claim.job_id


@dataclass(frozen=True)
class Pack:
    """K tickets of one job trained together: same model, data, batches and initial weights."""

    tickets: tuple[TrialTicket, ...]
    choice: PackChoice

    @property
    def claims(self) -> list[Claim]:
        """The lease: one claim per slot."""
        return [ticket.claim for ticket in self.tickets]

    @property
    def first(self) -> TrialTicket:
        """Any ticket: they share everything but the configuration."""
        return self.tickets[0]


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``complete`` with a value, ``pruned``, or ``fail`` with a reason."""

    state: str
    value: float | None = None
    reason: str | None = None
    history: tuple[float, ...] = ()


ONE_AT_A_TIME = PackChoice(1, "one configuration per pass")


def start_pack(rt: Runtime, job_id: str, slot: int, task_id: str, worker: str,
               assess: Assess | None = None) -> Pack | None:
    """Lease ``slot`` and as many more of its job as the pack's size allows, then ask the
    study for a configuration per search slot (or load each confirm slot's run); None when
    there is nothing to run. Without ``assess`` the pack holds ``slot`` alone."""
    context = _job_context(rt, job_id)
    if context is None:
        return None
    if context.status.ended:
        job_status.close_unstarted(rt, job_id, context.study_name)
        return None
    first = leases.claim(rt, job_id, slot, task_id)
    if first is None:
        return None
    with session_scope(rt.sessions) as session:
        run = repo.confirm_run(session, job_id, slot)
    seed = run.seed if run is not None else None
    kind = repo.CONFIRM if run is not None else repo.SEARCH
    choice = _size(rt, context, first.claim, kind, seed, assess)
    claimed = [first, *leases.claim_partners(rt, first.claim, kind, choice.size - 1, seed)]
    choice = PackChoice(len(claimed), choice.reason)
    if run is not None:
        return _start_confirm_runs(rt, context, claimed, choice)
    return _start_search_trials(rt, context, claimed, choice, worker)


def _job_context(rt: Runtime, job_id: str) -> JobContext | None:
    with session_scope(rt.sessions) as session:
        job = repo.find_job(session, job_id, tenant=repo.EVERY_TENANT)
        if job is None:
            return None
        spec = JobCreate.model_validate(job.spec)
        return JobContext(job_id, job.study_name, JobStatus(job.status), spec,
                          stamped_data(spec, job.dataset), stamped_model(spec.model, job.model))


def _size(rt: Runtime, context: JobContext, first: Claim, kind: str, seed: int | None,
          assess: Assess | None) -> PackChoice:
    if assess is None:
        return ONE_AT_A_TIME
    if context.model.searched_hyperparameters:
        return PackChoice(1, f"cannot pack this model: {SEARCHED_MODEL}")
    left = leases.open_slots(rt, first, kind, seed)
    if context.spec.budget.pack == 1 or left == 1:
        fit = WorkerFit(memory_fit=1)  # no need to build the model to learn it packs
    else:
        fit = assess(context)
    return packing.choose(context.spec, PackRequest(
        slots_left=left, memory_fit=fit.memory_fit, problem=fit.problem,
        confirms=kind == repo.CONFIRM))


def _start_confirm_runs(rt: Runtime, context: JobContext, claimed: Sequence[Claimed],
                        choice: PackChoice) -> Pack | None:
    tickets = []
    with session_scope(rt.sessions) as session:
        for taken in claimed:
            run = repo.confirm_run(session, context.job_id, taken.claim.slot)
            if run is None or not leases.update_slot(session, leases.owned_by(taken.claim),
                                                     heartbeat_at=utcnow()):
                continue
            repo.update_confirm_run(session, context.job_id, taken.claim.slot,
                                    state=TrialState.RUNNING, started_at=utcnow(), history=[],
                                    value=None, error=None)
            tickets.append(TrialTicket(taken.claim, context.study_name, None, run.config,
                                       context.spec, context.data, context.model,
                                       init_seed=run.seed, pack_size=len(claimed)))
    return Pack(tuple(tickets), choice) if tickets else None


def _start_search_trials(rt: Runtime, context: JobContext, claimed: Sequence[Claimed],
                         choice: PackChoice, worker: str) -> Pack | None:
    """Ask the study for one configuration per leased slot (a lost attempt's trial is failed
    and its parameters asked again), within the job's trial-epoch budget."""
    spec, study_name = context.spec, context.study_name
    budget = confirmation.search_epoch_budget(spec)
    committed = _committed_epochs(rt, context) if budget is not None else 0
    asked: list[tuple[Claim, int, AdamConfig]] = []
    for index, taken in enumerate(claimed):
        if taken.lost_number is not None and not _recover_lost_trial(
                rt, taken.claim, study_name, taken.lost_number):
            continue
        if budget is not None and committed >= budget:
            _stop_starting_trials(rt, context, [c.claim for c in claimed[index:]])
            break
        try:
            trial = rt.studies.ask(study_name, spec, seed_offset=taken.claim.slot,
                                   worker=worker, pack_size=len(claimed),
                                   hyperparameters=context.model.searched_hyperparameters)
        except SearchStopped as stop:
            _give_back(rt, asked, study_name)
            job_status.fail_job(rt, context.job_id, str(stop))
            _end(rt, [c.claim for c in claimed], SlotState.FAILED, str(stop))
            return None
        committed += spec.budget.epochs
        asked.append((taken.claim, trial.number, trial.config))
    started = _record_starts(rt, context, asked, choice)
    tickets = tuple(TrialTicket(claim, study_name, number, config, spec, context.data,
                                context.model, pack_size=len(claimed))
                    for claim, number, config in asked if claim.slot in started)
    _give_back(rt, [a for a in asked if a[0].slot not in started], study_name)
    return Pack(tickets, choice) if tickets else None


def _committed_epochs(rt: Runtime, context: JobContext) -> int:
    """The epochs ended trials trained, plus a full trial for each one still running
    (confirmation's share of max_trial_epochs is kept out of the search's)."""
    records = rt.studies.records(context.study_name, context.spec)
    return sum(context.spec.budget.epochs if r.state == TrialState.RUNNING
               else len(r.intermediate_values) for r in records)


def _stop_starting_trials(rt: Runtime, context: JobContext, claims: Sequence[Claim]) -> None:
    """The budget is spent: these slots and every queued one end without a trial (in one
    statement, so the queue drains at once); running trials finish and end the job."""
    with session_scope(rt.sessions) as session:
        lost = repo.cancel_open_slots(session, job_id=context.job_id)
    job_status.fail_lost_trials(rt, context.study_name, lost)
    _end(rt, claims, SlotState.CANCELLED, BUDGET_SPENT)


def _recover_lost_trial(rt: Runtime, claim: Claim, study_name: str, number: int) -> bool:
    """A previous attempt left trial ``number``; True when this attempt must train again."""
    if TrialState(rt.studies.state_of(study_name, number)).finished:
        # Its result was told before its worker died: the slot is done, nothing to rerun.
        _end(rt, [claim], SlotState.DONE)
        return False
    rt.studies.tell(study_name, number, TrialState.FAIL, None, reason=INTERRUPTED)
    rt.studies.retry_params(study_name, number)
    return True


def _record_starts(rt: Runtime, context: JobContext,
                   asked: Sequence[tuple[Claim, int, AdamConfig]], choice: PackChoice
                   ) -> set[int]:
    """Note each slot's trial (where the lease still holds it) and the pack's size on the job;
    returns the slots noted."""
    started = set()
    with session_scope(rt.sessions) as session:
        for claim, number, _config in asked:
            if leases.update_slot(session, leases.owned_by(claim), trial_number=number,
                                  heartbeat_at=utcnow()):
                started.add(claim.slot)
        if started:
            repo.set_packing(session, context.job_id, choice.stored())
    if started:
        job_status.mark_running(rt, context.job_id)
    return started


def _give_back(rt: Runtime, asked: Sequence[tuple[Claim, int, AdamConfig]],
               study_name: str) -> None:
    """Trials asked for slots another delivery took over meanwhile."""
    for _claim, number, _config in asked:
        rt.studies.tell(study_name, number, TrialState.FAIL, None,
                        reason="superseded by another delivery")


class EpochReports:
    """Reports a pack's epochs: per epoch, one heartbeat of the whole lease and one read of the
    job's status serve every copy; each copy's value goes to its own trial (and pruner)."""

    def __init__(self, rt: Runtime, pack: Pack) -> None:
        self._rt = rt
        self._pack = pack
        self._epoch: int | None = None
        self._owned: set[int] = set()
        self._status = JobStatus.RUNNING

    def report(self, ticket: TrialTicket, epoch: int, value: float) -> StopReason | None:
        """Record one epoch of one copy; why that copy must stop now, or None to go on."""
        if epoch != self._epoch:
            self._refresh(epoch)
        if ticket.claim.slot not in self._owned:
            return StopReason.LOST
        if self._status.ended:
            return StopReason.job_ended(self._status)
        if ticket.number is None:  # a confirmation run is never pruned: it trains to the end
            return None
        prune = self._rt.studies.report(ticket.study_name, ticket.number, epoch, value)
        return StopReason.PRUNED if prune else None

    def _refresh(self, epoch: int) -> None:
        with session_scope(self._rt.sessions) as session:
            self._owned = leases.beat(session, self._pack.claims)
            job = repo.find_job_or_raise(session, self._pack.first.job_id,
                                         tenant=repo.EVERY_TENANT)
            self._status = JobStatus(job.status)
        self._epoch = epoch


def finish_pack(rt: Runtime, pack: Pack, outcomes: Sequence[TrialOutcome]) -> None:
    """Tell the study (or the confirmation runs) how each copy ended, end the lease's slots,
    and finish the job when all have ended. A superseded copy writes nothing: the delivery
    that took its slot over owns the result."""
    still_owned = leases.owned(rt, pack.claims)
    kept = []
    for ticket, outcome in zip(pack.tickets, outcomes, strict=True):
        if outcome.reason == StopReason.LOST or ticket.claim.slot not in still_owned:
            log.warning("trial %s of job %s was taken over; dropping its result",
                        ticket.number, ticket.job_id)
            continue
        kept.append(ticket.claim)
        # "pruned" says nothing the state does not; other reasons ("job cancelled",
        # "diverged: …") are kept with the trial.
        reason = None if outcome.reason == StopReason.PRUNED else outcome.reason
        if ticket.number is None:
            with session_scope(rt.sessions) as session:
                repo.update_confirm_run(
                    session, ticket.job_id, ticket.claim.slot, state=outcome.state,
                    value=outcome.value if outcome.state == TrialState.COMPLETE else None,
                    history=list(outcome.history), error=reason, finished_at=utcnow())
        else:
            rt.studies.tell(ticket.study_name, ticket.number, outcome.state, outcome.value,
                            reason=reason)
    _end(rt, kept, SlotState.DONE)


def _end(rt: Runtime, claims: Sequence[Claim], state: SlotState, error: str | None = None
         ) -> None:
    if not claims:
        return
    with session_scope(rt.sessions) as session:
        ended = leases.end_slots(session, claims, state, error)
    if ended:
        job_status.finish_job_if_done(rt, claims[0].job_id)


# One trial at a time: the pack of one that tests and simple callers drive.

def start_trial(rt: Runtime, job_id: str, slot: int, task_id: str,
                worker: str = "") -> TrialTicket | None:
    """Lease one slot and ask for its trial (a pack of one)."""
    pack = start_pack(rt, job_id, slot, task_id,
                      worker or f"{socket.gethostname()}:{os.getpid()}")
    return pack.first if pack is not None else None


def report_epoch(rt: Runtime, ticket: TrialTicket, epoch: int, value: float
                 ) -> StopReason | None:
    """Record one epoch of a trial trained alone; why it must stop now, or None."""
    return EpochReports(rt, Pack((ticket,), ONE_AT_A_TIME)).report(ticket, epoch, value)


def finish_trial(rt: Runtime, ticket: TrialTicket, outcome: TrialOutcome) -> None:
    """Tell how a trial trained alone ended."""
    finish_pack(rt, Pack((ticket,), ONE_AT_A_TIME), [outcome])

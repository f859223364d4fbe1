"""The states a job, a slot and a trial move through, and why a trial stops: typed, not
strings scattered over modules. They are ``StrEnum``s, so each equals the string the database,
Optuna's records and the API have always held ("running", "done", "pruned")."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is: waiting, searching (or confirming), or ended."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True once the job will change no more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class SlotState(StrEnum):
    """A slot (one unit of a job's work, leased by a worker) ends in exactly one of
    done, cancelled or failed, however often its task is delivered."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        """True for the terminal states."""
        return self in ENDED_SLOT_STATES


ENDED_SLOT_STATES = frozenset({SlotState.DONE, SlotState.CANCELLED, SlotState.FAILED})


class TrialState(StrEnum):
    """A trial of the study (Optuna's states, by the names the API uses)."""

    WAITING = "waiting"
    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"

    @property
    def finished(self) -> bool:
        """True once the study has been told how the trial ended."""
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StopReason(StrEnum):
    """Why a trial stops before its last epoch, as ``report_epoch`` answers it."""

    # Another delivery took the slot over: nothing more may be written for this run.
    LOST = "lost"
    PRUNED = "pruned"
    JOB_CANCELLED = "job cancelled"
    JOB_FAILED = "job failed"
    JOB_SUCCEEDED = "job succeeded"

    @classmethod
    def job_ended(cls, status: str) -> StopReason:
        """The reason for a job that ended with ``status``."""
        return cls(f"job {status}")


# Reasons a trial or a slot carries, in the user's words.
INTERRUPTED = "interrupted (worker lost or infrastructure error); retried"
BUDGET_SPENT = "budget.max_trial_epochs spent"
NEVER_RUN = "never run: the job ended first"
WORKER_LOST = "worker lost"

"""Everything that touches Optuna: studies, samplers, pruners, ask/report/tell, trial records.

One Optuna study per job, in Optuna's own RDB tables (Optuna migrates those itself). Queue
workers use ask/tell, so Optuna's heartbeat does not apply; liveness is tracked by the slot
table (see ``trials.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from tuner_service.adam import AdamConfig
from tuner_service.model_sources.types import HyperParameter
from tuner_service.schemas import JobCreate
from tuner_service.search_space import (
    SearchSpace,
    StagedSampler,
    baseline_params,
    config_from_params,
    fitted_params,
    hyper_defaults,
    suggest_config,
    suggest_model_values,
    to_optuna_params,
)
from tuner_service.staging import open_names, planned_search_trials
from tuner_service.study_tables import (
    STATE_NAMES,
    WARM_ATTR,
    StudyRow,
    fail_if_waiting,
    insert_finished_trials,
    own_complete_rows,
    study_rows,
)

READER_CACHE_SIZE = 256
BASELINE_ATTR = "baseline"
WORKER_ATTR = "worker"
PACK_ATTR = "pack_size"
FAIL_REASON_ATTR = "fail_reason"
WARM_SOURCES_ATTR = "warm_start"  # study attribute: [{"job_id": ..., "trials": n}, ...]

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna wraps database failures in StorageInternalError: infrastructure, not the trial's fault.
STORAGE_ERRORS: tuple[type[Exception], ...] = (optuna.exceptions.StorageInternalError,)


class SearchStopped(Exception):
    """The search cannot go on (e.g. a sampler that this worker cannot run)."""


@dataclass(frozen=True)
class TrialRecord:
    """A trial as stored in the study, in plain data."""

    number: int
    state: str
    config: AdamConfig | None
    value: float | None
    intermediate_values: tuple[float, ...]
    started_at: datetime | None
    finished_at: datetime | None
    fail_reason: str | None
    is_baseline: bool
    worker: str | None
    pack_size: int | None = None  # how many configurations trained with it in one pass

    @property
    def duration_s(self) -> float | None:
        """Wall time of a finished trial."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class AskedTrial:
    """A trial handed out by the study: its number and the Adam numbers to train."""

    number: int
    config: AdamConfig


@dataclass(frozen=True)
class BestConfig:
    """A study's best complete trial."""

    number: int
    value: float
    config: AdamConfig


@dataclass(frozen=True)
class StudySummary:
    """A study's trial counts by state and best trial, read without loading the study."""

    counts: dict[str, int]
    best: BestConfig | None
    fingerprint: tuple[Any, ...]


@dataclass(frozen=True)
class WarmTrial:
    """A complete trial of an earlier job, as a new job's study copies it (warm start)."""

    job_id: str
    number: int
    config: AdamConfig
    value: float
    intermediate_values: tuple[tuple[int, float], ...]  # (epoch, value)


@dataclass(frozen=True)
class WarmSource:
    """An earlier job a study learned from, and how many of its trials it copied."""

    job_id: str
    trials: int


def study_name_for(job_id: str) -> str:
    """Optuna study names are global in a storage: prefix ours."""
    return f"tuner-job-{job_id}"


def make_sampler(spec: JobCreate, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler a job asked for, seeded."""
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "gp":
        if importlib.util.find_spec("torch") is None:
            raise SearchStopped("sampler 'gp' needs PyTorch on the workers: "
                                "pip install 'tuner-service[gp]'")
        return optuna.samplers.GPSampler(seed=seed)
    # Workers ask while others still train: the constant liar scores running trials as bad
    # ones, so concurrent asks spread out instead of handing out near-duplicates.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(spec: JobCreate) -> optuna.pruners.BasePruner:
    """The pruner a job asked for; epochs are its steps."""
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.budget.epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


class StudyStore:
    """Optuna storage of one database, with this process's studies and running trials cached.

    Caching a job's ``Study`` keeps its sampler's random state across trials in one process, so
    one worker draws the same sequence as an in-process ``study.optimize`` with the same seed.
    """

    def __init__(self, url: str, engine_kwargs: dict[str, Any]) -> None:
        self._url = url
        self._engine_kwargs = engine_kwargs
        database = make_url(url)
        self._ask_lock_path = (f"{database.database}.ask-lock"
                               if database.get_backend_name() == "sqlite" and database.database
                               else None)
        self._storage: optuna.storages.RDBStorage | None = None
        self._storage_lock = threading.Lock()
        self._studies: dict[str, optuna.Study] = {}
        self._readers: OrderedDict[str, optuna.Study] = OrderedDict()
        self._readers_lock = threading.Lock()
        self._running: dict[tuple[str, int], optuna.Trial] = {}

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage, created (and its tables migrated) on first use."""
        with self._storage_lock:  # API threads may ask first at once: one storage, one pool
            if self._storage is None:
                self._storage = optuna.storages.RDBStorage(
                    self._url, engine_kwargs=dict(self._engine_kwargs)
                )
            return self._storage

    def close(self) -> None:
        """Close Optuna's connection pool."""
        if self._storage is not None:
            self._storage.remove_session()
            self._storage.engine.dispose()
            self._storage = None
        self._studies.clear()
        self._readers.clear()

    def create(self, study_name: str, spec: JobCreate, warm: Sequence[WarmTrial] = (),
               first: Sequence[AdamConfig] = (),
               hyperparameters: Sequence[HyperParameter] = ()) -> None:
        """Create the job's study with the earlier trials it learns from (``warm``, each inside
        the job's space), then enqueue the paper defaults, ``first`` and the user's configs.
        ``hyperparameters``: a HyperModel's searched ones (the paper defaults' trial keeps
        their defaults)."""
        study = optuna.create_study(
            storage=self.storage, study_name=study_name, direction=spec.objective.direction
        )
        try:
            self._copy(study_name, spec.search_space, warm)
            _enqueue(study, spec, first, hyperparameters)
        except BaseException:
            # Half a study would warm-start nothing and run the wrong trials: none at all.
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=study_name, storage=self.storage)
            raise

    def _copy(self, study_name: str, space: SearchSpace, warm: Sequence[WarmTrial]) -> None:
        """Add the earlier jobs' trials as complete trials of the study (so the sampler and
        the pruner learn from them), and name their jobs on the study."""
        if not warm:
            return
        study_id = self.storage.get_study_id_from_name(study_name)
        copies = [_copied_trial(trial, space) for trial in warm]
        insert_finished_trials(self.storage.engine, study_id, copies)
        sources = Counter(trial.job_id for trial in warm)
        self.storage.set_study_user_attr(study_id, WARM_SOURCES_ATTR, [
            {"job_id": job_id, "trials": n} for job_id, n in sources.items()])

    def delete(self, study_name: str) -> None:
        """Remove a study (used when the job that owns it could not be stored)."""
        with self._readers_lock:
            self._readers.pop(study_name, None)
        optuna.delete_study(study_name=study_name, storage=self.storage)

    def ask(self, study_name: str, spec: JobCreate, seed_offset: int, worker: str,
            hyperparameters: Sequence[HyperParameter] = (), pack_size: int = 1) -> AskedTrial:
        """Hand out the next trial, sample its Adam numbers (and a HyperModel's searched
        ``hyperparameters``), and note who runs it, in a pack of how many. Asked in a row for
        the slots of one pack, the trials differ: TPE's constant liar scores the running ones
        as bad, random and quasi-random samplers draw on."""
        study = self._study(study_name, spec, seed_offset)
        with self._ask_lock():
            try:
                trial = study.ask()
            except optuna.exceptions.UpdateFinishedTrialError:
                # The waiting trial it chose was failed (its job ended) between Optuna listing
                # and taking it; asking again samples a new one, pruned at its first epoch.
                trial = study.ask()
            config = suggest_config(trial, spec.search_space)
            if hyperparameters:
                config = config.with_model_values(suggest_model_values(trial, hyperparameters))
        trial.set_user_attr(WORKER_ATTR, worker)
        trial.set_user_attr(PACK_ATTR, pack_size)
        self._running[(study_name, trial.number)] = trial
        return AskedTrial(number=trial.number, config=config)

    @contextlib.contextmanager
    def _ask_lock(self) -> Iterator[None]:
        """On SQLite, one process at a time may ask.

        Optuna hands out a waiting (enqueued) trial with SELECT ... FOR UPDATE, which SQLite
        ignores: two processes could both take trial 0. PostgreSQL needs no lock.
        """
        if self._ask_lock_path is None:
            yield
            return
        with open(self._ask_lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def report(self, study_name: str, number: int, epoch: int, value: float) -> bool:
        """Record one epoch's objective; True when the pruner says stop."""
        trial = self._running[(study_name, number)]
        trial.report(value, step=epoch)
        return bool(trial.should_prune())

    def tell(self, study_name: str, number: int, state: str, value: float | None,
             reason: str | None = None) -> None:
        """Finish a trial (complete, pruned or fail); a second tell is ignored."""
        study = self._reader(study_name)
        self._running.pop((study_name, number), None)
        if reason:
            self._set_reason(study_name, number, reason)
        optuna_state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
                        "fail": TrialState.FAIL}[state]
        values = value if optuna_state == TrialState.COMPLETE else None
        study.tell(number, values, state=optuna_state, skip_if_finished=True)

    def _set_reason(self, study_name: str, number: int, reason: str) -> None:
        study_id = self.storage.get_study_id_from_name(study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        if not self.storage.get_trial(trial_id).state.is_finished():
            self.storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)

    def state_of(self, study_name: str, number: int) -> str:
        """The state of one trial ("complete", "pruned", "fail", "running", "waiting")."""
        trial = self._reader(study_name).get_trials(deepcopy=False)[number]
        return STATE_NAMES[trial.state]

    def retry_params(self, study_name: str, number: int) -> None:
        """Enqueue a lost trial's parameters again so that its retry trains the same config."""
        study = self._reader(study_name)
        trial = study.get_trials(deepcopy=False)[number]
        kept = {k: v for k, v in trial.user_attrs.items() if k == BASELINE_ATTR}
        study.enqueue_trial(trial.params, user_attrs=kept)

    def summaries(self, specs: dict[str, JobCreate], *, fingerprint: bool = False
                  ) -> dict[str, StudySummary]:
        """Counts and best trial of each study named in ``specs``, in a few SQL statements
        for all of them (list and status pages must not replay whole studies); with
        ``fingerprint``, also what changes whenever the study does."""
        rows = study_rows(self.storage.engine, list(specs), fingerprint=fingerprint)
        return {name: _summary(rows[name], spec) for name, spec in specs.items()}

    def fail_waiting(self, study_name: str, reason: str) -> int:
        """Fail the enqueued trials nobody will run now that the job has ended; returns how
        many. One a worker takes meanwhile runs on (and is pruned at its first epoch, since
        the job has ended), its reason replaced when it is told."""
        study = self._reader(study_name)
        study_id = self.storage.get_study_id_from_name(study_name)
        failed = 0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
                failed += fail_if_waiting(self.storage.engine, trial_id)
        return failed

    def records(self, study_name: str, spec: JobCreate) -> list[TrialRecord]:
        """Every trial the job ran (or will run) as plain records, by number: the trials it
        copied from earlier jobs are theirs, and are left out."""
        return [_record(t, spec) for t in self._reader(study_name).get_trials(deepcopy=False)
                if WARM_ATTR not in t.user_attrs]

    def own_complete_trials(self, job_id: str, study_name: str, spec: JobCreate
                            ) -> list[WarmTrial]:
        """A job's complete trials with a finite value, for another job to warm-start from;
        the trials it copied itself are left out (in SQL: a study holding hundreds of
        copies is not loaded to find its own few), so copies never compound."""
        rows = own_complete_rows(self.storage.engine, study_name)
        return [WarmTrial(job_id, row.number, config, row.value, row.intermediate_values)
                for row in rows if (config := _config_or_none(row.params, spec)) is not None]

    def warm_start_sources(self, study_name: str) -> list[WarmSource]:
        """The earlier jobs a study learned from, in the order they were copied."""
        study_id = self.storage.get_study_id_from_name(study_name)
        stored = self.storage.get_study_user_attrs(study_id).get(WARM_SOURCES_ATTR, [])
        return [WarmSource(source["job_id"], int(source["trials"])) for source in stored]

    def _reader(self, study_name: str) -> optuna.Study:
        """A cached Study for reading: Optuna's cache keeps finished trials and re-reads only
        new and unfinished ones, ~20x cheaper than loading a 200-trial study per request."""
        with self._readers_lock:
            study = self._studies.get(study_name) or self._readers.pop(study_name, None)
            if study is None:
                study = optuna.load_study(study_name=study_name, storage=self.storage)
            if study_name not in self._studies:
                self._readers[study_name] = study
                while len(self._readers) > READER_CACHE_SIZE:
                    self._readers.popitem(last=False)
            return study

    def _study(self, study_name: str, spec: JobCreate, seed_offset: int) -> optuna.Study:
        if study_name not in self._studies:
            self._studies[study_name] = optuna.load_study(
                study_name=study_name,
                storage=self.storage,
                sampler=make_sampler(spec, spec.seed + seed_offset),
                pruner=make_pruner(spec),
            )
            if spec.staging == "playbook":
                _stage(self._studies[study_name], spec)
        return self._studies[study_name]


def _stage(study: optuna.Study, spec: JobCreate) -> None:
    """Wrap the study's sampler in the playbook's stages. Warm-start copies take the study's
    first trial numbers; the stages count the job's own trials."""
    copied = sum(source["trials"] for source in study.user_attrs.get(WARM_SOURCES_ATTR, []))
    planned = planned_search_trials(spec)
    study.sampler = StagedSampler(
        study.sampler, spec.search_space,
        lambda number: open_names(max(0, number - copied), planned))


def _enqueue(study: optuna.Study, spec: JobCreate, first: Sequence[AdamConfig],
             hyperparameters: Sequence[HyperParameter]) -> None:
    """The trials to run first: the paper defaults, ``first``, then the user's."""
    space = spec.search_space
    baseline = baseline_params(space)
    if baseline is not None:
        study.enqueue_trial({**baseline, **hyper_defaults(hyperparameters)},
                            user_attrs={BASELINE_ATTR: True})
    for config in first:
        study.enqueue_trial(fitted_params(config.as_dict(), space)[0])
    for partial in spec.enqueue:
        values = partial.model_dump(exclude_none=True)
        study.enqueue_trial(to_optuna_params(values, space))


def _copied_trial(trial: WarmTrial, space: SearchSpace) -> FrozenTrial:
    params, distributions = fitted_params(trial.config.as_dict(), space)
    return optuna.trial.create_trial(
        params=params, distributions=distributions, value=trial.value,
        intermediate_values=dict(trial.intermediate_values),
        user_attrs={WARM_ATTR: {"job_id": trial.job_id, "number": trial.number}},
    )


def _summary(row: StudyRow, spec: JobCreate) -> StudySummary:
    best = None
    if row.best is not None:
        config = _config_or_none(row.best.params, spec)
        if config is not None:
            best = BestConfig(row.best.number, row.best.value, config)
    return StudySummary(row.counts, best, row.fingerprint)


def _config_or_none(params: dict[str, Any], spec: JobCreate) -> AdamConfig | None:
    """The Adam numbers of a trial's Optuna params plus the spec's fixed numbers; None while
    some searched number has not been sampled yet (an enqueued partial configuration)."""
    try:
        return config_from_params(params, spec.search_space)
    except KeyError:
        return None


def _record(trial: FrozenTrial, spec: JobCreate) -> TrialRecord:
    # A job with every number fixed samples nothing: its params are empty, and its
    # configuration comes from the spec alone.
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    config = _config_or_none(dict(params), spec)
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    steps = sorted(trial.intermediate_values.items())
    return TrialRecord(
        number=trial.number,
        state=STATE_NAMES[trial.state],
        config=config,
        value=value,
        intermediate_values=tuple(v for _, v in steps if math.isfinite(v)),
        started_at=_aware(trial.datetime_start),
        finished_at=_aware(trial.datetime_complete),
        fail_reason=trial.user_attrs.get(FAIL_REASON_ATTR),
        is_baseline=bool(trial.user_attrs.get(BASELINE_ATTR, False)),
        worker=trial.user_attrs.get(WORKER_ATTR),
        pack_size=trial.user_attrs.get(PACK_ATTR),
    )


def _aware(moment: datetime | None) -> datetime | None:
    """Optuna stores naive local times; the API speaks UTC."""
    return moment.astimezone(UTC) if moment is not None else None

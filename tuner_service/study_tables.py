"""Aggregate reads of Optuna's own tables, for pages that must not load whole studies.

Loading a study replays every trial with its parameters and per-epoch values; a job list of 50
jobs did that 50 times per request. These queries read only what a list or a status needs —
trial counts per state, the best complete trial and its parameters, and (for cached reports) a
fingerprint that changes whenever the study does — for many studies in one statement each.

They use Optuna's ORM models (``optuna.storages._rdb.models``), so the column types (enums on
PostgreSQL) match what Optuna wrote; the tests run them against both backends. The statements
are built once: building SQLAlchemy expressions cost more than running them.

Two writes live here too, where Optuna's own API is unsafe (failing a trial only while it
waits) or too slow (a warm start's few hundred finished trials in one transaction).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages._rdb import models as optuna_tables
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import BindParameter, Engine, bindparam, case, exists, func, select

# Optuna's trial states by the names the API uses.
STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "fail",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
_STUDIES = optuna_tables.StudyModel.__table__
_DIRECTIONS = optuna_tables.StudyDirectionModel.__table__
_TRIALS = optuna_tables.TrialModel.__table__
_VALUES = optuna_tables.TrialValueModel.__table__
_PARAMS = optuna_tables.TrialParamModel.__table__
_EPOCHS = optuna_tables.TrialIntermediateValueModel.__table__
_studies, _directions, _trials = _STUDIES.c, _DIRECTIONS.c, _TRIALS.c
_values, _params, _epochs = _VALUES.c, _PARAMS.c, _EPOCHS.c
_NAMES: BindParameter[list[str]] = bindparam("names", expanding=True)
_FINITE = optuna_tables.TrialValueModel.TrialValueType.FINITE
_EPOCH_VALUE = optuna_tables.TrialIntermediateValueModel.stored_repr_to_intermediate_value
_USER_ATTRS = optuna_tables.TrialUserAttributeModel.__table__
_user_attrs = _USER_ATTRS.c

# The user attribute that marks a trial copied from an earlier job (warm start): it belongs
# to that job, so a job's counts and best trial leave it out.
WARM_ATTR = "warm_start_from"
_OWN = ~exists().where(_user_attrs.trial_id == _trials.trial_id, _user_attrs.key == WARM_ATTR)

_COUNTS = (
    select(_studies.study_name, _trials.state, func.count())
    .join_from(_TRIALS, _STUDIES,
               _studies.study_id == _trials.study_id)
    .where(_studies.study_name.in_(_NAMES), _OWN)
    .group_by(_studies.study_name, _trials.state)
)
# The best complete trial per study, the lowest number winning ties (as the API's
# ``best_trial``), picked by a window function over the study's direction; then its params.
_SIGNED = case((_directions.direction == StudyDirection.MINIMIZE, _values.value),
               else_=-_values.value)
_RANKED = (
    select(_studies.study_name, _trials.trial_id, _trials.number, _values.value,
           func.row_number().over(partition_by=_trials.study_id,
                                  order_by=(_SIGNED, _trials.number)).label("rank"))
    .join_from(_TRIALS, _STUDIES,
               _studies.study_id == _trials.study_id)
    .join(_VALUES,
          (_values.trial_id == _trials.trial_id) & (_values.objective == 0))
    .join(_DIRECTIONS,
          (_directions.study_id == _trials.study_id) & (_directions.objective == 0))
    .where(_studies.study_name.in_(_NAMES), _trials.state == TrialState.COMPLETE,
           _values.value_type == _FINITE, _OWN)
    .subquery()
)
_BEST = (
    select(_RANKED.c.study_name, _RANKED.c.number, _RANKED.c.value, _params.param_name,
           _params.param_value, _params.distribution_json)
    .select_from(_RANKED)
    .outerjoin(_PARAMS, _params.trial_id == _RANKED.c.trial_id)
    .where(_RANKED.c.rank == 1)
)
# The newest per-epoch value and the latest end: together with the counts, they change
# whenever a trial starts, reports an epoch or ends. Warm-start copies are left in: they
# never change after the study is created.
_MARKS = (
    select(_studies.study_name, func.max(_epochs.trial_intermediate_value_id),
           func.max(_trials.datetime_complete))
    .join_from(_TRIALS, _STUDIES,
               _studies.study_id == _trials.study_id)
    .outerjoin(_EPOCHS, _epochs.trial_id == _trials.trial_id)
    .where(_studies.study_name.in_(_NAMES))
    .group_by(_studies.study_name)
)


# A study's own complete trials with a finite value, for another job to warm-start from.
_OWN_COMPLETE = (
    select(_trials.trial_id)
    .join_from(_TRIALS, _STUDIES, _studies.study_id == _trials.study_id)
    .join(_VALUES, (_values.trial_id == _trials.trial_id) & (_values.objective == 0))
    .where(_studies.study_name == bindparam("name"), _trials.state == TrialState.COMPLETE,
           _values.value_type == _FINITE, _OWN)
)
_OWN_VALUES = (select(_trials.trial_id, _trials.number, _values.value)
               .join_from(_TRIALS, _VALUES, _values.trial_id == _trials.trial_id)
               .where(_trials.trial_id.in_(_OWN_COMPLETE), _values.objective == 0))
_OWN_PARAMS = (select(_params.trial_id, _params.param_name, _params.param_value,
                      _params.distribution_json)
               .where(_params.trial_id.in_(_OWN_COMPLETE)))
_OWN_EPOCHS = (select(_epochs.trial_id, _epochs.step, _epochs.intermediate_value,
                      _epochs.intermediate_value_type)
               .where(_epochs.trial_id.in_(_OWN_COMPLETE))
               .order_by(_epochs.trial_id, _epochs.step))


@dataclass(frozen=True)
class FinishedRow:
    """A complete trial: number, value, Optuna parameters and per-epoch values."""

    number: int
    value: float
    params: dict[str, Any]
    intermediate_values: tuple[tuple[int, float], ...]  # (step, value)


@dataclass(frozen=True)
class BestRow:
    """The best complete trial of a study: number, value and Optuna parameters."""

    number: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class StudyRow:
    """What a list or status page needs of one study."""

    counts: dict[str, int] = field(default_factory=dict)
    best: BestRow | None = None
    # Only read when asked for (reports): the key of cached renderings.
    fingerprint: tuple[Any, ...] = ()


def study_rows(engine: Engine, study_names: Sequence[str], *, fingerprint: bool = False
               ) -> dict[str, StudyRow]:
    """Counts and best trial (and, if asked, the fingerprint) of each named study."""
    if not study_names:
        return {}
    names = {"names": list(study_names)}
    counts: dict[str, dict[str, int]] = {name: {} for name in study_names}
    best: dict[str, BestRow] = {}
    marks: dict[str, tuple[Any, ...]] = {}
    with engine.connect() as connection:
        for name, state, count in connection.execute(_COUNTS, names):
            counts[name][STATE_NAMES[state]] = int(count)
        for name, number, value, param, internal, distribution in connection.execute(
                _BEST, names):
            row = best.setdefault(name, BestRow(number, float(value), {}))
            if param is not None:
                row.params[param] = _distribution(distribution).to_external_repr(internal)
        if fingerprint:
            marks = {name: (epoch, end) for name, epoch, end in connection.execute(_MARKS, names)}
    return {
        name: StudyRow(counts[name], best.get(name),
                       (tuple(sorted(counts[name].items())), *marks.get(name, ())))
        for name in study_names
    }


def own_complete_rows(engine: Engine, study_name: str) -> list[FinishedRow]:
    """A study's complete trials with a finite value, by number, without those it copied
    from other jobs; three statements, where loading the study would replay it all."""
    name = {"name": study_name}
    with engine.connect() as connection:
        values = {trial_id: (number, float(value))
                  for trial_id, number, value in connection.execute(_OWN_VALUES, name)}
        params: dict[int, dict[str, Any]] = {trial_id: {} for trial_id in values}
        for trial_id, param, internal, distribution in connection.execute(_OWN_PARAMS, name):
            params[trial_id][param] = _distribution(distribution).to_external_repr(internal)
        epochs: dict[int, list[tuple[int, float]]] = {trial_id: [] for trial_id in values}
        for trial_id, step, stored, kind in connection.execute(_OWN_EPOCHS, name):
            epochs[trial_id].append((int(step), _EPOCH_VALUE(stored, kind)))
    rows = [FinishedRow(number, value, params[trial_id], tuple(epochs[trial_id]))
            for trial_id, (number, value) in values.items()]
    return sorted(rows, key=lambda row: row.number)


@functools.lru_cache(maxsize=256)
def _distribution(distribution_json: str) -> BaseDistribution:
    """Parsed once: a study's parameters share a handful of distributions."""
    return json_to_distribution(distribution_json)


def fail_if_waiting(engine: Engine, trial_id: int) -> bool:
    """Fail a trial only if it is still waiting; False when a worker took it meanwhile.

    Optuna's own ``set_trial_state_values`` would fail a trial a worker has just started, so
    this is one conditional update instead of a read and a write.
    """
    with engine.begin() as connection:
        changed = connection.execute(
            _TRIALS.update()
            .where(_trials.trial_id == trial_id, _trials.state == TrialState.WAITING)
            .values(state=TrialState.FAIL,
                    datetime_complete=datetime.now(UTC).replace(tzinfo=None))
        )
    return bool(changed.rowcount == 1)


def insert_finished_trials(engine: Engine, study_id: int, trials: Sequence[FrozenTrial]) -> None:
    """Append finished trials (made by ``optuna.trial.create_trial``, which checks them) to a
    study nobody uses yet, in one transaction, as Optuna's ``add_trials`` would store them.

    ``add_trials`` takes about 20 statements and a commit per trial: 300 trials kept a submit
    waiting for tens of seconds on SQLite. Numbers follow the study's existing trials, and a
    trial Optuna creates later counts these (it numbers itself by the trials before it).
    """
    if not trials:
        return
    with engine.begin() as connection:
        first = connection.scalar(select(func.count()).where(_trials.study_id == study_id)) or 0
        connection.execute(_TRIALS.insert(), [
            {"study_id": study_id, "number": first + index, "state": trial.state,
             "datetime_start": trial.datetime_start, "datetime_complete": trial.datetime_complete}
            for index, trial in enumerate(trials)])
        ids: dict[int, int] = dict(connection.execute(select(_trials.number, _trials.trial_id)
                                      .where(_trials.study_id == study_id,
                                             _trials.number >= first)).all())
        for table, rows in _trial_rows(trials, [ids[first + i] for i in range(len(trials))]):
            if rows:
                connection.execute(table.insert(), rows)


def _trial_rows(trials: Sequence[FrozenTrial], ids: Sequence[int]
                ) -> list[tuple[Any, list[dict[str, Any]]]]:
    """The value, parameter, per-epoch and user attribute rows of trials stored as ``ids``."""
    values, params, epochs, attrs = [], [], [], []
    for trial_id, trial in zip(ids, trials, strict=True):
        if trial.value is not None:
            value, kind = optuna_tables.TrialValueModel.value_to_stored_repr(trial.value)
            values.append({"trial_id": trial_id, "objective": 0, "value": value,
                           "value_type": kind})
        for name, external in trial.params.items():
            distribution = trial.distributions[name]
            params.append({"trial_id": trial_id, "param_name": name,
                           "param_value": distribution.to_internal_repr(external),
                           "distribution_json": distribution_to_json(distribution)})
        for step, reported in trial.intermediate_values.items():
            value, epoch_kind = (optuna_tables.TrialIntermediateValueModel
                                 .intermediate_value_to_stored_repr(reported))
            epochs.append({"trial_id": trial_id, "step": step, "intermediate_value": value,
                           "intermediate_value_type": epoch_kind})
        attrs += [{"trial_id": trial_id, "key": key, "value_json": json.dumps(attr)}
                  for key, attr in trial.user_attrs.items()]
    return [(_VALUES, values), (_PARAMS, params), (_EPOCHS, epochs), (_USER_ATTRS, attrs)]

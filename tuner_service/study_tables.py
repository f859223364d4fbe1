"""Aggregate reads of Optuna's own tables, for pages that must not load whole studies.

Loading a study replays every trial with its parameters and per-epoch values; a job list of 50
jobs did that 50 times per request. These queries read only what a list or a status needs —
trial counts per state, the best complete trial and its parameters, and a fingerprint that
changes whenever the study does — for many studies in one statement each.

They use Optuna's ORM models (``optuna.storages._rdb.models``), so the column types (enums on
PostgreSQL) match what Optuna wrote; the tests run them against both backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.distributions import json_to_distribution
from optuna.storages._rdb import models as optuna_tables
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy import Engine, case, func, select

_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "fail",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
_studies = optuna_tables.StudyModel
_directions = optuna_tables.StudyDirectionModel
_trials = optuna_tables.TrialModel
_values = optuna_tables.TrialValueModel
_params = optuna_tables.TrialParamModel
_epochs = optuna_tables.TrialIntermediateValueModel


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
    # Changes whenever a trial starts, reports an epoch or ends: the key of cached reports.
    fingerprint: tuple[Any, ...] = ()


def study_rows(engine: Engine, study_names: Sequence[str]) -> dict[str, StudyRow]:
    """Counts, best trial and fingerprint of each named study (absent names are left out)."""
    if not study_names:
        return {}
    with engine.connect() as connection:
        ids = dict(connection.execute(
            select(_studies.study_name, _studies.study_id)
            .where(_studies.study_name.in_(study_names))
        ).all())
        if not ids:
            return {}
        counts = _counts(connection, list(ids.values()))
        marks = _marks(connection, list(ids.values()))
        best = _best(connection, list(ids.values()))
    return {
        name: StudyRow(
            counts=counts.get(study_id, {}),
            best=best.get(study_id),
            fingerprint=(tuple(sorted(counts.get(study_id, {}).items())),
                         *marks.get(study_id, (None, None))),
        )
        for name, study_id in ids.items()
    }


def _counts(connection: Any, study_ids: list[int]) -> dict[int, dict[str, int]]:
    rows = connection.execute(
        select(_trials.study_id, _trials.state, func.count())
        .where(_trials.study_id.in_(study_ids))
        .group_by(_trials.study_id, _trials.state)
    )
    counts: dict[int, dict[str, int]] = {}
    for study_id, state, count in rows:
        counts.setdefault(study_id, {})[_STATE_NAMES[state]] = int(count)
    return counts


def _marks(connection: Any, study_ids: list[int]
           ) -> dict[int, tuple[int | None, datetime | None]]:
    """Per study: the newest per-epoch value's id and the latest finish time."""
    newest_epoch = (
        select(_trials.study_id, func.max(_epochs.trial_intermediate_value_id).label("epoch"))
        .join(_epochs, _epochs.trial_id == _trials.trial_id)
        .where(_trials.study_id.in_(study_ids))
        .group_by(_trials.study_id)
    )
    latest_end = (
        # The mapped attribute is a property converting to UTC; the column is what we need.
        select(_trials.study_id, func.max(_trials.__table__.c.datetime_complete))
        .where(_trials.study_id.in_(study_ids))
        .group_by(_trials.study_id)
    )
    epochs = dict(connection.execute(newest_epoch).all())
    ends = dict(connection.execute(latest_end).all())
    return {study_id: (epochs.get(study_id), ends.get(study_id)) for study_id in study_ids}


def _best(connection: Any, study_ids: list[int]) -> dict[int, BestRow]:
    """The best complete trial per study, the lowest number winning ties (as the API's
    ``best_trial``), picked in SQL by a window function over the study's direction."""
    signed = case((_directions.direction == StudyDirection.MINIMIZE, _values.value),
                  else_=-_values.value)
    ranked = (
        select(_trials.study_id, _trials.trial_id, _trials.number, _values.value,
               func.row_number().over(partition_by=_trials.study_id,
                                      order_by=(signed, _trials.number)).label("rank"))
        .join(_values, (_values.trial_id == _trials.trial_id) & (_values.objective == 0))
        .join(_directions, (_directions.study_id == _trials.study_id)
              & (_directions.objective == 0))
        .where(_trials.study_id.in_(study_ids), _trials.state == TrialState.COMPLETE,
               _values.value_type == _values.TrialValueType.FINITE)
        .subquery()
    )
    rows = connection.execute(
        select(ranked.c.study_id, ranked.c.trial_id, ranked.c.number, ranked.c.value)
        .where(ranked.c.rank == 1)
    ).all()
    params = _params_of(connection, [trial_id for _, trial_id, _, _ in rows])
    return {study_id: BestRow(number, float(value), params.get(trial_id, {}))
            for study_id, trial_id, number, value in rows}


def _params_of(connection: Any, trial_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not trial_ids:
        return {}
    rows = connection.execute(
        select(_params.trial_id, _params.param_name, _params.param_value,
               _params.distribution_json)
        .where(_params.trial_id.in_(trial_ids))
    )
    params: dict[int, dict[str, Any]] = {}
    for trial_id, name, internal, distribution in rows:
        value = json_to_distribution(distribution).to_external_repr(internal)
        params.setdefault(trial_id, {})[name] = value
    return params

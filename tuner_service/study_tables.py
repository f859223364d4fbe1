"""Aggregate reads of Optuna's own tables, for pages that must not load whole studies.

Loading a study replays every trial with its parameters and per-epoch values; a job list of 50
jobs did that 50 times per request. These queries read only what a list or a status needs —
trial counts per state, the best complete trial and its parameters, and (for cached reports) a
fingerprint that changes whenever the study does — for many studies in one statement each.

They use Optuna's ORM models (``optuna.storages._rdb.models``), so the column types (enums on
PostgreSQL) match what Optuna wrote; the tests run them against both backends. The statements
are built once: building SQLAlchemy expressions cost more than running them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages._rdb import models as optuna_tables
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy import BindParameter, Engine, bindparam, case, func, select

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

_COUNTS = (
    select(_studies.study_name, _trials.state, func.count())
    .join_from(_TRIALS, _STUDIES,
               _studies.study_id == _trials.study_id)
    .where(_studies.study_name.in_(_NAMES))
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
           _values.value_type == _FINITE)
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
# whenever a trial starts, reports an epoch or ends.
_MARKS = (
    select(_studies.study_name, func.max(_epochs.trial_intermediate_value_id),
           func.max(_trials.datetime_complete))
    .join_from(_TRIALS, _STUDIES,
               _studies.study_id == _trials.study_id)
    .outerjoin(_EPOCHS, _epochs.trial_id == _trials.trial_id)
    .where(_studies.study_name.in_(_NAMES))
    .group_by(_studies.study_name)
)


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

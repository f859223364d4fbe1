"""The report's plotly figures, mostly Optuna's own visualizations.

Optuna's plots take a Study, so the job's trials are replayed into an in-memory study with the
parameters as the sampler sees them (``one_minus_beta_*`` for log-scale betas, ``decay_enabled``):
the same names and scales optuna-dashboard shows for the stored study. Each plot that cannot be
drawn yet (too few trials, a single searched number) becomes a note instead of an error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
import plotly.io
import plotly.offline
from optuna import visualization as vis
from optuna.trial import TrialState, create_trial

from tuner_service.report_schema import ReportPublic
from tuner_service.schemas import JobCreate
from tuner_service.search_space import optuna_distributions, to_optuna_params
from tuner_service.studies import TrialRecord

_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_HEIGHT = 420


@dataclass(frozen=True)
class Plot:
    """One figure of the report: its plotly JSON (drawn by report.js), or why it is not drawn
    yet. Data, not script: the page runs no inline JavaScript, so a strict CSP holds."""

    key: str
    title: str
    how_to_read: str
    figure_json: str | None
    note: str | None = None
    wide: bool = False


@functools.cache
def plotly_js() -> str:
    """plotly.js itself (served once as a cacheable asset, or inlined in a standalone page)."""
    return str(plotly.offline.get_plotlyjs())


def plotly_version() -> str:
    """The plotly.js version, which names its asset so that browsers may cache it forever."""
    return str(plotly.offline.get_plotlyjs_version())


def report_plots(report: ReportPublic, records: Sequence[TrialRecord], spec: JobCreate
                 ) -> list[Plot]:
    """Every plot of the report, in the order the page shows them."""
    study = replay_study(records, spec)
    metric = spec.objective.metric
    importances = _OnceEvaluator()
    other = _contour_partner(study, spec, importances)
    return [
        _plot("history", "Optimization history",
              f"Each dot is a complete trial's final {metric}; the line is the best so far.",
              lambda: vis.plot_optimization_history(study, target_name=metric)),
        _plot("curves", f"Learning curves: top {len(report.top_k)} against the paper defaults",
              f"{metric} after every epoch; the dashed line is Adam's paper defaults.",
              lambda: learning_curves(report)),
        _plot("importances", "Parameter importances",
              f"How much of the variation in {metric} each number explains (fANOVA).",
              lambda: vis.plot_param_importances(study, evaluator=importances,
                                                 target_name=metric)),
        _plot("contour", f"learning_rate against {other or 'another parameter'}",
              f"Interpolated {metric} over the two numbers; dots are trials.",
              lambda: _contour(study, other, metric)),
        _plot("slice", "Each parameter against the objective",
              "One panel per searched number; darker dots are later trials.",
              lambda: vis.plot_slice(study, target_name=metric), wide=True),
        _plot("parallel", "Parallel coordinates",
              "Each line is a complete trial through its numbers, coloured by its objective.",
              lambda: vis.plot_parallel_coordinate(study, target_name=metric), wide=True),
    ]


def replay_study(records: Sequence[TrialRecord], spec: JobCreate) -> optuna.Study:
    """An in-memory study holding the job's complete and pruned trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=spec.objective.direction)
    distributions = optuna_distributions(spec.search_space)
    for record in records:
        if record.state not in _STATES or record.config is None:
            continue
        params = to_optuna_params(record.config.as_dict(), spec.search_space)
        study.add_trial(create_trial(
            state=_STATES[record.state],
            value=record.value if record.state == "complete" else None,
            params=params,
            distributions={name: distributions[name] for name in params},
            intermediate_values=dict(enumerate(record.intermediate_values, start=1)),
        ))
    return study


def learning_curves(report: ReportPublic) -> go.Figure:
    """The top-k trials' per-epoch values, and the paper defaults' dashed."""
    if not report.top_k:
        raise ValueError("no trial has completed yet")
    figure = go.Figure()
    for trial in report.top_k:
        figure.add_trace(go.Scatter(
            x=list(range(1, len(trial.intermediate_values) + 1)), y=trial.intermediate_values,
            mode="lines+markers", name=f"#{trial.rank}: trial {trial.trial_number}"))
    if report.baseline and report.baseline.intermediate_values:
        values = report.baseline.intermediate_values
        figure.add_trace(go.Scatter(
            x=list(range(1, len(values) + 1)), y=values, mode="lines",
            name=f"paper defaults (trial {report.baseline.trial_number})",
            line={"dash": "dash", "color": "black"}))
    every = [v for t in figure.data for v in t.y]
    figure.update_layout(xaxis_title="epoch", yaxis_title=report.objective.metric,
                         yaxis_type="log" if min(every) > 0 else "linear")
    return figure


def _contour(study: optuna.Study, other: str | None, metric: str) -> go.Figure:
    if other is None:
        raise ValueError("learning_rate and at least one other number must be searched")
    return vis.plot_contour(study, params=["learning_rate", other], target_name=metric)


def _contour_partner(study: optuna.Study, spec: JobCreate,
                     evaluator: optuna.importance.BaseImportanceEvaluator) -> str | None:
    """The searched number besides learning_rate that matters most so far (None when
    learning_rate or every other number is fixed)."""
    searched = list(optuna_distributions(spec.search_space))
    others = [name for name in searched if name != "learning_rate"]
    if "learning_rate" not in searched or not others:
        return None
    try:
        with _quiet():
            ranking = list(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError):
        ranking = []  # too few trials to rank: any partner will do until then
    return next((name for name in ranking if name in others), others[0])


class _OnceEvaluator(optuna.importance.BaseImportanceEvaluator):
    """fANOVA with a fixed seed, computed once per page: the importance chart and the
    contour's choice of partner share one result (it was most of a page's build time), and a
    page shows the same ranking on every reload."""

    def __init__(self) -> None:
        # 32 trees, not Optuna's 64: half the time (seconds for a 200-trial job), and the same
        # ranking for a chart that shows which number matters, not the third decimal.
        self._fanova = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=0)
        self._done: dict[object, dict[str, float]] = {}

    def evaluate(self, study: optuna.Study, params: list[str] | None = None, *,
                 target: Callable[[optuna.trial.FrozenTrial], float] | None = None
                 ) -> dict[str, float]:
        key = (tuple(params or ()), target)
        if key not in self._done:
            self._done[key] = self._fanova.evaluate(study, params=params, target=target)
        return self._done[key]


def _plot(key: str, title: str, how_to_read: str, draw: Callable[[], go.Figure],
          wide: bool = False) -> Plot:
    try:
        with _quiet():
            figure = draw()
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return Plot(key, title, how_to_read, None, f"Not drawn yet: {error}", wide)
    if not figure.data:
        return Plot(key, title, how_to_read, None, "Not drawn yet: too few complete trials.",
                    wide)
    # Optuna sizes some figures (slice: 300 px a panel); the page sizes them to the card.
    figure.update_layout(title=None, height=_HEIGHT, width=None, autosize=True,
                         template="plotly_white",
                         margin={"l": 60, "r": 20, "t": 30, "b": 50})
    payload = json.loads(plotly.io.to_json(figure, validate=False))
    payload["config"] = _PLOT_CONFIG
    # Inside <script type="application/json">, "</" could close the element early.
    figure_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return Plot(key, title, how_to_read, figure_json, wide=wide)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna warns about experimental options and skipped trials; the page notes what it
    cannot draw, and the API log should not fill with warnings on every page view."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

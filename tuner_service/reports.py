"""The best-config report: the winner, how far it beats Adam's paper defaults, and how much to
trust it. Every number is computed from the same trial records the trials endpoint serves."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import UTC, datetime

import yaml

from tuner_service import confirmation as confirm
from tuner_service.adam import PAPER_DEFAULTS, PARAM_NAMES, AdamConfig
from tuner_service.confirmation import ConfirmRun
from tuner_service.datasets.catalog import data_line, stamped_data
from tuner_service.db.models import JobModel, aware
from tuner_service.model_sources.resolve import stamped_model
from tuner_service.model_sources.types import ModelDescription
from tuner_service.report_schema import (
    BaselineTrial,
    BestFound,
    ComputeSpent,
    ConfirmationState,
    ConfirmationSummary,
    ConfirmedConfig,
    Improvement,
    ParamSummary,
    RankedTrial,
    ReportPublic,
    Spread,
    SpreadVerdict,
    WarmStartSource,
)
from tuner_service.schemas import (
    TERMINAL_JOB_STATUSES,
    AdamParams,
    BestTrial,
    DataDescription,
    JobCreate,
)
from tuner_service.search_space import ParamRange
from tuner_service.studies import TrialRecord, WarmSource
from tuner_service.views import best_trial, trial_counts

DEFAULT_TOP_K = 5
# Trials within this relative distance of the best count as "as good": below the run-to-run
# noise of a small Keras fit, so a user should not prefer one over another.
NEAR_BEST = 0.05


def build_report(job: JobModel, records: Sequence[TrialRecord],
                 runs: Sequence[ConfirmRun] = (), *, warm: Sequence[WarmSource] = (),
                 top_k: int = DEFAULT_TOP_K, now: datetime | None = None) -> ReportPublic:
    """The report of a job; ``partial`` while it still runs."""
    now = now or datetime.now(UTC)
    spec = JobCreate.model_validate(job.spec)
    minimize = spec.objective.minimize
    best = best_trial(records, minimize)
    baseline = _baseline(records)
    ranked = ranked_trials(records, minimize)
    confirmed = confirm.confirmed(runs)
    plan = confirm.plan_for(spec)
    state = _confirmation_state(job, plan, confirmed)
    chosen = confirm.recommend(confirmed, minimize) if state in ("done", "stopped") else None
    defaults = next((c for c in confirmed if c.is_baseline and c.mean is not None), None)
    comparison = (confirm.compare(chosen, defaults, minimize, spec.objective.metric)
                  if chosen and defaults else None)
    search_improvement = _improvement(best, baseline, minimize)
    recommended = _confirmed_config(chosen) if chosen else None
    snippet_from = recommended or best
    data = stamped_data(spec, job.dataset)
    model = stamped_model(spec.model, job.model)
    return ReportPublic(
        job_id=job.id,
        name=job.name,
        status=job.status,
        partial=job.status not in TERMINAL_JOB_STATUSES,
        generated_at=now,
        objective=spec.objective,
        dataset=data,
        model=model,
        trial_counts=trial_counts(records),
        recommended=recommended,
        confirmed=[_confirmed_config(c) for c in confirmed],
        confirmation=_confirmation_summary(plan, state, chosen, best, comparison),
        best=best,
        baseline=baseline,
        improvement=(_improvement_over(defaults.mean or 0.0, comparison.gain)
                     if comparison and defaults else search_improvement),
        improvement_basis=("confirmed_means" if comparison else
                           "search_values" if search_improvement else None),
        search_improvement=search_improvement,
        parameters=_parameters(spec, best),
        compute=_compute(job, records, runs, now),
        best_found=_best_found(job, records, best),
        top_k=ranked[:top_k],
        spread=_spread(ranked, top_k, confirmed=state == "done"),
        warm_start=[WarmStartSource(job_id=w.job_id, trials=w.trials) for w in warm],
        keras_snippet=(keras_snippet(_snippet_config(snippet_from), data, model)
                       if snippet_from else None),
        job_spec_yaml=job_spec_yaml(spec),
        message=_message(job, best, baseline),
    )


def ranked_trials(records: Sequence[TrialRecord], minimize: bool) -> list[RankedTrial]:
    """Complete trials from best to worst, ties to the lower number (as ``best_trial``)."""
    complete = [r for r in records if r.state == "complete" and r.value is not None and r.config]
    sign = 1.0 if minimize else -1.0
    complete.sort(key=lambda r: (sign * (r.value or 0.0), r.number))
    best_value = complete[0].value if complete else None
    return [_ranked(rank, r, best_value or 0.0) for rank, r in enumerate(complete, start=1)]


def _ranked(rank: int, record: TrialRecord, best_value: float) -> RankedTrial:
    assert record.value is not None and record.config is not None
    return RankedTrial(
        rank=rank,
        trial_number=record.number,
        value=record.value,
        gap_to_best=_gap(record.value, best_value),
        params=AdamParams(**record.config.as_dict()),
        hyperparameters=record.config.model_values,
        intermediate_values=list(record.intermediate_values),
    )


def _gap(value: float, best: float) -> float:
    if value == best:
        return 0.0
    return abs(value - best) / abs(best) if best != 0 else float("inf")


def _baseline(records: Sequence[TrialRecord]) -> BaselineTrial | None:
    """The paper-defaults trial: its completed run, else its latest attempt."""
    runs = [r for r in records if r.is_baseline and r.config is not None]
    if not runs:
        return None
    record = next((r for r in runs if r.state == "complete"), runs[-1])
    assert record.config is not None
    return BaselineTrial(
        trial_number=record.number,
        state=record.state,
        value=record.value,
        params=AdamParams(**record.config.as_dict()),
        intermediate_values=list(record.intermediate_values),
    )


def _improvement(best: BestTrial | None, baseline: BaselineTrial | None, minimize: bool
                 ) -> Improvement | None:
    if best is None or baseline is None or baseline.value is None:
        return None
    gain = baseline.value - best.value if minimize else best.value - baseline.value
    return _improvement_over(baseline.value, gain)


def _improvement_over(base: float, gain: float) -> Improvement:
    """A gain over the defaults' value ``base``, also relative to it (none when it is 0)."""
    relative = gain / abs(base) if base != 0 else None
    return Improvement(absolute=gain, relative=relative,
                       percent=100 * relative if relative is not None else None)


def _parameters(spec: JobCreate, best: BestTrial | None) -> list[ParamSummary]:
    defaults = PAPER_DEFAULTS.as_dict()
    summaries = []
    for name in PARAM_NAMES:
        param = spec.search_space.param(name)
        searched = param if isinstance(param, ParamRange) else None
        summaries.append(ParamSummary(
            name=name,
            best=getattr(best.params, name) if best else None,
            paper_default=defaults[name],
            fixed=searched is None,
            searched=searched,
        ))
    return summaries


def _confirmation_state(job: JobModel, plan: confirm.ConfirmPlan | None,
                        confirmed: Sequence[confirm.Confirmed]) -> ConfirmationState:
    if not confirmed:
        if plan is None:
            return "off"
        return "stopped" if job.status in TERMINAL_JOB_STATUSES else "searching"
    if all(c.ended == c.runs for c in confirmed):
        return "done"
    return "stopped" if job.status in TERMINAL_JOB_STATUSES else "running"


def _confirmed_config(candidate: confirm.Confirmed) -> ConfirmedConfig:
    return ConfirmedConfig(
        params=AdamParams(**candidate.config.as_dict()),
        hyperparameters=candidate.config.model_values, mean=candidate.mean, sd=candidate.sd,
        values=list(candidate.values), seeds=list(candidate.seeds),
        source_trial=candidate.source_trial, is_baseline=candidate.is_baseline,
        search_value=candidate.search_value, runs=candidate.runs, runs_ended=candidate.ended)


def _confirmation_summary(plan: confirm.ConfirmPlan | None, state: ConfirmationState,
                          chosen: confirm.Confirmed | None, best: BestTrial | None,
                          comparison: confirm.Comparison | None) -> ConfirmationSummary:
    differs = (chosen.source_trial != best.trial_number
               if chosen is not None and best is not None else None)
    statement = comparison.statement if comparison else _confirmation_note(state, chosen)
    return ConfirmationSummary(
        state=state,
        top_k=plan.top_k if plan else None, seeds=plan.seeds if plan else None,
        p_value=comparison.p_value if comparison else None,
        larger_than_noise=comparison.larger_than_noise if comparison else None,
        differs_from_search_best=differs, statement=statement)


def _confirmation_note(state: ConfirmationState, chosen: confirm.Confirmed | None) -> str | None:
    if state == "off":
        return ("Not confirmed: the best is one search-time run (set confirm: {top_k, seeds} "
                "to re-train the top configurations with fresh seeds).")
    if state == "searching":
        return "The top configurations are re-trained with fresh seeds when the search ends."
    if state == "running":
        return "Re-training the top configurations and the paper defaults with fresh seeds."
    if chosen is None:
        return "No confirmation run completed."
    return "The paper defaults were not confirmed, so there is nothing to compare with."


def _compute(job: JobModel, records: Sequence[TrialRecord], runs: Sequence[ConfirmRun],
             now: datetime) -> ComputeSpent:
    started, finished = aware(job.started_at), aware(job.finished_at)
    return ComputeSpent(
        trial_epochs=(sum(len(r.intermediate_values) for r in records)
                      + sum(len(r.history) for r in runs)),
        confirm_epochs=sum(len(r.history) for r in runs),
        # A pack of K trials shares one worker's time: each trial counts its K-th of it.
        worker_seconds=(sum(_seconds_so_far(r, now) / (r.pack_size or 1) for r in records)
                        + sum(r.seconds(now) for r in runs)),
        largest_pack=max((r.pack_size or 1 for r in records), default=1),
        wall_seconds=((finished or now) - started).total_seconds() if started else None,
    )


def _seconds_so_far(record: TrialRecord, now: datetime) -> float:
    if record.duration_s is not None:
        return record.duration_s
    if record.state == "running" and record.started_at is not None:
        return max(0.0, (now - record.started_at).total_seconds())
    return 0.0


def _best_found(job: JobModel, records: Sequence[TrialRecord], best: BestTrial | None
                ) -> BestFound | None:
    """Where the best trial sits among trials in the order they ended."""
    if best is None:
        return None
    ended = sorted((r for r in records if r.finished_at is not None),
                   key=lambda r: (r.finished_at, r.number))
    position = next(i for i, r in enumerate(ended) if r.number == best.trial_number)
    finished_at = ended[position].finished_at
    started = aware(job.started_at)
    return BestFound(
        trial_number=best.trial_number,
        finished_at=finished_at,
        after_trials=position + 1,
        after_trial_epochs=sum(len(r.intermediate_values) for r in ended[: position + 1]),
        after_seconds=(finished_at - started).total_seconds()
        if finished_at and started else None,
    )


def _spread(ranked: Sequence[RankedTrial], top_k: int, *, confirmed: bool) -> Spread | None:
    """The top-k values and settings side by side, read as a plateau or a lone spike."""
    if not ranked:
        return None
    top = ranked[:top_k]
    values = [t.value for t in top]
    near = sum(1 for t in ranked if t.gap_to_best <= NEAR_BEST)
    verdict, explanation = _verdict(len(ranked), near, confirmed)
    best = values[0]
    return Spread(
        k=len(top),
        best=best,
        worst=values[-1],
        median=statistics.median(values),
        relative_range=_gap(values[-1], best) if best != 0 else None,
        near_best=near,
        param_ranges={
            name: (min(getattr(t.params, name) for t in top),
                   max(getattr(t.params, name) for t in top))
            for name in PARAM_NAMES
        },
        verdict=verdict,
        explanation=explanation,
    )


def _verdict(complete: int, near: int, confirmed: bool) -> tuple[SpreadVerdict, str]:
    if complete < 3:
        return "too_few_trials", (f"Only {complete} trial(s) completed: too few to tell a "
                                  "plateau from a lucky spike.")
    if near >= 3:
        return "plateau", (f"{near} configurations score within {NEAR_BEST:.0%} of the best: "
                           "a plateau, so the best is not a lucky draw.")
    if near == 2:
        return "narrow", (f"One other configuration scores within {NEAR_BEST:.0%} of the best: "
                          "a narrow optimum; compare the two before trusting either.")
    then = ("; the recommendation comes from re-training the top configurations on fresh "
            "seeds." if confirmed else "; re-run it with another seed before relying on it.")
    return "spike", (f"No other configuration comes within {NEAR_BEST:.0%} of the best: it may "
                     f"be a lucky spike{then}")


def _message(job: JobModel, best: BestTrial | None, baseline: BaselineTrial | None
             ) -> str | None:
    if best is None:
        return "No trial has completed yet." if job.status not in TERMINAL_JOB_STATUSES else (
            f"No trial completed. {job.error or ''}".strip())
    if baseline is None:
        return "Adam's paper defaults lie outside the search space, so no baseline was run."
    if baseline.value is None:
        return f"The paper-defaults trial did not complete ({baseline.state})."
    return None


def job_spec_yaml(spec: JobCreate) -> str:
    """The job's full spec, every default written out, so it runs again the same way."""
    # Flow style for the innermost mappings keeps each range on one line: {low: .., high: ..}.
    body = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False,
                          default_flow_style=None)
    return f"# Run it again:  tuner submit job.yaml --wait\n{body}"


# How the job's trials compiled their model, by target kind (workers/training.py).
_COMPILE = {
    "classes": ('keras.losses.SparseCategoricalCrossentropy(from_logits=True)',
                '["accuracy"]'),
    "values": ('"mean_squared_error"', '["mean_absolute_error"]'),
}


def _snippet_config(chosen: ConfirmedConfig | BestTrial) -> AdamConfig:
    return AdamConfig.from_stored(
        {**chosen.params.model_dump(), "hyperparameters": chosen.hyperparameters})


def keras_snippet(config: AdamConfig, data: DataDescription,
                  model: ModelDescription | None = None) -> str:
    """Copy-paste Keras 3 code that builds this optimizer (decay as InverseTimeDecay) and
    compiles a model with it as the trials did, naming the data set it was tuned on and, for
    a file or a plugin, the model (a HyperModel at the configuration's hyperparameters)."""
    loss, metrics = _COMPILE[data.target.kind]
    if model is not None and model.outputs == "probabilities":
        loss = loss.replace("from_logits=True", "from_logits=False")
    lr = repr(config.learning_rate)
    if config.decay > 0:
        lr_line = (
            "# Keras 3's Adam ignores decay=; lr / (1 + decay * step) is this schedule:\n"
            "learning_rate = keras.optimizers.schedules.InverseTimeDecay(\n"
            f"    initial_learning_rate={config.learning_rate!r}, decay_steps=1, "
            f"decay_rate={config.decay!r}\n)\n"
        )
        lr = "learning_rate"
    else:
        lr_line = ""
    return (
        f"# Tuned on {data_line(data)}\n"
        "import keras\n\n"
        f"{model_lines(model, config) if model is not None else ''}"
        f"{lr_line}"
        "optimizer = keras.optimizers.Adam(\n"
        f"    learning_rate={lr},\n"
        f"    beta_1={config.beta_1!r},\n"
        f"    beta_2={config.beta_2!r},\n"
        f"    epsilon={config.epsilon!r},\n"
        ")\n"
        f"model.compile(optimizer=optimizer, loss={loss}, metrics={metrics})\n"
    )


def model_lines(model: ModelDescription, config: AdamConfig) -> str:
    """How the snippet gets the tuned model: the uploaded file, or the plugin (a HyperModel
    built at the configuration's hyperparameters, the others at their defaults)."""
    if model.source == "file":
        return (f"# The model file {model.name!r} (sha256 {(model.sha256 or '')[:12]}...)\n"
                f"model = keras.saving.load_model({(model.name + '.keras')!r})\n\n")
    if model.source != "plugin":
        return ""
    origin = f" ({model.package} {model.version})" if model.package else ""
    if model.kind != "hypermodel":
        return f"# The plugin model {model.name!r}{origin}, built as the workers build it\n\n"
    values = {hp.name: hp.default for hp in model.hyperparameters if hp.kind != "fixed"}
    values.update(config.model_values)
    fixed = "".join(f"hp.Fixed({name!r}, {value!r})\n" for name, value in values.items())
    return (f"# The HyperModel {model.name!r}{origin} at the tuned hyperparameters\n"
            "import keras_tuner\n\n"
            "hp = keras_tuner.HyperParameters()\n"
            f"{fixed}"
            "model = hypermodel.build(hp)  # hypermodel: your HyperModel instance\n\n")

"""The best-config report as the API serves it (JSON); the HTML page renders the same model."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tuner_service.adam import HyperValue
from tuner_service.model_sources.types import ModelDescription
from tuner_service.schemas import (
    AdamParams,
    BestTrial,
    DataDescription,
    JobStatus,
    Objective,
    TrialCounts,
    TrialState,
)
from tuner_service.search_space import ParamRange

SpreadVerdict = Literal["plateau", "narrow", "spike", "too_few_trials"]


class ParamSummary(BaseModel):
    """One Adam number of the best configuration, with where it was searched."""

    name: str
    best: float | None = Field(description="The best trial's value; null before one completes")
    paper_default: float
    fixed: bool = Field(description="True when the job fixed this number instead of searching")
    searched: ParamRange | None = Field(description="The searched range; null when fixed")


class BaselineTrial(BaseModel):
    """The trial that ran Adam's paper defaults."""

    trial_number: int
    state: TrialState
    value: float | None
    params: AdamParams
    intermediate_values: list[float]


class Improvement(BaseModel):
    """How much the best trial beats the paper defaults; positive is better."""

    absolute: float
    relative: float | None = Field(description="absolute / |defaults value|; null when that is 0")
    percent: float | None


class ComputeSpent(BaseModel):
    """What the job has cost so far."""

    trial_epochs: int = Field(description="Epochs trained over all trials (pruned ones too) "
                              "and confirmation runs")
    confirm_epochs: int = Field(default=0, description="Of those, the confirmation runs'")
    worker_seconds: float = Field(description="Sum of trial durations (a trial trained in a "
                                  "pack of K counts a K-th of its time); running trials so far")
    largest_pack: int = Field(default=1, description="Most trials trained together in one "
                              "pass (1: one at a time)")
    wall_seconds: float | None = Field(description="From the job's start to its end (or now)")


class BestFound(BaseModel):
    """When the best trial was found, in the order trials ended."""

    trial_number: int
    finished_at: datetime | None
    after_trials: int = Field(description="Trials ended up to and including the best one")
    after_trial_epochs: int = Field(description="Trial-epochs spent up to the best one")
    after_seconds: float | None = Field(description="Seconds from the job's start")


class RankedTrial(BaseModel):
    """One of the top-k complete trials."""

    rank: int
    trial_number: int
    value: float
    gap_to_best: float = Field(description="|value - best| / |best|; 0 for the best itself")
    params: AdamParams
    hyperparameters: dict[str, HyperValue] = Field(
        default_factory=dict, description="A HyperModel's searched hyperparameters")
    intermediate_values: list[float]


class Spread(BaseModel):
    """How much to trust the best: is it a lone spike or the top of a plateau?"""

    k: int = Field(description="How many top trials these numbers cover")
    best: float
    worst: float
    median: float
    relative_range: float | None = Field(description="(worst - best) / |best| over the top k")
    near_best: int = Field(description="Complete trials within 5 % of the best value")
    param_ranges: dict[str, tuple[float, float]] = Field(
        description="Smallest and largest value of each Adam number over the top k")
    verdict: SpreadVerdict
    explanation: str


ConfirmationState = Literal["off", "searching", "running", "done", "stopped"]


class ConfirmedConfig(BaseModel):
    """A configuration re-trained with fresh seeds: its values over them, and where the search
    found it."""

    params: AdamParams
    hyperparameters: dict[str, HyperValue] = Field(
        default_factory=dict, description="A HyperModel's searched hyperparameters")
    mean: float | None = Field(description="Mean over the seeds that completed")
    sd: float | None = Field(description="Sample standard deviation; null below two values")
    values: list[float] = Field(description="Each completed seed's value")
    seeds: list[int] = Field(description="The seeds of those values")
    source_trial: int | None = Field(description="The search trial it came from")
    is_baseline: bool = Field(description="True for Adam's paper defaults")
    search_value: float | None = Field(
        description="Its search-time value (one run, with the search's seed)")
    runs: int
    runs_ended: int


class ConfirmationSummary(BaseModel):
    """Where confirmation stands, and how sure the recommendation is."""

    state: ConfirmationState = Field(
        description="off: not asked for (or auto on a small job); searching: the search still "
        "runs; running: confirmation runs are under way; done; stopped: the job ended first")
    top_k: int | None
    seeds: int | None
    test: Literal["welch_t"] = Field(
        default="welch_t", description="Welch's t-test (two-sided, unequal variances) of the "
        "recommendation's values against the paper defaults'")
    p_value: float | None
    larger_than_noise: bool | None = Field(
        description="True when the recommendation beats the defaults by more than the seed "
        "noise (p < 0.05)")
    differs_from_search_best: bool | None = Field(
        description="True when the recommendation is not the search's best trial")
    statement: str | None


class WarmStartSource(BaseModel):
    """An earlier job whose completed trials the search started from."""

    job_id: str
    trials: int = Field(description="How many of its trials were copied")


class ReportPublic(BaseModel):
    """The best-config report of a job (partial while it runs)."""

    job_id: str
    name: str
    status: JobStatus
    partial: bool
    generated_at: datetime
    objective: Objective
    dataset: DataDescription | None = Field(
        default=None, description="What the job trained on: for an upload its name, "
        "sha256 and size, as they were at submit")
    model: ModelDescription | None = Field(
        default=None, description="What the job trained: a built-in, an uploaded file (its "
        "name and sha256) or a plugin (its package and version), as it was at submit")
    trial_counts: TrialCounts
    recommended: ConfirmedConfig | None = Field(
        description="The confirmed configuration with the best mean over fresh seeds; null "
        "until confirmation is done (or when it is off: then use best)")
    confirmed: list[ConfirmedConfig] = Field(
        description="Every confirmed candidate, the paper defaults included")
    confirmation: ConfirmationSummary
    best: BestTrial | None = Field(description="The search-time best trial (one seed)")
    baseline: BaselineTrial | None
    improvement: Improvement | None = Field(
        description="Over the paper defaults: from the confirmed means once confirmation is "
        "done (see improvement_basis), else from the search-time values")
    improvement_basis: Literal["confirmed_means", "search_values"] | None
    search_improvement: Improvement | None = Field(
        description="The search-time best over the search-time defaults trial")
    parameters: list[ParamSummary]
    compute: ComputeSpent
    best_found: BestFound | None
    top_k: list[RankedTrial]
    spread: Spread | None
    warm_start: list[WarmStartSource] = Field(
        description="The earlier jobs the search learned from (their trials are not counted "
        "as this job's)")
    keras_snippet: str | None
    job_spec_yaml: str
    message: str | None

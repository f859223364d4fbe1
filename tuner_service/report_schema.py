"""The best-config report as the API serves it (JSON); the HTML page renders the same model."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from tuner_service.schemas import (
    AdamParams,
    BestTrial,
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

    trial_epochs: int = Field(description="Epochs trained over all trials (pruned ones too)")
    worker_seconds: float = Field(description="Sum of trial durations; running trials so far")
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


class ReportPublic(BaseModel):
    """The best-config report of a job (partial while it runs)."""

    job_id: str
    name: str
    status: JobStatus
    partial: bool
    generated_at: datetime
    objective: Objective
    trial_counts: TrialCounts
    best: BestTrial | None
    baseline: BaselineTrial | None
    improvement: Improvement | None
    parameters: list[ParamSummary]
    compute: ComputeSpent
    best_found: BestFound | None
    top_k: list[RankedTrial]
    spread: Spread | None
    keras_snippet: str | None
    job_spec_yaml: str
    message: str | None

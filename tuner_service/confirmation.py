"""Confirmation: re-train the search's top configurations and the paper defaults with fresh
seeds, and recommend the best mean rather than the luckiest single draw.

A search scores every configuration with one seed (the same initial weights and batch order
for all), so its best trial is the luckiest of many noisy draws. When the search ends, the
top-k distinct configurations and the paper defaults are each trained again with ``seeds``
fresh seeds (new initial weights and batch order on the same train/validation split), as
confirm slots that workers run like any other. Plain logic here; the slots live in
``trials.py``, the numbers in the report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.schemas import Confirm, JobCreate

if TYPE_CHECKING:  # studies imports staging, which plans with this module
    from tuner_service.studies import TrialRecord

# ``auto``: about this share of the job's trial budget goes to confirmation, and jobs of
# fewer trials than AUTO_MIN_TRIALS are not confirmed: two candidates and the defaults on two
# seeds are six runs, 30 % of a 20-trial job. Measured (bench/quality.py, 2026-11-27): on a
# 10-trial budget they left the search 4 trials, and its pick fell to the paper defaults.
AUTO_SHARE = 0.2
AUTO_MIN_TRIALS = 20
AUTO_MAX_TOP_K = 5
# Seeds of confirmation runs are drawn far from the job seeds users pick (0, 1, 2, ...).
SEED_STRIDE = 104_729
SEED_BASE = 1_000_003
# Welch's t-test level below which a difference counts as larger than the seed noise.
ALPHA = 0.05


@dataclass(frozen=True)
class ConfirmPlan:
    """How many distinct top configurations to confirm, with how many fresh seeds each."""

    top_k: int
    seeds: int
    epochs: int

    @property
    def runs(self) -> int:
        """Most runs confirmation may take: the candidates and the paper defaults."""
        return (self.top_k + 1) * self.seeds

    @property
    def reserve(self) -> int:
        """Most trial-epochs confirmation may take."""
        return self.runs * self.epochs


def search_trials(spec: JobCreate) -> int:
    """How many full trials the job's budget pays for: n_trials, or fewer when
    max_trial_epochs is the tighter limit."""
    budget = spec.budget
    if budget.max_trial_epochs is None:
        return budget.n_trials
    return min(budget.n_trials, budget.max_trial_epochs // budget.epochs)


def plan_for(spec: JobCreate) -> ConfirmPlan | None:
    """The job's confirmation plan; None when it has none (``false``, or ``auto`` on a small
    job)."""
    epochs = spec.budget.epochs
    if isinstance(spec.confirm, Confirm):
        return ConfirmPlan(spec.confirm.top_k, spec.confirm.seeds, epochs)
    if spec.confirm is False:
        return None
    trials = search_trials(spec)
    if trials < AUTO_MIN_TRIALS:
        return None
    seeds = 2 if trials < 100 else 3
    top_k = round(AUTO_SHARE * trials / seeds) - 1
    return ConfirmPlan(min(AUTO_MAX_TOP_K, max(2, top_k)), seeds, epochs)


def search_epoch_budget(spec: JobCreate) -> int | None:
    """The trial-epochs the search may spend: max_trial_epochs less what confirmation may
    take, since confirmation counts in the job's compute; None when there is no such cap."""
    cap = spec.budget.max_trial_epochs
    if cap is None:
        return None
    plan = plan_for(spec)
    return cap - (plan.reserve if plan else 0)


def plan_problems(spec: JobCreate) -> list[tuple[tuple[str | int, ...], str]]:
    """A confirmation that leaves the search no budget, as (field, message)."""
    plan, cap = plan_for(spec), spec.budget.max_trial_epochs
    if plan is None or cap is None or cap - plan.reserve >= spec.budget.epochs:
        return []
    return [(("confirm",), f"confirmation may take {plan.reserve} trial-epochs ((top_k + 1) x "
             f"seeds x epochs = {plan.top_k + 1} x {plan.seeds} x {plan.epochs}), which leaves "
             f"budget.max_trial_epochs ({cap}) no room for a search trial; raise the budget, "
             "lower top_k or seeds, or set confirm: false")]


def confirm_seed(job_seed: int, index: int) -> int:
    """The fresh seed of confirmation seed ``index`` (0-based): never the search's seed, and
    the same for every candidate, so candidates are compared on equal draws."""
    return (SEED_BASE + job_seed * 7919 + SEED_STRIDE * (index + 1)) % (2**31 - 1)


@dataclass(frozen=True)
class Candidate:
    """A configuration to confirm, and where the search found it."""

    config: AdamConfig
    is_baseline: bool
    source_trial: int | None
    search_value: float | None


def pick_candidates(records: Sequence[TrialRecord], spec: JobCreate, plan: ConfirmPlan
                    ) -> list[Candidate]:
    """The search's top-k distinct complete configurations, best first, then the paper
    defaults (when the search space holds them); empty when no trial completed."""
    sign = 1.0 if spec.objective.minimize else -1.0
    complete = sorted((r for r in records if r.state == "complete" and r.value is not None
                       and r.config is not None),
                      key=lambda r: (sign * (r.value or 0.0), r.number))
    if not complete:
        return []
    chosen: list[Candidate] = []
    for record in complete:
        assert record.config is not None
        config = record.config
        # The baseline trial is confirmed as the paper defaults below (a HyperModel's at
        # its defaults too, which its configuration then names).
        if (record.is_baseline or config.is_close_to(PAPER_DEFAULTS)
                or any(config.is_close_to(c.config) for c in chosen)):
            continue
        chosen.append(Candidate(config, False, record.number, record.value))
        if len(chosen) == plan.top_k:
            break
    if spec.search_space.contains(PAPER_DEFAULTS):
        baseline = next((r for r in records if r.is_baseline and r.state == "complete"), None)
        chosen.append(Candidate(PAPER_DEFAULTS, True, baseline.number if baseline else None,
                                baseline.value if baseline else None))
    return chosen


@dataclass(frozen=True)
class ConfirmRun:
    """One confirmation run as stored: which candidate, which seed, and how it ended."""

    slot: int
    candidate: int
    is_baseline: bool
    source_trial: int | None
    search_value: float | None
    config: AdamConfig
    seed: int
    state: str  # waiting, running, complete, fail, pruned (stopped: the job ended)
    value: float | None
    history: tuple[float, ...]
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    def seconds(self, now: datetime) -> float:
        """Wall time so far: to its end, or to ``now`` while it runs."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at or (now if self.state == "running" else self.started_at)
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True)
class Confirmed:
    """A candidate's confirmation: its values over the fresh seeds."""

    candidate: int
    config: AdamConfig
    is_baseline: bool
    source_trial: int | None
    search_value: float | None
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    runs: int
    ended: int

    @property
    def failed(self) -> int:
        """Ended runs without a value (diverged, failed, stopped)."""
        return self.ended - len(self.values)

    @property
    def mean(self) -> float | None:
        """Mean over the seeds that completed."""
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation over the seeds (None below two values)."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def confirmed(runs: Sequence[ConfirmRun]) -> list[Confirmed]:
    """Runs grouped by candidate, in candidate order."""
    by_candidate: dict[int, list[ConfirmRun]] = {}
    for run in sorted(runs, key=lambda r: r.slot):
        by_candidate.setdefault(run.candidate, []).append(run)
    out = []
    for candidate, group in sorted(by_candidate.items()):
        first = group[0]
        done = [r for r in group if r.state == "complete" and r.value is not None]
        out.append(Confirmed(
            candidate=candidate, config=first.config, is_baseline=first.is_baseline,
            source_trial=first.source_trial, search_value=first.search_value,
            values=tuple(r.value for r in done if r.value is not None),
            seeds=tuple(r.seed for r in done),
            runs=len(group), ended=sum(r.state in ("complete", "fail", "pruned") for r in group),
        ))
    return out


def recommend(candidates: Sequence[Confirmed], minimize: bool) -> Confirmed | None:
    """The candidate with the best mean; one whose every seed completed beats one that lost
    a seed (a configuration that diverges on some seeds is not one to hand a user)."""
    scored = [c for c in candidates if c.mean is not None]
    if not scored:
        return None
    sign = 1.0 if minimize else -1.0
    return min(scored, key=lambda c: (c.failed > 0, sign * (c.mean or 0.0), c.candidate))


@dataclass(frozen=True)
class Comparison:
    """The recommendation against the paper defaults, both over fresh seeds."""

    gain: float  # positive: the recommendation is better
    p_value: float | None
    larger_than_noise: bool | None
    statement: str


def compare(best: Confirmed, defaults: Confirmed, minimize: bool, metric: str) -> Comparison:
    """How far the recommendation beats the defaults, and whether that exceeds the seed
    noise by Welch's t-test (two-sided, unequal variances)."""
    assert best.mean is not None and defaults.mean is not None
    gain = defaults.mean - best.mean if minimize else best.mean - defaults.mean
    head = (f"Over fresh seeds, {metric} {_pm(best)} for the recommendation against "
            f"{_pm(defaults)} for the paper defaults")
    if best is defaults or best.candidate == defaults.candidate:
        return Comparison(0.0, None, None, f"{head}: the paper defaults are the recommendation;"
                          " no configuration the search found beat them once re-trained.")
    p_value = welch_p_value(best.values, defaults.values)
    if p_value is None:
        return Comparison(gain, None, None, f"{head}. Too few completed seeds for Welch's "
                          "t-test: the difference cannot be told from the seed noise.")
    verdict = (f"Welch's t-test: p = {p_value:.2g} < {ALPHA}, so the difference is larger "
               "than the seed noise." if p_value < ALPHA and gain > 0 else
               f"Welch's t-test: p = {p_value:.2g}, so the difference is not clearly larger "
               "than the seed noise; do not count on it.")
    return Comparison(gain, p_value, p_value < ALPHA and gain > 0, f"{head}. {verdict}")


def _pm(candidate: Confirmed) -> str:
    sd = f" ± {candidate.sd:.4g}" if candidate.sd is not None else ""
    return f"{candidate.mean:.4g}{sd} (n = {len(candidate.values)})"


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None when either side has under two values.
    Two samples without any spread are equal (p = 1) or clearly apart (p = 0)."""
    if len(a) < 2 or len(b) < 2:
        return None
    var_a, var_b = statistics.variance(a), statistics.variance(b)
    mean_gap = statistics.fmean(a) - statistics.fmean(b)
    if var_a == 0 and var_b == 0:
        return 1.0 if mean_gap == 0 else 0.0
    from scipy import stats  # scipy is heavy; only reports need it

    result = stats.ttest_ind(a, b, equal_var=False)
    p_value = float(result.pvalue)
    return p_value if math.isfinite(p_value) else None

"""Budget-aware staging of the search, after Google's deep learning tuning playbook.

With few trials, searching five Adam numbers at once spreads them thin; the playbook tunes the
learning rate first, then beta_1, then epsilon (and here decay), and beta_2 last, and leaves the
later ones at their defaults when the budget is small. ``staging: playbook`` does that: the
search's trials are cut into stages of at least ``MIN_STAGE_TRIALS`` each, stage k opens the
first k groups below, and a number whose stage has not opened yet is held at Adam's paper
default. A small job never opens the later stages at all.

Plain logic (no Optuna): ``search_space.StagedSampler`` applies it.
"""

from __future__ import annotations

from tuner_service.confirmation import search_epoch_budget
from tuner_service.schemas import JobCreate

PLAYBOOK_ORDER: tuple[tuple[str, ...], ...] = (
    ("learning_rate",),
    ("beta_1",),
    ("epsilon", "decay"),
    ("beta_2",),
)
MIN_STAGE_TRIALS = 10


def stage_count(search_trials: int) -> int:
    """How many stages a search of ``search_trials`` trials has room for."""
    return max(1, min(len(PLAYBOOK_ORDER), search_trials // MIN_STAGE_TRIALS))


def open_names(trial_index: int, search_trials: int) -> frozenset[str]:
    """The Adam numbers searched at the job's ``trial_index``-th own trial (0-based); the
    others stay at the paper defaults. Past the planned trials (a pruned search that starts
    more), every stage it has room for is open."""
    stages = stage_count(search_trials)
    per_stage = max(1, search_trials // stages)
    opened = min(stages, trial_index // per_stage + 1)
    return frozenset(name for group in PLAYBOOK_ORDER[:opened] for name in group)


def planned_search_trials(spec: JobCreate) -> int:
    """The full trials the search may run: n_trials, or fewer when max_trial_epochs (less
    confirmation's reserve) is the tighter limit."""
    cap = search_epoch_budget(spec)
    if cap is None:
        return spec.budget.n_trials
    return max(1, min(spec.budget.n_trials, cap // spec.budget.epochs))

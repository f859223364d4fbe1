"""Per-task summaries of ``bench/quality.py``: both views, search-time and re-scored.

Search-time: each run's best validation value at B (what a method's own search reports).
Re-scored: each run's recommendation re-trained with seeds no method saw and measured on the
holdout (``bench/rescore.py``). Run lines written before re-scoring lack its fields; their
re-scored figures are None (shown as "-").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from bench.peers import PEER_METHODS, Task, sig6
from bench.quality_report import median_curve


def summarize(task: Task, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: medians of both views, the best peer of each, and each method's ratios.

    The top-level ``service*`` figures are those of the first service variant (``service``
    unless a label renamed it); ``methods`` has them for all.
    """
    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    medians = {m: statistics.median(_value(r["best"]) for r in rs) for m, rs in by_method.items()}
    rescored = {m: _rescored_median(rs, "test_loss") for m, rs in by_method.items()}
    best_peer, target = _best_peer(medians)
    rescored_peer, rescored_target = _best_peer(rescored)
    methods = {m: {"median": _json_float(medians[m]),
                   **_against(by_method[m], medians[m], target, task.budget),
                   "rescored_median": _json_float(rescored[m]),
                   "rescored_ratio": _ratio(rescored[m], rescored_target),
                   "fresh_val_median": _json_float(_rescored_median(by_method[m],
                                                                    "fresh_val_loss"))}
               for m in sorted(by_method, key=lambda m: (m.startswith("service"), m))}
    services = [m for m in methods if m.startswith("service")]
    first = methods[services[0]] if services else {}
    return {"task": task.name, "summary": True, "budget": task.budget,
            "seeds": sorted({r["seed"] for r in runs}), "best_peer": best_peer,
            "best_peer_median": _json_float(target), "service": services[0] if services else None,
            "service_ratio": first.get("ratio"),
            "budget_fraction_to_match": first.get("budget_fraction_to_match"),
            "rescored_best_peer": rescored_peer,
            "rescored_best_peer_median": _json_float(rescored_target),
            "service_rescored_ratio": first.get("rescored_ratio"),
            "confirmation": confirmation(by_method[services[0]]) if services else None,
            "methods": methods}


def confirmation(runs: list[dict[str, Any]]) -> dict[str, int]:
    """How the service's recommendations fared, counted over its runs: how many came from a
    confirmation, how many of those differed from the search's best trial, and how many
    confirmed means lay within 2 sd of a fresh re-training (of those that could be checked)."""
    checks = [r.get("within_2sd") for r in runs]
    return {"runs": len(runs),
            "confirmed": sum(r.get("recommended_from") == "confirmation" for r in runs),
            "differs_from_best": sum(bool(r.get("differs_from_best")) for r in runs),
            "checked": sum(check is not None for check in checks),
            "within_2sd": sum(check is True for check in checks)}


def _best_peer(medians: Mapping[str, float | None]) -> tuple[str | None, float | None]:
    peers = {m: v for m, v in medians.items() if m in PEER_METHODS and v is not None}
    if not peers:
        return None, None
    best = min(peers, key=lambda m: peers[m])
    return best, peers[best]


def _rescored_median(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median over seeds (a run without a value counts as infinitely bad); None unless every
    run was re-scored."""
    if not all(key in run for run in runs):
        return None
    return statistics.median(_value(run[key]) for run in runs)


def _against(runs: list[dict[str, Any]], median: float, target: float | None,
             budget: int) -> dict[str, Any]:
    """Median over the best peer's, and the first fraction of B where the median curve gets
    there (None: never within B)."""
    if target is None:
        return {"ratio": None, "budget_fraction_to_match": None}
    curve = median_curve(runs, budget)
    reached = next((b for b, best in enumerate(curve, start=1) if best <= target), None)
    return {"ratio": _ratio(median, target),
            "budget_fraction_to_match": round(reached / budget, 3) if reached else None}


def _ratio(value: float | None, target: float | None) -> float | None:
    if value is None or target is None or target == 0:
        return None
    return _json_float(value / target)


def _value(value: float | None) -> float:
    # Rounded as curves are (older lines kept ``best`` unrounded), so a curve reaches its best.
    return math.inf if value is None else sig6(float(value))


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else sig6(value)

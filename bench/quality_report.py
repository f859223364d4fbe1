"""Tables, docs and plots of ``bench/quality.py`` (JSON lines in, Markdown and PNG out)."""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.peers import HOLDOUT, PEER_METHODS, Task
from bench.rescore import RESCORE_SEEDS

# ---------------------------------------------------------------------------------- output
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
COLUMNS = ("method", "search: median best val_loss at B", "per seed", "/ best peer",
           "reaches best peer at", "re-scored: median test loss", "per seed", "/ best peer",
           "fresh-seed val_loss", "trial-epochs spent", "trials", "wall s")


def table_rows(summary: dict[str, Any], runs: list[dict[str, Any]]) -> list[list[str]]:
    """One row per method: the medians over seeds of both views (wall time and trial counts
    too); "-" where a run line has no re-scored fields (written before re-scoring)."""
    rows = []
    for method, stats in summary["methods"].items():
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        fraction = stats["budget_fraction_to_match"]
        rows.append([
            method, _fmt(stats["median"]), " ".join(_fmt(r["best"]) for r in mine),
            _fmt(stats["ratio"]), "-" if fraction is None else f"{fraction:.0%} of B",
            _fmt(stats.get("rescored_median")),
            " ".join(_fmt(r.get("test_loss")) for r in mine),
            _fmt(stats.get("rescored_ratio")), _fmt(stats.get("fresh_val_median")),
            f"{statistics.median(_total(r) for r in mine):g}",
            f"{statistics.median(r['n_trials'] for r in mine):g}",
            f"{statistics.median(r['seconds'] for r in mine):.0f}",
        ])
    return rows


def verdicts(summary: dict[str, Any]) -> str:
    """The task's headline in words: both views against their best peers, and the service's
    confirmation check."""
    fraction, service = summary["budget_fraction_to_match"], summary["service"]
    text = (f"Search-time best peer: **{summary['best_peer']}** (median "
            f"{_fmt(summary['best_peer_median'])}).")
    if service is not None:
        text += (f" `{service}`: {_fmt(summary['service_ratio'])} x the best peer; "
                 + ("does not reach it within B" if fraction is None
                    else f"reaches it at {fraction:.0%} of B") + ".")
    if summary.get("rescored_best_peer") is not None:
        text += (f" Re-scored best peer: **{summary['rescored_best_peer']}** (median test "
                 f"loss {_fmt(summary['rescored_best_peer_median'])}).")
        if service is not None:
            text += f" `{service}`: {_fmt(summary['service_rescored_ratio'])} x."
    check = summary.get("confirmation")
    if check and check["runs"]:
        text += (f" Confirmed recommendations: {check['confirmed']} of {check['runs']} runs, "
                 f"differing from the search's best in {check['differs_from_best']}; confirmed "
                 f"mean within 2 sd of a fresh re-training: {check['within_2sd']} of "
                 f"{check['checked']} checked.")
    return text


def _total(run: dict[str, Any]) -> int:
    """Trial-epochs a run spent: the service's as its report counts them (its confirmation runs
    are not in its trial list)."""
    return int(run.get("report_trial_epochs") or run["spent"])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def text_table(summaries: list[dict[str, Any]], lines: list[dict[str, Any]]) -> str:
    """The stderr table: per task, every method's row."""
    out = []
    for summary in summaries:
        runs = [r for r in lines if r["task"] == summary["task"]]
        rows = [list(COLUMNS), *table_rows(summary, runs)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        out.append(f"\n{summary['task']} (B = {summary['budget']} trial-epochs)\n"
                   + verdicts(summary).replace("**", ""))
        out += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                for row in rows]
    return "\n".join(out)


def write_docs(out: Path, tasks: list[Task], summaries: list[dict[str, Any]],
               lines: list[dict[str, Any]]) -> None:
    """docs/benchmarks.md between its markers (hand-written text around them is kept) and
    one plot per task."""
    (out / "img").mkdir(parents=True, exist_ok=True)
    parts = [BEGIN, _header()]
    for task, summary in zip(tasks, summaries, strict=True):
        runs = [r for r in lines if r["task"] == task.name]
        image = f"img/quality-{task.name}.png"
        plot(task, runs, summary, out / image)
        parts += [f"### {task.name}: {task.note}\n",
                  verdicts(summary) + "\n",
                  "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS),
                  *("| " + " | ".join(row) + " |" for row in table_rows(summary, runs)),
                  f"\n![{task.name}]({image})\n"]
    parts.append(END)
    path = out / "benchmarks.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n" + BEGIN + END + "\n"
    before, rest = old.split(BEGIN, 1) if BEGIN in old else (old + "\n", END)
    after = rest.split(END, 1)[1] if END in rest else rest
    path.write_text(before + "\n".join(parts) + after)


def _header() -> str:
    import platform
    from datetime import UTC, datetime
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    libs = ", ".join(f"{name} {version(name)}" for name in (
        "tensorflow", "keras", "optuna", "keras-tuner", "scikit-learn", "celery"))
    command = " ".join(["python", "bench/quality.py", *sys.argv[1:]])
    return (f"## Quality at an equal budget (`bench/quality.py`)\n\n"
            "Regenerate (after `pip install -e '.[bench]'`): "
            f"`python bench/quality.py --out docs`. These tables: `{command}`, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores ({cpu}), "
            f"Python {platform.python_version()}, {libs}.\n\n"
            "Budget B = n_trials x epochs trial-epochs. Every method runs until it has spent B "
            "(a pruned or diverged trial costs the epochs it ran); its trials are replayed in "
            "the order they finished and count only if they ended within B. A trial's value "
            "is its val_loss after its last epoch, and only trials that trained every epoch "
            "have one (for the service: `state == \"complete\"`). *median best* is the median "
            "over seeds of the best value at B; */ best peer* divides it by the best "
            "non-service, non-defaults method's median; *reaches best peer at* is the "
            "smallest budget at which the method's median best-so-far is at least as good as "
            "the best peer's final median. The plots show the median best-so-far per method."
            "\n\n"
            "That search-time value flatters every method (the winner's curse: the best of "
            "many draws on one validation split and one set of initial weights). So each run "
            f"is also re-scored. Every task keeps {HOLDOUT:.0%} of digits as a holdout (a "
            "fixed draw, `dataset.holdout`) that no method trains or validates on. Each run "
            "names one configuration: a peer its best full trial within B, `defaults` the "
            "paper defaults, the service its report's `recommended` configuration (its "
            "confirmation, which B includes) or, where the report has none, its best trial. "
            "That configuration is re-trained from scratch on the search's training split "
            f"with seeds {', '.join(map(str, RESCORE_SEEDS))} for initial weights and batch "
            "order (no method saw them) and its cross-entropy measured on the holdout: "
            "*re-scored* is the median over runs of the mean over those seeds, */ best peer* "
            "divides by the best peer's re-scored median (which may be another peer). "
            "*fresh-seed val_loss* is the same re-training measured on the search's "
            "validation split: its gap to the search-time median is the winner's curse. The "
            "service's confirmed mean is *within 2 sd* when |fresh-seed val_loss - confirmed "
            "mean| <= 2 x its confirmed sd. *trial-epochs spent* counts the service's "
            "confirmation too. \"-\": not re-scored (older runs).\n")


def plot(task: Task, runs: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Median best-so-far against trial-epochs, one line per method, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors
    x = list(range(1, task.budget + 1))
    lowest = math.inf
    for index, method in enumerate(summary["methods"]):
        y = [v if math.isfinite(v) else math.nan
             for v in median_curve([r for r in runs if r["method"] == method], task.budget)]
        lowest = min([lowest, *(v for v in y if v == v)])
        service = method.startswith("service")
        ax.step(x, y, where="post", label=method, color=colors[index % len(colors)],
                linewidth=2.2 if service else 1.2,
                linestyle="-" if service or method in PEER_METHODS else ":")
    peer = summary["best_peer_median"]
    if peer is not None:
        ax.axhline(peer, color="grey", linewidth=0.8, linestyle="--")
        # The first trials of a search are far off; show the range where methods differ.
        ax.set_ylim(lowest * 0.9, max(peer * 4, lowest * 2))
    ax.set(yscale="log", xlabel="trial-epochs spent", ylabel="median best val_loss so far",
           title=f"{task.name}: {task.note}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def best_at(curve: list[list[float]], epochs: int) -> float:
    """Best value found within ``epochs`` trial-epochs (inf before the first result)."""
    return min((best for spent, best in curve if spent <= epochs), default=math.inf)


def median_curve(runs: list[dict[str, Any]], budget: int) -> list[float]:
    """Median over seeds of the best-so-far, at 1 ... B trial-epochs."""
    return [statistics.median(best_at(run["curve"], b) for run in runs)
            for b in range(1, budget + 1)]

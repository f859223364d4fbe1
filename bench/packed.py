"""Packed trials against one-by-one fits: the same configurations, side by side in one run.

(1) On the worker's training path (``workers.training.train``, what a Celery task calls): N
    configurations sampled from the example's search space, trained one by one (a Keras fit
    each) and in packs of K = 1, 4, 16, 64; trials per second, the speed-up over one by one,
    and the largest per-configuration relative difference in final val_loss against training
    alone. Models: digits logistic regression, the digits MLP and the small CNN.
(2) End to end through the service (embedded default, one worker): a job with ``pack: auto``
    against the same job with ``pack: 1``; wall time ratio and best value.

    python bench/packed.py                    # everything (about 15 min on 2 cores)
    python bench/packed.py --skip-service     # (1) only
    python bench/packed.py --skip-training    # (2) only
    python bench/packed.py --models logistic_regression --sizes 1,16 --configs 16

Prints one JSON line per measurement; a table goes to stderr. Compare ratios, not times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import job_spec, run_service  # noqa: E402

MODELS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"model": {"builtin": "logistic_regression"}, "epochs": 10},
    # The quality benchmark's digits MLP and small CNN (docs/benchmarks.md).
    "mlp": {"model": {"builtin": "mlp", "hidden_units": [256, 256], "dropout": 0.2},
            "epochs": 10},
    "cnn": {"model": {"builtin": "cnn", "filters": [16, 32], "dense_units": 64},
            "epochs": 5},
}


def configurations(n: int, seed: int) -> list[Any]:
    """``n`` configurations drawn at random from the example job's search space (the paper
    defaults first), the same for every way of training them."""
    import optuna

    from tuner_service.adam import PAPER_DEFAULTS
    from tuner_service.schemas import JobCreate
    from tuner_service.search_space import suggest_config

    spec = JobCreate.model_validate(job_spec(n, 1, seed))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = [suggest_config(study.ask(), spec.search_space) for _ in range(n - 1)]
    return [PAPER_DEFAULTS, *drawn]


def train_spec(model: str, seed: int) -> Any:
    from tuner_service.datasets.catalog import BUILTINS
    from tuner_service.schemas import JobCreate
    from workers.training import TrainSpec

    raw = job_spec(1, MODELS[model]["epochs"], seed)
    raw["model"] = MODELS[model]["model"]
    spec = JobCreate.model_validate(raw)
    return TrainSpec.from_job(spec, BUILTINS[spec.dataset.match[1]])


def timed(spec: Any, configs: list[Any], size: int) -> tuple[float, list[float | None]]:
    """Train ``configs`` in packs of ``size`` (0: one by one, each a Keras fit)."""
    from workers.training import train

    def nothing(_epoch: int, _value: float) -> None:
        return None

    finals: list[float | None] = []
    start = time.perf_counter()
    step = size or 1
    for first in range(0, len(configs), step):
        group = configs[first:first + step]
        if size == 0:
            results = [train(spec, [config], [nothing])[0] for config in group]
        else:
            results = train(spec, group, [nothing] * len(group))
        finals += [r.value if r.state == "complete" else None for r in results]
    return time.perf_counter() - start, finals


def largest_difference(alone: list[float | None], packed: list[float | None]) -> float | None:
    """The largest relative difference in final val_loss over configurations both finished."""
    pairs = [(a, p) for a, p in zip(alone, packed, strict=True)
             if a is not None and p is not None and math.isfinite(a) and math.isfinite(p)]
    if not pairs:
        return None
    return max(abs(p - a) / max(abs(a), 1e-12) for a, p in pairs)


def bench_training(model: str, n_configs: int, sizes: list[int], seed: int) -> list[dict]:
    from workers.training import train

    spec = train_spec(model, seed)
    configs = configurations(n_configs, seed)
    warm = dataclasses.replace(spec, epochs=1)  # data loaded, TF warmed, outside the clock
    train(warm, configs[:2], [lambda e, v: None] * 2)
    train(warm, configs[:1], [lambda e, v: None])
    alone_s, alone = timed(spec, configs, 0)
    rows = [{"part": "training", "model": model, "epochs": spec.epochs, "configs": n_configs,
             "way": "one by one", "seconds": round(alone_s, 3),
             "trials_per_s": round(n_configs / alone_s, 3), "speedup": 1.0}]
    print(json.dumps(rows[-1]), flush=True)
    for size in sizes:
        if size == 1:
            # A pack of one is what `pack: 1` runs: a Keras fit, the row above.
            continue
        seconds, finals = timed(spec, configs, size)
        rows.append({"part": "training", "model": model, "epochs": spec.epochs,
                     "configs": n_configs, "way": f"packed K={size}",
                     "seconds": round(seconds, 3),
                     "trials_per_s": round(n_configs / seconds, 3),
                     "speedup": round(alone_s / seconds, 2),
                     "max_rel_diff_val_loss": largest_difference(alone, finals),
                     "failed": sum(v is None for v in finals)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_service(trials: int, epochs: int, seed: int) -> list[dict]:
    rows = []
    for pack in ("auto", 1):
        raw = dict(job_spec(trials, epochs, seed), name=f"packed-{pack}")
        raw["budget"] = {**raw["budget"], "pack": pack}
        run = run_service(raw, workers=1)
        rows.append({"part": "service", "pack": pack, "trials": trials, "epochs": epochs,
                     "seconds": round(run["seconds"], 3), "status": run["status"],
                     "best": run["best"]})
        print(json.dumps(rows[-1]), flush=True)
    auto, one = rows
    summary = {"part": "service", "summary": True,
               "wall_ratio_pack1_over_auto": round(one["seconds"] / auto["seconds"], 2),
               "best_auto": auto["best"], "best_pack1": one["best"]}
    print(json.dumps(summary), flush=True)
    return [*rows, summary]


def table(rows: list[dict]) -> str:
    lines = ["| model | way | trials/s | speed-up | max rel. diff val_loss |",
             "|---|---|---|---|---|"]
    for row in rows:
        if row["part"] == "training":
            diff = row.get("max_rel_diff_val_loss")
            lines.append(f"| {row['model']} ({row['epochs']} ep.) | {row['way']} | "
                         f"{row['trials_per_s']:.2f} | {row['speedup']:.1f}× | "
                         f"{'' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logistic_regression,mlp,cnn")
    parser.add_argument("--sizes", default="4,16,64",
                        help="pack sizes (K = 1 is the one-by-one row: pack 1 is a Keras fit)")
    parser.add_argument("--configs", type=int, default=64,
                        help="configurations of logistic regression")
    parser.add_argument("--configs-larger", type=int, default=16,
                        help="configurations of the MLP and the CNN (slower one by one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--service-trials", type=int, default=64)
    parser.add_argument("--service-epochs", type=int, default=10)
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    for model in [] if args.skip_training else args.models.split(","):
        n = args.configs if model == "logistic_regression" else args.configs_larger
        rows += bench_training(model, n, [s for s in sizes if s <= n] or [n], args.seed)
    if rows:
        print(table(rows), file=sys.stderr)
    if not args.skip_service:
        bench_service(args.service_trials, args.service_epochs, args.seed)


if __name__ == "__main__":
    main()

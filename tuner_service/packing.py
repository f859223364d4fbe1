"""How many configurations a worker trains together in one pass (a pack), and why.

The rule, applied each time a worker starts a pack (``budget.pack: auto``):

    K = min(64, slots left, memory fit, sampler cap)

- slots left: the job's slots of this kind no other worker holds (a confirmation pack: the
  runs on the same seed, which alone share batches and initial weights);
- memory fit: half the worker's free memory (GPU memory on a GPU, RAM otherwise) over one
  copy's training estimate (``model_size.estimate_training_memory``); at least 1;
- sampler cap: the configurations of a pack learn nothing from each other, so a model-based
  sampler (TPE, CMA-ES, GP) asks at most max(its start-up trials, ⌈n_trials / 4⌉) at once:
  the search keeps at least four rounds of feedback. Random search has no cap.

``budget.pack: K`` asks for K (still capped by the slots left and the memory fit); ``1`` trains
one configuration per pass. A model that cannot be packed (it overrides ``train_step``, keeps
state between batches, or TensorFlow cannot vectorise it), or a HyperModel whose searched
hyperparameters change the model from trial to trial, trains with K = 1, and the job says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner_service.schemas import JobCreate

MAX_AUTO_PACK = 64
# Optuna's TPE draws this many random trials before it models anything.
SAMPLER_STARTUP_TRIALS = 10
MODEL_BASED_SAMPLERS = frozenset({"tpe", "cmaes", "gp"})


@dataclass(frozen=True)
class PackRequest:
    """What decides a pack's size, besides the job's spec."""

    slots_left: int  # the slots a pack could lease now, the first one included
    memory_fit: int  # how many copies the worker's free memory holds
    problem: str | None = None  # why the model cannot be packed; None when it can
    confirms: bool = False  # a pack of confirmation runs (no sampler involved)


@dataclass(frozen=True)
class PackChoice:
    """A pack's size and the reason for it, in the words the job shows."""

    size: int
    reason: str

    def stored(self) -> dict[str, object]:
        """The job's ``packing`` column."""
        return {"size": self.size, "reason": self.reason}


def choose(spec: JobCreate, request: PackRequest) -> PackChoice:
    """The size of the next pack of ``spec``'s job (see the module's rule)."""
    asked = spec.budget.pack
    if asked == 1:
        return PackChoice(1, "budget.pack is 1")
    if request.problem is not None:
        return PackChoice(1, f"cannot pack this model: {request.problem}")
    limits = [(request.slots_left, "slots left"),
              (max(1, request.memory_fit), "worker memory")]
    if asked == "auto":
        limits.append((MAX_AUTO_PACK, "auto's largest pack"))
        if not request.confirms and spec.sampler in MODEL_BASED_SAMPLERS:
            cap = max(SAMPLER_STARTUP_TRIALS, math.ceil(spec.budget.n_trials / 4))
            limits.append((cap, f"{spec.sampler} keeps four rounds of feedback"))
    else:
        limits.append((asked, f"budget.pack is {asked}"))
    size, why = min(limits, key=lambda limit: limit[0])
    return PackChoice(size, f"limited by {why}")

"""Request and response models of the HTTP API (and the job spec the CLI reads from YAML)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from tuner_service.adam import HyperValue
from tuner_service.model_sources.types import PluginDescription
from tuner_service.search_space import SearchSpace
from tuner_service.states import JobStatus as JobStatusEnum

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialState = Literal["complete", "pruned", "fail", "running", "waiting"]
MAX_PACK = 256
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset(s for s in JobStatusEnum if s.ended)


class _Strict(BaseModel):
    # strict: a job spec means what it says. JSON true is no n_trials, "0.01" no learning
    # rate, 2.0 no count of trials: each is refused, naming its field (ints still pass as
    # floats).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _printable(text: str) -> str:
    """Refuse control characters and lone surrogates: a name is shown in pages and logs, and
    PostgreSQL cannot store a NUL or a surrogate at all."""
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(bad):04X})")
    return text


JobName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]


class _Architecture(_Strict):
    builtin: str

    @property
    def label(self) -> str:
        """How job names and messages call this model."""
        return self.builtin

    @property
    def match(self) -> tuple[str, str]:
        """The spec's key and value that name this model (warm start finds jobs by it)."""
        return ("builtin", self.builtin)


class LogisticRegressionSpec(_Architecture):
    """Multinomial logistic regression (the Adam paper's first experiment)."""

    builtin: Literal["logistic_regression"]


class MLPSpec(_Architecture):
    """Fully connected ReLU network with dropout (the paper used 2 x 1000 units)."""

    builtin: Literal["mlp"]
    hidden_units: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default=[1000, 1000], min_length=1, max_length=8
    )
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)


class CNNSpec(_Architecture):
    """Convolutions, max-pooling and a dense layer (the paper's c64-c64-c128-1000)."""

    builtin: Literal["cnn"]
    filters: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default=[64, 64, 128], min_length=1, max_length=6
    )
    kernel_size: int = Field(default=5, ge=1, le=11)
    pool_size: int = Field(default=3, ge=1, le=5)
    dense_units: int = Field(default=1000, ge=1, le=8192)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)


Architecture = LogisticRegressionSpec | MLPSpec | CNNSpec
BuiltinModelSpec = Annotated[Architecture, Field(discriminator="builtin")]
ModelId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
PluginName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]
# JSON scalars, or lists of them; NaN and infinity are not JSON (PostgreSQL refuses them).
_OptionScalar = int | Annotated[float, Field(allow_inf_nan=False)] | str | bool
OptionValue = _OptionScalar | list[_OptionScalar] | None


class UploadedModelSpec(_Strict):
    """A Keras file uploaded with ``POST /v1/models`` by the job's tenant (inspected, ready)."""

    id: ModelId
    weights: Literal["reinit", "file"] = Field(
        default="reinit",
        description="`reinit`: fresh weights drawn with the job seed, the same for every "
        "trial; `file`: start every trial from the file's weights (fine-tuning).")

    @property
    def label(self) -> str:
        """How job names and messages call this model."""
        return f"model-{self.id[:8]}"

    @property
    def match(self) -> tuple[str, str]:
        """The spec's key and value that name this model (warm start finds jobs by it)."""
        return ("id", self.id)


class PluginModelSpec(_Strict):
    """A model an operator installed on the workers (entry point group
    ``tuner_service.models``): a build function or a KerasTuner HyperModel."""

    plugin: PluginName
    options: dict[Annotated[str, Field(max_length=100)], OptionValue] = Field(
        default_factory=dict, max_length=50,
        description="Keyword arguments of a build(input_shape, n_outputs, **options) plugin")
    search_hyperparameters: bool = Field(
        default=False,
        description="A HyperModel's own hyperparameters: searched together with Adam's "
        "numbers (true), or fixed at their defaults (false)")

    @property
    def label(self) -> str:
        """How job names and messages call this model."""
        return self.plugin

    @property
    def match(self) -> tuple[str, str]:
        """The spec's key and value that name this model (warm start finds jobs by it)."""
        return ("plugin", self.plugin)


def _model_kind(value: object) -> str:
    # Tags unlike any field's name: an error's location drops them (api/errors.py), and must
    # not drop the field ``plugin`` of model.plugin with them.
    if isinstance(value, dict):
        return ("uploaded_file" if "id" in value else
                "plugin_model" if "plugin" in value else "architecture")
    if isinstance(value, UploadedModelSpec | PluginModelSpec):
        return "uploaded_file" if isinstance(value, UploadedModelSpec) else "plugin_model"
    return "architecture"


# Where the model comes from: a built-in architecture, an uploaded Keras file or a plugin. A
# new source is one more class here and one more ``ModelSource`` in workers/models.py.
ModelSpec = Annotated[
    Annotated[BuiltinModelSpec, Tag("architecture")]
    | Annotated[UploadedModelSpec, Tag("uploaded_file")]
    | Annotated[PluginModelSpec, Tag("plugin_model")],
    Discriminator(_model_kind),
]


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
MaxSamples = Annotated[int | None, Field(
    ge=10, description="Use only this many examples (drawn by the job seed).")]
Holdout = Annotated[float, Field(
    ge=0.0, lt=1.0,
    description="Fraction of the data set that no trial ever trains or validates on, drawn "
    "by a fixed seed (the same for every job), so that a recommendation can be scored on "
    "data its search never saw. Taken before max_samples and validation_split.")]
DatasetId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class BuiltinDatasetSpec(_Strict):
    """A built-in data set. ``digits`` ships with scikit-learn; the others download once."""

    builtin: Literal["digits", "mnist", "fashion_mnist", "cifar10"]
    validation_split: Fraction = 0.2
    max_samples: MaxSamples = None
    holdout: Holdout = 0.0

    @property
    def match(self) -> tuple[str, str]:
        """The spec's key and value that name this data set (warm start finds jobs by it)."""
        return ("builtin", self.builtin)


class UploadedDatasetSpec(_Strict):
    """A data set uploaded with ``POST /v1/datasets`` by the job's tenant."""

    id: DatasetId
    validation_split: Fraction = Field(
        default=0.2, description="Ignored when the file has its own validation split")
    max_samples: MaxSamples = None
    holdout: Holdout = 0.0

    @property
    def match(self) -> tuple[str, str]:
        """The spec's key and value that name this data set (warm start finds jobs by it)."""
        return ("id", self.id)


def _dataset_kind(value: object) -> str:
    if isinstance(value, dict):
        return "upload" if "id" in value else "builtin"
    return "upload" if isinstance(value, UploadedDatasetSpec) else "builtin"


# Where the data comes from: a built-in name or an upload's id. A new source is one more
# class here and one more ``DataSource`` in workers/data.py.
DatasetSpec = Annotated[
    Annotated[BuiltinDatasetSpec, Tag("builtin")] | Annotated[UploadedDatasetSpec, Tag("upload")],
    Discriminator(_dataset_kind),
]

TargetKind = Literal["classes", "values"]
# The validation metrics a kind of target reports (``training.py`` compiles them).
METRICS: dict[str, tuple[str, ...]] = {
    "classes": ("val_loss", "val_accuracy"),
    "values": ("val_loss", "val_mean_absolute_error"),
}


class DatasetTarget(BaseModel):
    """What a data set's model predicts: classes 0 ... K-1, or real values."""

    model_config = ConfigDict(frozen=True)

    kind: TargetKind
    n_classes: int | None = Field(default=None, description="classes only")
    n_outputs: int = Field(description="The model's outputs: the classes, or the values")


class DataDescription(BaseModel):
    """What a job trains on, fixed when it is submitted (the report names it even after the
    data set is deleted), and what a worker needs to load it."""

    model_config = ConfigDict(frozen=True)

    source: Literal["builtin", "upload"]
    name: str
    id: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    format: str | None = None
    label_column: str | None = None
    n_examples: int
    feature_shape: tuple[int, ...]
    target: DatasetTarget
    own_validation_split: bool = False


class Objective(_Strict):
    """What a trial is scored by; the direction follows from the metric when omitted."""

    metric: Literal["val_loss", "val_accuracy", "val_mean_absolute_error"] = Field(
        default="val_loss", description="val_accuracy for classes, val_mean_absolute_error "
        "for values (regression); val_loss for either")
    direction: Literal["minimize", "maximize"] | None = None

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> Objective:
        natural = "maximize" if self.metric == "val_accuracy" else "minimize"
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(f"{self.metric} should be {natural}d, not {self.direction}d")
        return self

    @property
    def minimize(self) -> bool:
        """True when smaller values are better."""
        return self.direction == "minimize"


class Budget(_Strict):
    """How much compute the job may spend."""

    n_trials: int = Field(default=20, ge=1)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    max_trial_epochs: int | None = Field(
        default=None, ge=1,
        description="Compute budget in trial-epochs: no trial starts once the job's trials have "
        "trained this many epochs (a pruned trial counts the epochs it ran), so pruning buys "
        "more trials and n_trials only caps how many. The last trial may end past it.",
    )
    pack: Literal["auto"] | Annotated[int, Field(ge=1, le=MAX_PACK)] = Field(
        default="auto",
        description="How many configurations a worker trains together in one pass, each with "
        "its own copy of the model fed the same batches: 1 trains one at a time, K asks for K, "
        "auto sizes packs from the model, the worker's free memory and the search (README, "
        "'Packed trials'). Each configuration's result is the same as trained alone.",
    )


class PartialAdamConfig(_Strict):
    """Adam numbers to try early; omitted ones are sampled."""

    learning_rate: float | None = None
    beta_1: float | None = None
    beta_2: float | None = None
    epsilon: float | None = None
    decay: float | None = None


JobId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Confirm(_Strict):
    """Re-train the search's top configurations and the paper defaults with fresh seeds."""

    top_k: int = Field(ge=1, le=20, description="How many distinct top configurations")
    seeds: int = Field(ge=1, le=20, description="Fresh seeds per configuration")


class JobCreate(_Strict):
    """A tuning job: which model on which data, what to search, and how much to spend."""

    name: JobName | None = None
    model: ModelSpec
    dataset: DatasetSpec
    search_space: SearchSpace = SearchSpace()
    objective: Objective = Objective()
    budget: Budget = Budget()
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    staging: Literal["off", "playbook"] = Field(
        default="off",
        description="`playbook`: search the learning rate first, then open beta_1, then "
        "epsilon and decay, then beta_2, in stages of at least 10 trials; numbers whose stage "
        "has not opened stay at the paper defaults, so a small job searches fewer of them.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    enqueue: list[PartialAdamConfig] = Field(
        default_factory=list,
        max_length=100,
        description="Configurations to try right after the paper defaults.",
    )
    confirm: Confirm | Literal["auto"] | bool = Field(
        default="auto",
        description="When the search ends, re-train its top_k distinct configurations and the "
        "paper defaults with `seeds` fresh seeds each, and recommend the best mean. `auto` "
        "spends about 20 % of the budget (off below 20 trials); false turns it off.",
    )
    warm_start: Literal["auto", "off"] | Annotated[list[JobId], Field(max_length=50)] = Field(
        default="auto",
        description="Start the study from earlier jobs' completed trials: `auto` uses every "
        "job on the same model, data set, epochs and batch size; or name the jobs.",
    )


class AdamParams(BaseModel):
    """The five Adam numbers of a trial, always all five (fixed ones too)."""

    learning_rate: float
    beta_1: float
    beta_2: float
    epsilon: float
    decay: float


class TrialCounts(BaseModel):
    """How many of a job's trials are in each state."""

    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0


class BestTrial(BaseModel):
    """The best complete trial so far."""

    trial_number: int
    value: float
    params: AdamParams
    hyperparameters: dict[str, HyperValue] = Field(
        default_factory=dict, description="A HyperModel's searched hyperparameters")


class ConfirmationProgress(BaseModel):
    """The confirmation runs queued once the search ended, and how many have ended."""

    runs: int
    runs_ended: int


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    name: str
    # The default is what servers from before tenants had: every job was the local tenant's.
    tenant: str = Field(default="local",
                        description="The tenant that owns the job (its submitter's)")
    status: JobStatus
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    n_trials: int
    trials_ended: int = Field(description="Search slots ended (confirmation runs not counted)")
    confirmation: ConfirmationProgress | None = Field(
        default=None, description="Confirmation runs, once the search has ended; the job "
        "succeeds when they have")
    trial_counts: TrialCounts
    best: BestTrial | None
    packing: PackingPublic | None = Field(
        default=None, description="The latest pack a worker trained; null before the first")
    spec: JobCreate


class JobsPublic(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobPublic]
    total: int


class PackingPublic(BaseModel):
    """How the job's latest pack was sized."""

    size: int = Field(description="Configurations trained together in one pass")
    reason: str = Field(description="What limited the size, or why the model trains alone")


class TrialPublic(BaseModel):
    """One trial of a job's study."""

    number: int
    state: TrialState
    params: AdamParams | None
    hyperparameters: dict[str, HyperValue] = Field(
        default_factory=dict, description="A HyperModel's searched hyperparameters")
    value: float | None
    intermediate_values: list[float]
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    fail_reason: str | None
    is_baseline: bool
    worker: str | None = Field(description="host:pid of the worker process that ran it")
    pack_size: int | None = Field(
        default=None, description="How many configurations trained together in its pass "
        "(1: alone; null: not run by a worker)")


class TrialsPublic(BaseModel):
    """A page of trials, by trial number."""

    items: list[TrialPublic]
    total: int


class SigninLink(BaseModel):
    """A one-time link that signs a browser in as the token that asked for it."""

    url: str
    expires_in_s: int = Field(description="The link works once, within this many seconds")


class Me(BaseModel):
    """What the caller's token is."""

    tenant: str
    is_admin: bool
    token_id: str | None


class DatasetPublic(BaseModel):
    """An uploaded data set."""

    id: str
    name: str
    tenant: str
    format: Literal["npz", "csv", "parquet"]
    sha256: str = Field(description="SHA-256 of the uploaded file")
    size_bytes: int
    n_examples: int
    feature_shape: list[int]
    target: DatasetTarget
    splits: dict[str, int] = Field(
        description='{"train": n, "validation": m} when the file has its own validation split, '
        'else {"all": n}')
    label_column: str | None
    created_at: datetime


class DatasetsPublic(BaseModel):
    """A page of data sets, newest first."""

    items: list[DatasetPublic]
    total: int


class ModelFilePublic(BaseModel):
    """An uploaded Keras model file and what a worker's inspection found."""

    id: str
    name: str
    tenant: str
    sha256: str = Field(description="SHA-256 of the uploaded file")
    size_bytes: int
    status: Literal["validating", "ready", "rejected"] = Field(
        description="validating: a worker is checking it; ready: jobs may name it; "
        "rejected: see reason")
    reason: str | None = Field(description="Why it was rejected")
    input_shape: list[int | None] | None = Field(description="Without the batch axis")
    output_shape: list[int | None] | None
    n_params: int | None
    keras_version: str | None
    outputs: Literal["logits", "probabilities"] | None
    created_at: datetime
    inspected_at: datetime | None


class PluginPublic(PluginDescription):
    """A plugin model as the live workers offer it."""

    workers: int = Field(description="Live workers that can build it")


class BuiltinModelPublic(BaseModel):
    """A built-in architecture and its options' defaults."""

    builtin: str
    description: str
    options: dict[str, Any]


class ModelsPublic(BaseModel):
    """The models a job may name: built-ins, plugins of live workers, the tenant's files."""

    builtins: list[BuiltinModelPublic]
    plugins: list[PluginPublic]
    files: list[ModelFilePublic] = Field(description="A page of them, newest first")
    total_files: int


class FieldError(BaseModel):
    """One problem with a request, named by its field."""

    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    """The JSON body of every error answer."""

    detail: str | list[FieldError]
    request_id: str | None = Field(
        default=None, description="On unexpected errors (500): the id in the server log")

"""Plain data about models, shared by the API, the workers and the reports (no Keras here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# A JSON scalar: what a KerasTuner hyperparameter or a plugin option may hold.
Scalar = int | float | str | bool
# A tensor shape without its batch axis; None where the model accepts any size.
Shape = tuple[int | None, ...]


class HyperParameter(BaseModel):
    """One hyperparameter a KerasTuner HyperModel declares (``hp.Int``, ``hp.Float``,
    ``hp.Choice``, ``hp.Boolean``, ``hp.Fixed``), as its default build registered it."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["int", "float", "choice", "boolean", "fixed"]
    default: Scalar | None = None
    min_value: float | None = None
    max_value: float | None = None
    step: float | None = None
    sampling: Literal["linear", "log", "reverse_log"] = "linear"
    values: tuple[Scalar, ...] | None = None


class PluginOption(BaseModel):
    """One keyword a ``build(input_shape, n_outputs, **options)`` plugin takes."""

    model_config = ConfigDict(frozen=True)

    name: str
    required: bool
    default: Scalar | list[Scalar] | None = None
    type: Literal["int", "float", "str", "bool", "list", "any"] = "any"


class PluginDescription(BaseModel):
    """What a worker found behind one entry point of the ``tuner_service.models`` group."""

    model_config = ConfigDict(frozen=True)

    name: str
    package: str | None = None
    version: str | None = None
    # build: build(input_shape, n_outputs, **options); hypermodel: a KerasTuner HyperModel
    # (class or instance) or a build(hp) function.
    kind: Literal["build", "hypermodel"]
    description: str | None = None
    options: tuple[PluginOption, ...] = ()
    # True when the build function takes **options: any option name is accepted.
    any_options: bool = False
    # A JSON schema the plugin declares itself (``build.options_schema``), shown as is.
    options_schema: dict[str, object] | None = None
    hyperparameters: tuple[HyperParameter, ...] = ()
    # A hypermodel fixes its own shapes: those of its default build; None for build plugins.
    input_shape: Shape | None = None
    output_shape: Shape | None = None
    n_params: int | None = None
    # A hypermodel's: whether its default build ends in softmax/sigmoid (the snippet's loss).
    outputs: Literal["logits", "probabilities"] = "logits"
    # Set when the entry point could not be loaded or built: the plugin is listed, not offered.
    error: str | None = None


class ModelInspection(BaseModel):
    """What a worker learnt of an uploaded Keras file (checked against the allow-list first)."""

    model_config = ConfigDict(frozen=True)

    input_shape: Shape
    output_shape: Shape
    n_params: int
    keras_version: str | None = None
    # probabilities: the last layer applies softmax/sigmoid (the loss is then not from logits).
    outputs: Literal["logits", "probabilities"] = "logits"
    layers: int = 0


class ModelDescription(BaseModel):
    """What a job's model is, fixed when the job is submitted (the report names it even after
    an uploaded file is deleted), and what a worker needs to build it."""

    model_config = ConfigDict(frozen=True)

    source: Literal["builtin", "file", "plugin"]
    name: str
    # file: the uploaded model's id and the stored bytes' hash.
    id: str | None = None
    sha256: str | None = None
    # plugin: where it came from.
    package: str | None = None
    version: str | None = None
    kind: Literal["architecture", "file", "build", "hypermodel"] = "architecture"
    input_shape: Shape | None = None
    output_shape: Shape | None = None
    n_params: int | None = None
    outputs: Literal["logits", "probabilities"] = "logits"
    # A HyperModel's hyperparameters; ``searched`` ones are sampled with Adam's numbers, the
    # others stay at their defaults.
    hyperparameters: tuple[HyperParameter, ...] = ()
    searched: bool = False

    @property
    def searched_hyperparameters(self) -> tuple[HyperParameter, ...]:
        """The hyperparameters each trial samples (none unless searched)."""
        return self.hyperparameters if self.searched else ()

"""The registry of live worker processes and the plugin models each can build.

A worker process registers when it starts (``workers/registry.py``) and beats every
``worker_heartbeat_s``; one silent for ``worker_lost_after_s`` no longer offers anything. The
API reads it to list plugins and to refuse, at submit, a job no live worker could train."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from tuner_service.db.models import WorkerModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.model_sources.types import ModelDescription, PluginDescription
from tuner_service.runtime import Runtime
from tuner_service.schemas import PluginModelSpec, PluginPublic
from tuner_service.validation import Problem, SpecRefused

# A build function's first two arguments: the service passes them from the data set.
RESERVED_OPTIONS = frozenset({"input_shape", "n_outputs"})
# A worker silent this long is removed from the registry when another one registers.
FORGET_AFTER_S = 3600
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,)}


def register(rt: Runtime, worker_id: str, *, host: str, pid: int, version: str,
             plugins: Sequence[PluginDescription]) -> None:
    """Add (or renew) a worker process with the plugins it found; forget processes silent
    for over an hour (killed ones never leave)."""
    now = utcnow()
    with session_scope(rt.sessions) as session:
        session.execute(delete(WorkerModel).where(
            WorkerModel.heartbeat_at < now - timedelta(seconds=FORGET_AFTER_S)))
        row = session.get(WorkerModel, worker_id)
        if row is None:
            row = WorkerModel(id=worker_id, started_at=now)
            session.add(row)
        row.host, row.pid, row.version = host[:200], pid, version[:40]
        row.plugins = [plugin.model_dump(mode="json") for plugin in plugins]
        row.heartbeat_at = now


def beat(rt: Runtime, worker_id: str) -> bool:
    """Note that the worker is alive; False when it is not registered (any more)."""
    with session_scope(rt.sessions) as session:
        changed = session.execute(update(WorkerModel).where(WorkerModel.id == worker_id)
                                  .values(heartbeat_at=utcnow())
                                  .execution_options(synchronize_session=False))
        return bool(changed.rowcount)  # type: ignore[attr-defined]


def offered_plugins(rt: Runtime) -> list[PluginPublic]:
    """Every plugin a live worker reported, newest report first wins, with how many live
    workers can build it (a plugin that failed to load on every worker counts none)."""
    since = utcnow() - timedelta(seconds=rt.settings.worker_lost_after_s)
    with session_scope(rt.sessions) as session:
        reports = list(session.scalars(select(WorkerModel.plugins)
                                       .where(WorkerModel.heartbeat_at >= since)
                                       .order_by(WorkerModel.heartbeat_at.desc())))
    found: dict[str, PluginDescription] = {}
    counts: dict[str, int] = {}
    for report in reports:
        for entry in report:
            plugin = PluginDescription.model_validate(entry)
            found.setdefault(plugin.name, plugin)
            counts[plugin.name] = counts.get(plugin.name, 0) + (plugin.error is None)
    return [PluginPublic(**found[name].model_dump(), workers=counts[name])
            for name in sorted(found)]


def describe(rt: Runtime, spec: PluginModelSpec) -> ModelDescription:
    """What a job's ``model: {plugin}`` names, as the live workers offer it; ``SpecRefused``
    when none offers it, or when its options or ``search_hyperparameters`` do not fit it."""
    offered = {plugin.name: plugin for plugin in offered_plugins(rt) if plugin.workers}
    plugin = offered.get(spec.plugin)
    if plugin is None:
        names = ", ".join(sorted(offered)) or "none"
        raise SpecRefused([(("model", "plugin"), f"no live worker offers plugin "
                            f"{spec.plugin!r} (offered now: {names}); install its package on "
                            "the workers and restart them")])
    problems = option_problems(plugin, spec.options)
    if spec.search_hyperparameters and plugin.kind != "hypermodel":
        problems.append((("model", "search_hyperparameters"),
                         f"plugin {plugin.name!r} is a build function: only a KerasTuner "
                         "HyperModel declares hyperparameters to search"))
    if problems:
        raise SpecRefused(problems)
    return ModelDescription(
        source="plugin", name=plugin.name, package=plugin.package, version=plugin.version,
        kind=plugin.kind, input_shape=plugin.input_shape, output_shape=plugin.output_shape,
        n_params=plugin.n_params, outputs=plugin.outputs,
        hyperparameters=plugin.hyperparameters,
        searched=spec.search_hyperparameters)


def option_problems(plugin: PluginDescription, options: dict[str, Any]) -> list[Problem]:
    """The job's options against what the plugin's build function takes."""
    if plugin.kind == "hypermodel":
        return [(("model", "options"), f"plugin {plugin.name!r} is a HyperModel: it takes no "
                 "options (its hyperparameters are fixed at their defaults or searched)")] \
            if options else []
    declared = {option.name: option for option in plugin.options}
    problems: list[Problem] = []
    for name, value in options.items():
        option = declared.get(name)
        if name in RESERVED_OPTIONS:
            problems.append((("model", "options", name), f"{name} is the data set's, given to "
                             "every build function; it cannot be an option"))
        elif option is None:
            if not plugin.any_options:
                problems.append((("model", "options", name), f"plugin {plugin.name!r} takes "
                                 f"no option {name!r} (it takes: "
                                 f"{', '.join(declared) or 'none'})"))
        elif not _fits_type(value, option.type):
            problems.append((("model", "options", name),
                             f"must be of type {option.type} (default {option.default!r})"))
    problems += [(("model", "options", name), f"plugin {plugin.name!r} needs option {name!r}")
                 for name, option in declared.items() if option.required and name not in options]
    return problems


def _fits_type(value: Any, kind: str) -> bool:
    wanted = _JSON_TYPES.get(kind)
    if wanted is None or value is None:
        return True
    # JSON true is no number: bool is an int subclass in Python.
    return isinstance(value, wanted) and (kind == "bool" or not isinstance(value, bool))

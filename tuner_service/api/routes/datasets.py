"""Uploaded data sets: upload (streamed to disk, checked whole, then stored), list, read,
delete."""

from __future__ import annotations

from typing import Annotated, get_args

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from tuner_service.api.auth import ApiCaller
from tuner_service.api.deps import RuntimeDep
from tuner_service.api.openapi import COMMON, SIGNED_IN, Responses, json_error
from tuner_service.api.uploads import receive_upload
from tuner_service.datasets import formats
from tuner_service.datasets import service as datasets
from tuner_service.schemas import DatasetPublic, DatasetsPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"],
                   responses={**COMMON, **SIGNED_IN})
NOT_FOUND: Responses = {404: json_error("No such data set (or it is another tenant's)")}
TEXT_FIELDS = frozenset({"name", "label_column", "task"})
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=200)]

_UPLOAD_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": ".npz (arrays x, y or x_train, y_train, x_val, y_val), "
                                    ".csv with a header row, or .parquet"},
            "name": {"type": "string", "maxLength": 200},
            "label_column": {"type": "string",
                             "description": "The target column of a CSV or Parquet file"},
            "task": {"type": "string", "enum": ["classes", "values"],
                     "description": "Override the guess: integer targets are classes, "
                                    "floating ones values (regression)"},
        }}}}},
}


def problem_response(status: int, field: str, message: str) -> JSONResponse:
    """The 4xx answer to a refused upload, naming the form field at fault."""
    return JSONResponse(status_code=status, content={
        "detail": [{"field": field, "message": message, "type": "upload_problem"}]})


@router.post(
    "", status_code=201, response_model=DatasetPublic, openapi_extra=_UPLOAD_FORM,
    responses={200: {"model": DatasetPublic, "description": "The same file was uploaded "
                     "before by this tenant: that data set"},
               403: json_error("Cross-site request refused (foreign Origin)"),
               409: json_error("The same file is already a data set with another "
                               "label_column or task"),
               413: json_error("The file is larger than TUNER_MAX_UPLOAD_BYTES"),
               415: json_error("Not multipart/form-data, or not a supported file format")})
async def upload_dataset(request: Request, rt: RuntimeDep, caller: ApiCaller) -> Response:
    """Upload a data set (multipart form: ``file``, optional ``name``, ``label_column`` for
    tables, ``task``). It is checked whole before anything is stored; each problem is named.
    """
    settings = rt.settings
    try:
        async with receive_upload(request, max_bytes=int(settings.max_upload_bytes),
                                  tmp_dir=settings.upload_folder,
                                  text_fields=TEXT_FIELDS) as upload:
            options = _options(upload.fields)
            received = datasets.Upload(upload.path, upload.filename, upload.size_bytes,
                                       upload.sha256)
            # Parsing and storing are blocking (and, for a big table, seconds of CPU).
            dataset, created = await anyio.to_thread.run_sync(
                lambda: datasets.register_upload(rt, received, options, tenant=caller.tenant))
    except formats.DatasetProblem as problem:  # the request's or the file's (UploadProblem)
        return problem_response(problem.status, problem.field, problem.message)
    return Response(dataset.model_dump_json(), status_code=201 if created else 200,
                    media_type="application/json")


def form_name(fields: dict[str, str]) -> str | None:
    """An upload form's optional ``name`` (data sets and model files alike)."""
    name = fields.get("name") or None
    if name is not None and (len(name) > datasets.MAX_NAME or not name.isprintable()):
        raise formats.DatasetProblem(
            f"name must be 1 to {datasets.MAX_NAME} printable characters", field="name")
    return name


def _options(fields: dict[str, str]) -> datasets.UploadOptions:
    task = fields.get("task") or None
    if task is not None and task not in get_args(formats.TargetKind):
        raise formats.DatasetProblem(
            f"task must be 'classes' or 'values', not {task[:50]!r}", field="task")
    name = form_name(fields)
    label_column = fields.get("label_column") or None
    if label_column is not None and len(label_column) > datasets.MAX_NAME:
        raise formats.DatasetProblem(
            f"label_column must be at most {datasets.MAX_NAME} characters",
            field="label_column")
    return datasets.UploadOptions(name=name, label_column=label_column,
                                  task=task)  # type: ignore[arg-type]


@router.get("", response_model=DatasetsPublic)
def list_datasets(rt: RuntimeDep, caller: ApiCaller, offset: Offset = 0, limit: Limit = 50
                  ) -> DatasetsPublic:
    """The caller's data sets (every tenant's for an admin token), newest first."""
    items, total = datasets.list_datasets(rt, offset, limit, tenant=caller.scope)
    return DatasetsPublic(items=items, total=total)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND)
def get_dataset(dataset_id: str, rt: RuntimeDep, caller: ApiCaller) -> DatasetPublic:
    """One data set."""
    return datasets.get_dataset(rt, dataset_id, tenant=caller.scope)


@router.delete("/{dataset_id}", status_code=204, responses={
    **NOT_FOUND, 403: json_error("Cross-site request refused (foreign Origin)"),
    409: json_error("A queued or running job trains on the data set")})
def delete_dataset(dataset_id: str, rt: RuntimeDep, caller: ApiCaller) -> Response:
    """Delete a data set (and its stored bytes once no data set holds them); ended jobs keep
    their reports."""
    datasets.delete_dataset(rt, dataset_id, tenant=caller.scope)
    return Response(status_code=204)

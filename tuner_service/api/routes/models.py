"""Models a job may name: the built-ins, the plugins live workers offer, and uploaded Keras
files (upload, list, read, delete). An upload is streamed to disk, its archive checked, its
bytes stored, and a worker inspects it; the API never loads it."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response

from tuner_service.api.auth import ApiCaller
from tuner_service.api.deps import RuntimeDep
from tuner_service.api.openapi import COMMON, SIGNED_IN, Responses, json_error
from tuner_service.api.routes.datasets import form_name, problem_response
from tuner_service.api.uploads import receive_upload
from tuner_service.datasets.checks import DatasetProblem
from tuner_service.model_sources import files, registry
from tuner_service.model_sources.archive import ModelFileProblem
from tuner_service.model_sources.catalog import builtin_catalog
from tuner_service.schemas import BuiltinModelPublic, ModelFilePublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"], responses={**COMMON, **SIGNED_IN})
NOT_FOUND: Responses = {404: json_error("No such model file (or it is another tenant's)")}
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=200)]

_UPLOAD_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "A Keras 3 .keras archive (model.save('model.keras'))"},
            "name": {"type": "string", "maxLength": 200},
        }}}}},
}


@router.post(
    "", status_code=201, response_model=ModelFilePublic, openapi_extra=_UPLOAD_FORM,
    responses={200: {"model": ModelFilePublic, "description": "The same file was uploaded "
                     "before by this tenant: that model"},
               403: json_error("Cross-site request refused (foreign Origin)"),
               413: json_error("The file is larger than TUNER_MAX_MODEL_BYTES"),
               415: json_error("Not multipart/form-data"),
               422: json_error("Not a Keras archive we accept (each problem is named)")})
async def upload_model(request: Request, rt: RuntimeDep, caller: ApiCaller) -> Response:
    """Upload a ``.keras`` model file (multipart form: ``file``, optional ``name``). Its
    archive is checked at once; a worker then inspects it (``status`` validating, then ready
    or rejected with the reason): nothing in it is ever run."""
    settings = rt.settings
    try:
        async with receive_upload(request, max_bytes=int(settings.max_model_bytes),
                                  tmp_dir=settings.upload_folder,
                                  text_fields=frozenset({"name"}),
                                  limit_setting="TUNER_MAX_MODEL_BYTES") as upload:
            name = form_name(upload.fields)
            received = files.ModelUpload(upload.path, upload.filename, upload.size_bytes,
                                         upload.sha256)
            model, created = await anyio.to_thread.run_sync(
                lambda: files.register_upload(rt, received, name, tenant=caller.tenant))
    except DatasetProblem as problem:  # the request's (UploadProblem)
        return problem_response(problem.status, problem.field, problem.message)
    except ModelFileProblem as problem:
        return problem_response(422, "file", str(problem))
    return Response(model.model_dump_json(), status_code=201 if created else 200,
                    media_type="application/json")


@router.get("", response_model=ModelsPublic)
def list_models(rt: RuntimeDep, caller: ApiCaller, offset: Offset = 0, limit: Limit = 50
                ) -> ModelsPublic:
    """Every model a job may name: built-ins, the plugins live workers offer (with how many
    workers can build each), and a page of the caller's model files, newest first."""
    items, total = files.list_models(rt, offset, limit, tenant=caller.scope)
    return ModelsPublic(
        builtins=[BuiltinModelPublic(**entry) for entry in builtin_catalog()],
        plugins=registry.offered_plugins(rt), files=items, total_files=total)


@router.get("/{model_id}", response_model=ModelFilePublic, responses=NOT_FOUND)
def get_model(model_id: str, rt: RuntimeDep, caller: ApiCaller) -> ModelFilePublic:
    """One model file, with its inspection's verdict."""
    return files.get_model(rt, model_id, tenant=caller.scope)


@router.delete("/{model_id}", status_code=204, responses={
    **NOT_FOUND, 403: json_error("Cross-site request refused (foreign Origin)"),
    409: json_error("A queued or running job trains the model")})
def delete_model(model_id: str, rt: RuntimeDep, caller: ApiCaller) -> Response:
    """Delete a model file (and its stored bytes once nothing holds them); ended jobs keep
    their reports."""
    files.delete_model(rt, model_id, tenant=caller.scope)
    return Response(status_code=204)

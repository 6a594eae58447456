"""The REST routes: health, what is served, stored images, synchronous inpainting, and jobs
with their status, server-sent events, result and cancelling."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from moebius.serve import schemas
from moebius.serve.errors import ApiError
from moebius.serve.images import decode_photo, png_bytes, to_base64
from moebius.serve.inputs import media_type, read_job
from moebius.serve.jobs import FINISHED, Closed, Event, Job, QueueFull, State
from moebius.serve.service import Service
from moebius.serve.store import StoredImage
from moebius.settings import InpaintSettings

FINAL_EVENTS = ("done", "error", "cancelled")
KEEPALIVE_SECONDS = 15  # an SSE comment this often keeps proxies from closing a quiet stream
DISCONNECT_POLL_SECONDS = 1.0  # how often a synchronous request checks that its client is there
# the HTTP status of a failed job's error code
FAILED_STATUS = {"invalid_input": 422, "internal_error": 500}

router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]


# ---------------------------------------------------------------------- answers
def _accepted(accept: str, media: str) -> float:
    """The q-value ``accept`` gives ``media``: that of the most specific matching range."""
    best, specificity = 0.0, -1
    for item in accept.split(","):
        kind, *params = (part.strip().lower() for part in item.split(";"))
        rank = {media: 2, media.split("/")[0] + "/*": 1, "*/*": 0}.get(kind)
        if rank is None or rank < specificity:
            continue
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        best, specificity = q, rank
    return best


def wants_json(request: Request) -> bool:
    """Whether the Accept header prefers application/json to image/png (a tie, ``*/*`` or no
    header gives PNG)."""
    accept = request.headers.get("accept", "")
    return _accepted(accept, "application/json") > _accepted(accept, "image/png")


def _result_headers(job: Job, image_id: bool) -> dict[str, str]:
    headers = {
        "X-Model": job.model,
        "X-Seed": str(job.settings.seed),
        "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in job.timings.items()),
    }
    if job.warnings:
        headers["X-Warnings"] = "; ".join(job.warnings)
    if image_id:
        headers["X-Image-Id"] = job.result_id
    return headers


async def _result(service: Service, request: Request, job: Job, image_id: bool) -> Response:
    """A done job's result: PNG, or JSON with the PNG in base64 when the client prefers it."""
    stored = service.store.get(job.result_id) if job.result_id else None
    if stored is None:
        raise ApiError(404, "result_expired", "the result is no longer kept; run it again")
    headers = _result_headers(job, image_id)
    if not wants_json(request):
        return Response(stored.png, media_type="image/png", headers=headers)
    body = {
        "image": await service.in_thread(to_base64, stored.png),
        "width": job.size[0],
        "height": job.size[1],
        "model": job.model,
        "seed": job.settings.seed,
        "settings": job.settings.to_dict(),
        "timings": job.timings,
        "warnings": job.warnings,
    }
    return JSONResponse(body, headers=headers)


def _unfinished(job: Job) -> ApiError:
    if job.state is State.FAILED:
        code, detail = job.error
        return ApiError(FAILED_STATUS.get(code, 500), code, detail)
    if job.state is State.CANCELLED:
        return ApiError(409, "cancelled", "the job was cancelled")
    return ApiError(409, "not_done", f"the job is {job.state.value}; follow its events")


def _status(service: Service, job: Job) -> dict:
    return {
        "id": job.id,
        "model": job.model,
        "state": job.state.value,
        "position": service.queue.position(job),
        "step": job.done,
        "steps": job.total,
        "cancelling": job.cancel.is_set() and job.state not in FINISHED,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "settings": job.settings.to_dict(),
        "image_id": job.result_id,
        "width": job.size[0] if job.size else None,
        "height": job.size[1] if job.size else None,
        "timings": job.timings,
        "warnings": job.warnings,
        "error": {"error": job.error[0], "detail": job.error[1]} if job.error else None,
    }


# ---------------------------------------------------------------------- jobs
async def _submit(service: Service, request: Request) -> Job:
    """Read and queue a job. A full queue refuses before anything is decoded, and again
    when the job is queued."""
    try:
        return service.queue.submit(await read_job(service, request))
    except QueueFull as exc:
        raise ApiError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except Closed as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None


def _find(service: Service, job_id: str) -> Job:
    job = service.queue.get(job_id)
    if job is None:
        raise ApiError(404, "unknown_job", "no such job (it may have expired)")
    return job


async def _events(service: Service, job: Job, wait: float) -> AsyncIterator[Event | None]:
    """The job's events so far, then each new one, up to the final one; None whenever
    ``wait`` seconds pass without one."""
    events = service.queue.subscribe(job)
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), wait)
            except asyncio.TimeoutError:
                yield None
                continue
            yield event
            if event.name in FINAL_EVENTS:
                return
    finally:
        service.queue.unsubscribe(job, events)


# ---------------------------------------------------------------------- health
@router.get("/healthz", response_model=schemas.Health, tags=["health"])
async def healthz(service: ServiceDep):
    """The server is alive (it answers even while the model loads), with its queues and
    the images it keeps."""
    store = {"images": len(service.store), "bytes": service.store.total_bytes}
    return {"status": "ok", "queues": service.queue.stats(), "store": store}


@router.get(
    "/readyz",
    response_model=schemas.Readiness,
    tags=["health"],
    responses={503: {"model": schemas.Readiness, "description": "still loading, or failed"}},
)
async def readyz(service: ServiceDep):
    """Every model is loaded: 200, else 503."""
    models = service.models
    body = {"ready": models.ready, "models": {m.name: m.state for m in models.models}}
    return JSONResponse(body, status_code=200 if models.ready else 503)


# ---------------------------------------------------------------------- what is offered
@router.get("/v1/models", response_model=schemas.ModelList, tags=["models"])
async def list_models(service: ServiceDep):
    """The models this server runs; requests name one with `model` (default: the first)."""
    return {
        "models": [
            {
                "name": m.name,
                "kind": m.kind,
                "description": m.description,
                "state": m.state,
                "error": m.error,
                "default": m.default,
                "image_size": m.image_size,
                "settings": list(m.settings),
                "defaults": (
                    m.pipeline.default_settings.to_dict() if m.pipeline is not None else None
                ),
            }
            for m in service.models.models
        ]
    }


@router.get(
    "/v1/settings",
    response_model=schemas.SettingsSchema,
    response_model_exclude_unset=True,
    tags=["models"],
)
async def settings_schema():
    """Every inpainting setting: type, default, bounds, choices and help."""
    return {"settings": InpaintSettings.describe()}


# ---------------------------------------------------------------------- images
@router.post(
    "/v1/images",
    status_code=201,
    response_model=schemas.ImageInfo,
    tags=["images"],
    openapi_extra={"requestBody": schemas.image_upload_body()},
    responses=schemas.error_responses(400, 413, 415, 422),
)
async def upload_image(service: ServiceDep, request: Request):
    """Keep a photo on the server (in memory, for a while) to inpaint it several times
    without sending it again: pass the id as `image_id`. Multipart `image`, or the raw
    file with an image/* content type."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=1) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, "invalid_request", "send the photo as the file 'image'")
            data = await upload.read()
    elif kind.startswith("image/") or kind == "application/octet-stream":
        data = await request.body()
    else:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data or image/*")
    image = await service.in_thread(decode_photo, data, service.config.max_pixels)
    key = service.store.put(StoredImage(image))
    return JSONResponse({"id": key, "width": image.size[0], "height": image.size[1]}, 201)


@router.get(
    "/v1/images/{image_id}",
    response_class=Response,
    tags=["images"],
    responses={
        200: {
            "description": "the stored image (an upload as decoded, or a result) as PNG",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **schemas.error_responses(404, 422),
    },
)
async def get_image(service: ServiceDep, image_id: str):
    """A stored image, as the server sees it (EXIF orientation applied)."""
    stored = service.store.get(image_id)
    if stored is None:
        raise ApiError(404, "unknown_image", "no such image id (it may have expired)")
    data = stored.png or await service.in_thread(png_bytes, stored.image)
    return Response(data, media_type="image/png")


# ---------------------------------------------------------------------- inpainting
@router.post(
    "/v1/inpaint",
    response_class=Response,
    tags=["inpainting"],
    openapi_extra={"requestBody": schemas.inpaint_request_body()},
    responses={
        **schemas.IMAGE_RESULT,
        **schemas.error_responses(400, 404, 409, 413, 415, 422, 429, 500, 503),
    },
)
async def inpaint(service: ServiceDep, request: Request):
    """Inpaint and wait for the result (for scripts). The photo as `image` (or a stored
    `image_id`), the mask as `mask`, settings as further fields. The job queues like any
    other; a client that disconnects cancels it."""
    job = await _submit(service, request)
    try:
        checked = time.monotonic()
        async with aclosing(_events(service, job, DISCONNECT_POLL_SECONDS)) as events:
            async for _ in events:  # steps may come faster than the checks need to
                if time.monotonic() - checked < DISCONNECT_POLL_SECONDS:
                    continue
                checked = time.monotonic()
                if await request.is_disconnected():
                    service.queue.cancel(job.id)
                    raise ApiError(409, "cancelled", "the client went away")
        if job.state is not State.DONE:
            raise _unfinished(job)
        return await _result(service, request, job, image_id=False)
    finally:
        if job.state in FINISHED:  # its reader has it (a cancelled one may still be stopping)
            service.queue.forget(job)


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=schemas.JobCreated,
    tags=["jobs"],
    openapi_extra={"requestBody": schemas.inpaint_request_body()},
    responses=schemas.error_responses(400, 404, 413, 415, 422, 429, 503),
)
async def create_job(service: ServiceDep, request: Request):
    """Queue a job (the same fields as /v1/inpaint); follow it at `/v1/jobs/{id}` and
    `/v1/jobs/{id}/events`, fetch `/v1/jobs/{id}/result`."""
    job = await _submit(service, request)
    body = {"id": job.id, "state": job.state.value, "position": service.queue.position(job)}
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get(
    "/v1/jobs/{job_id}",
    response_model=schemas.JobStatus,
    tags=["jobs"],
    responses=schemas.error_responses(404, 422),
)
async def job_status(service: ServiceDep, job_id: str):
    """State, step k of n, queue position, and when done the result's image id."""
    return _status(service, _find(service, job_id))


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    tags=["jobs"],
    responses={
        200: {
            "description": "server-sent events, each `data` a JSON object: `queued` "
            "{position}, `running` {steps}, `step` {step, steps}, then one of `done` "
            "{image_id, width, height, seed, timings, warnings}, `error` {error, detail} "
            "or `cancelled` {step, steps}, after which the stream ends. Events carry ids: "
            "a reconnecting EventSource resumes after Last-Event-ID.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **schemas.error_responses(404, 422),
    },
)
async def job_events(service: ServiceDep, job_id: str, request: Request):
    """This job's progress, as it happens (earlier events first)."""
    job = _find(service, job_id)
    try:
        resume = int(request.headers.get("last-event-id", "-1")) + 1
    except ValueError:
        resume = 0

    async def stream():
        index = 0
        async with aclosing(_events(service, job, KEEPALIVE_SECONDS)) as events:
            async for event in events:
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                if index >= resume:
                    yield f"id: {index}\nevent: {event.name}\ndata: {json.dumps(event.data)}\n\n"
                index += 1

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get(
    "/v1/jobs/{job_id}/result",
    response_class=Response,
    tags=["jobs"],
    responses={**schemas.IMAGE_RESULT, **schemas.error_responses(404, 409, 422, 500)},
)
async def job_result(service: ServiceDep, job_id: str, request: Request):
    """The result of a done job (PNG, or JSON on Accept: application/json); the
    `X-Image-Id` header names it for further edits."""
    job = _find(service, job_id)
    if job.state is not State.DONE:
        raise _unfinished(job)
    return await _result(service, request, job, image_id=True)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=schemas.JobStatus,
    tags=["jobs"],
    responses=schemas.error_responses(404, 422),
)
async def cancel_job(service: ServiceDep, job_id: str):
    """Cancel a queued job (at once) or a running one (before its next step; `cancelling`
    is true until then); a finished job is forgotten, its result dropped."""
    job = service.queue.cancel(job_id)
    if job is None:
        raise ApiError(404, "unknown_job", "no such job (it may have expired)")
    return _status(service, job)

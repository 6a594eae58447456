"""The HTTP service: REST API (documented at /docs), server-sent progress events and the
browser UI, over one :class:`~moebius.serve.service.Service`."""

import asyncio
import json
import mimetypes
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from anyio.to_thread import run_sync
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

import moebius
from moebius.serve import schemas
from moebius.serve.config import ServeConfig
from moebius.serve.errors import ApiError, error_response, install_error_handlers
from moebius.serve.images import decode_photo, png_bytes, to_base64
from moebius.serve.inputs import media_type, read_job
from moebius.serve.jobs import FINISHED, Closed, Job, QueueFull, State
from moebius.serve.models import ModelSet
from moebius.serve.service import Service
from moebius.serve.store import StoredImage
from moebius.settings import InpaintSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"
FINAL_EVENTS = ("done", "error", "cancelled")
KEEPALIVE_SECONDS = 15  # an SSE comment this often keeps proxies from closing a quiet stream
DISCONNECT_POLL_SECONDS = 1.0
RESULT_HEADERS = ("X-Model", "X-Seed", "X-Warnings", "X-Image-Id", "Server-Timing")
# the UI's own page may only load and talk to this server
UI_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_FAILED_STATUS = {"invalid_input": 422, "internal_error": 500}


def _errors(*statuses: int) -> dict:
    meaning = {
        400: "undecodable image or malformed request",
        403: "request from a foreign web page",
        404: "no such job or image (or it expired)",
        409: "the job is not done (still running, failed or cancelled)",
        413: "request over the byte limit, or image over the pixel limit",
        415: "not an image, or a body that is neither multipart nor JSON",
        422: "invalid request: bad settings, unknown model, a mask of another size",
        429: "queue full; see Retry-After",
        500: "the job failed inside the server",
        503: "the model is not loaded yet (see Retry-After) or failed to load",
    }
    return {s: {"model": schemas.ErrorBody, "description": meaning[s]} for s in statuses}


_RESULT_HEADER_DOCS = {
    "X-Model": {"description": "the model that ran", "schema": {"type": "string"}},
    "X-Seed": {"description": "the seed used (reuse it to repeat)", "schema": {"type": "integer"}},
    "X-Warnings": {"description": "warnings, '; '-separated", "schema": {"type": "string"}},
    "Server-Timing": {
        "description": "time per phase in milliseconds, as name;dur=ms (queue, prepare, "
        "encode, denoise, decode, paste, total, png)",
        "schema": {"type": "string"},
    },
}
_IMAGE_RESULT = {
    200: {
        "model": schemas.InpaintResult,
        "description": "the result as PNG, or as JSON with a base64 PNG on Accept: "
        "application/json",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "headers": _RESULT_HEADER_DOCS,
    }
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The UI's files, read once: requests pick from this table, never from a path."""
    files = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                kind = "text/javascript"
            files[path.relative_to(STATIC_DIR).as_posix()] = (path.read_bytes(), kind)
    return files


def wants_json(request: Request) -> bool:
    """Whether the Accept header prefers application/json to image/png (q-values honoured;
    ties and no header give PNG)."""
    quality = {"image/png": 0.0, "application/json": 0.0}
    for item in request.headers.get("accept", "").split(","):
        kind, *params = (part.strip().lower() for part in item.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        for candidate in quality:
            if kind in (candidate, candidate.split("/")[0] + "/*", "*/*"):
                exact = kind == candidate
                quality[candidate] = max(quality[candidate], q + (1e-3 if exact else 0))
    return quality["application/json"] > quality["image/png"]


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


class _Guard:
    """Plain ASGI middleware: the request body limit (by Content-Length at once, else while it
    streams) and, for a loopback server, refusal of other Host names (DNS rebinding) and of
    requests that foreign web pages make with the user's browser (Origin not ours)."""

    def __init__(self, app, config: ServeConfig, allowed_hosts: tuple[str, ...] | None):
        self.app = app
        self.config = config
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal is not None:
            return await error_response(*refusal)(scope, receive, send)
        limit, received = self.config.max_upload_bytes, 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "too_large", self._too_large(received))
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, size: int) -> str:
        return (
            f"the request carries over {size / 2**20:.1f} MB; this server accepts at most "
            f"{self.config.max_upload_bytes / 2**20:.1f} MB (--max-upload-mb)"
        )

    def _refusal(self, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        if (
            self.allowed_hosts is not None
            and urlsplit(f"//{host}").hostname not in self.allowed_hosts
        ):
            return 400, "bad_host", f"this server answers to {', '.join(self.allowed_hosts)} only"
        origin = headers.get("origin")
        if origin and urlsplit(origin).netloc != host and origin not in self.config.cors_origins:
            return 403, "foreign_origin", f"requests from {origin} are not allowed (--cors-origin)"
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return 400, "bad_request", "invalid Content-Length"
        if length > self.config.max_upload_bytes:
            return 413, "too_large", self._too_large(length)
        return None


def create_app(
    models: ModelSet,
    config: ServeConfig | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
) -> FastAPI:
    """The application. Models load (in the background) and workers start when it starts
    (the ASGI lifespan); everything stops, running jobs cancelled, when it stops."""
    config = config or ServeConfig()
    service = Service(config, models)
    static = _static_files()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await run_sync(service.close)

    app = FastAPI(
        title="moebius",
        version=moebius.__version__,
        summary="Object removal and inpainting with the Moebius diffusion model",
        description="Upload a photo and a mask (white = repaint); get the photo with the "
        "masked region filled. `POST /v1/inpaint` answers synchronously; `POST /v1/jobs` "
        "queues a job whose progress streams from `/v1/jobs/{id}/events`. Errors are JSON "
        '`{"error": code, "detail": message}`. Any request may also get 403 `foreign_origin` '
        "(sent by a web page of another origin than the server's and the --cors-origin "
        "ones), 400 `bad_host` (a loopback server named by another host name) or 413 "
        "`too_large` (over --max-upload-mb).",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=list(RESULT_HEADERS) + ["Location", "Retry-After"],
        )
    app.add_middleware(_Guard, config=config, allowed_hosts=allowed_hosts)

    # ------------------------------------------------------------------ the browser UI
    def static_response(name: str) -> Response:
        if name not in static:
            raise ApiError(404, "not_found", f"no such file: {name}")
        body, kind = static[name]
        headers = {"Cache-Control": "no-cache", **UI_SECURITY_HEADERS}
        return Response(body, media_type=kind, headers=headers)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return static_response("index.html")

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        return static_response(name)

    # ------------------------------------------------------------------ health
    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    async def healthz():
        """The server is alive (it answers even while the model loads), with its queues and
        the images it keeps."""
        store = {"images": len(service.store), "bytes": service.store.total_bytes}
        return {"status": "ok", "queues": service.queue.stats(), "store": store}

    @app.get(
        "/readyz",
        response_model=schemas.Readiness,
        tags=["health"],
        responses={503: {"model": schemas.Readiness, "description": "still loading, or failed"}},
    )
    async def readyz():
        """Every model is loaded: 200, else 503."""
        body = {"ready": models.ready, "models": {m.name: m.state for m in models.models}}
        return JSONResponse(body, status_code=200 if models.ready else 503)

    # ------------------------------------------------------------------ what is offered
    @app.get("/v1/models", response_model=schemas.ModelList, tags=["models"])
    async def list_models():
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
                }
                for m in models.models
            ]
        }

    @app.get(
        "/v1/settings",
        response_model=schemas.SettingsSchema,
        response_model_exclude_unset=True,
        tags=["models"],
    )
    async def settings_schema():
        """Every inpainting setting: type, default, bounds, choices and help."""
        return {"settings": InpaintSettings.describe()}

    # ------------------------------------------------------------------ images
    @app.post(
        "/v1/images",
        status_code=201,
        response_model=schemas.ImageInfo,
        tags=["images"],
        openapi_extra={"requestBody": schemas.image_upload_body()},
        responses=_errors(400, 413, 415, 422),
    )
    async def upload_image(request: Request):
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
        image = await service.in_thread(decode_photo, data, config.max_pixels)
        key = service.store.put(StoredImage(image))
        return JSONResponse(
            {"id": key, "width": image.size[0], "height": image.size[1]}, status_code=201
        )

    @app.get(
        "/v1/images/{image_id}",
        response_class=Response,
        tags=["images"],
        responses={
            200: {
                "description": "the stored image (an upload as decoded, or a result) as PNG",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_errors(404, 422),
        },
    )
    async def get_image(image_id: str):
        """A stored image, as the server sees it (EXIF orientation applied)."""
        stored = service.store.get(image_id)
        if stored is None:
            raise ApiError(404, "unknown_image", "no such image id (it may have expired)")
        data = stored.png or await service.in_thread(png_bytes, stored.image)
        return Response(data, media_type="image/png")

    # ------------------------------------------------------------------ inpainting
    def refused(exc: QueueFull | Closed) -> ApiError:
        if isinstance(exc, QueueFull):
            return ApiError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)})
        return ApiError(503, "shutting_down", str(exc))

    async def submit(request: Request) -> Job:
        """Read and queue a job; a full queue refuses before anything is decoded, and
        again when the job is queued."""
        try:
            return service.queue.submit(await read_job(service, request))
        except (QueueFull, Closed) as exc:
            raise refused(exc) from None

    async def result_response(request: Request, job: Job, with_image_id: bool) -> Response:
        stored = service.store.get(job.result_id) if job.result_id else None
        if stored is None:
            raise ApiError(404, "result_expired", "the result is no longer kept; run it again")
        headers = _result_headers(job, with_image_id)
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

    def unfinished(job: Job) -> ApiError:
        if job.state is State.FAILED:
            code, detail = job.error
            return ApiError(_FAILED_STATUS.get(code, 500), code, detail)
        if job.state is State.CANCELLED:
            return ApiError(409, "cancelled", "the job was cancelled")
        return ApiError(409, "not_done", f"the job is {job.state.value}; follow its events")

    @app.post(
        "/v1/inpaint",
        response_class=Response,
        tags=["inpainting"],
        openapi_extra={"requestBody": schemas.inpaint_request_body()},
        responses={**_IMAGE_RESULT, **_errors(400, 404, 409, 413, 415, 422, 429, 500, 503)},
    )
    async def inpaint(request: Request):
        """Inpaint and wait for the result (for scripts). The photo as `image` (or a stored
        `image_id`), the mask as `mask`, settings as further fields. The job queues like any
        other; a client that disconnects cancels it."""
        job = await submit(request)
        events = service.queue.subscribe(job)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        service.queue.cancel(job.id)
                        raise ApiError(409, "cancelled", "the client went away") from None
                    continue
                if event.name in FINAL_EVENTS:
                    break
        finally:
            service.queue.unsubscribe(job, events)
        try:
            if job.state is not State.DONE:
                raise unfinished(job)
            return await result_response(request, job, with_image_id=False)
        finally:
            service.queue.forget(job)

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=schemas.JobCreated,
        tags=["jobs"],
        openapi_extra={"requestBody": schemas.inpaint_request_body()},
        responses=_errors(400, 404, 413, 415, 422, 429, 503),
    )
    async def create_job(request: Request):
        """Queue a job (the same fields as /v1/inpaint); follow it at `/v1/jobs/{id}` and
        `/v1/jobs/{id}/events`, fetch `/v1/jobs/{id}/result`."""
        job = await submit(request)
        body = {"id": job.id, "state": job.state.value, "position": service.queue.position(job)}
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    def find(job_id: str) -> Job:
        job = service.queue.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", "no such job (it may have expired)")
        return job

    def status(job: Job) -> dict:
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

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=schemas.JobStatus,
        tags=["jobs"],
        responses=_errors(404, 422),
    )
    async def job_status(job_id: str):
        """State, step k of n, queue position, and when done the result's image id."""
        return status(find(job_id))

    @app.get(
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
            **_errors(404, 422),
        },
    )
    async def job_events(job_id: str, request: Request):
        """This job's progress, as it happens (earlier events first)."""
        job = find(job_id)
        try:
            resume = int(request.headers.get("last-event-id", "-1")) + 1
        except ValueError:
            resume = 0

        async def stream():
            events = service.queue.subscribe(job)
            try:
                index = 0
                while True:
                    try:
                        event = await asyncio.wait_for(events.get(), KEEPALIVE_SECONDS)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if index >= resume:
                        yield f"id: {index}\nevent: {event.name}\ndata: {json.dumps(event.data)}\n\n"
                    index += 1
                    if event.name in FINAL_EVENTS:
                        return
            finally:
                service.queue.unsubscribe(job, events)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @app.get(
        "/v1/jobs/{job_id}/result",
        response_class=Response,
        tags=["jobs"],
        responses={**_IMAGE_RESULT, **_errors(404, 409, 422, 500)},
    )
    async def job_result(job_id: str, request: Request):
        """The result of a done job (PNG, or JSON on Accept: application/json); the
        `X-Image-Id` header names it for further edits."""
        job = find(job_id)
        if job.state is not State.DONE:
            raise unfinished(job)
        return await result_response(request, job, with_image_id=True)

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=schemas.JobStatus,
        tags=["jobs"],
        responses=_errors(404, 422),
    )
    async def cancel_job(job_id: str):
        """Cancel a queued job (at once) or a running one (before its next step; `cancelling`
        is true until then); a finished job is forgotten, its result dropped."""
        job = service.queue.cancel(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", "no such job (it may have expired)")
        return status(job)

    return app

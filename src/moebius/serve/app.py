"""The application: the REST routes of :mod:`moebius.serve.api`, the browser UI's static
files, the request guard and CORS, over one :class:`~moebius.serve.service.Service`."""

import mimetypes
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from anyio.to_thread import run_sync
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware

import moebius
from moebius.serve import api
from moebius.serve.config import ServeConfig
from moebius.serve.errors import ApiError, error_response, install_error_handlers
from moebius.serve.models import ModelSet
from moebius.serve.service import Service

STATIC_DIR = Path(__file__).resolve().parent / "static"
# headers a page of a --cors-origin may read from answers
EXPOSED_HEADERS = [
    "X-Model",
    "X-Seed",
    "X-Warnings",
    "X-Image-Id",
    "Server-Timing",
    "Location",
    "Retry-After",
]
# the UI's own page may only load and talk to this server
UI_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
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


class _Guard:
    """Plain ASGI middleware: the request body limit (by Content-Length at once, else while it
    streams); refusal of requests that web pages of other origins make through the user's
    browser (a cross-site form post needs no CORS preflight); with ``allowed_hosts`` (a
    loopback server), refusal of other Host names, which is how DNS rebinding would reach it."""

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
        host, origin = headers.get("host", ""), headers.get("origin")
        try:
            hostname = urlsplit(f"//{host}").hostname
            origin_host = urlsplit(origin).netloc if origin else None
        except ValueError:  # e.g. an unclosed IPv6 bracket
            return 400, "bad_request", "malformed Host or Origin header"
        if self.allowed_hosts is not None and hostname not in self.allowed_hosts:
            return 400, "bad_host", f"this server answers to {', '.join(self.allowed_hosts)} only"
        if origin and origin_host != host and origin not in self.config.cors_origins:
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
        docs_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
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

    _add_api_docs(app)
    app.include_router(api.router)
    return app


# Swagger UI's files that /docs needs, from the fastapi-offline package when it is installed
# (the serve extra installs it), so the API docs work without the internet.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def _add_api_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI over ``/openapi.json``, its scripts served by this server when
    fastapi-offline is installed, else (FastAPI's default) from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import fastapi_offline
    except ImportError:
        fastapi_offline = None

    urls = {}
    if fastapi_offline is not None:
        folder = Path(fastapi_offline.__file__).parent / "static"
        urls = {
            "swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
            "swagger_css_url": "/docs-assets/swagger-ui.css",
            "swagger_favicon_url": "/docs-assets/favicon.png",
        }

        @app.get("/docs-assets/{name}", include_in_schema=False)
        async def docs_asset(name: str) -> Response:
            if name not in DOCS_ASSETS:
                raise ApiError(404, "not_found", f"no such file: {name}")
            body = await run_sync((folder / name).read_bytes)
            return Response(body, media_type=DOCS_ASSETS[name])

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="moebius API", **urls)

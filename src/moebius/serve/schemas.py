"""The API's documented shapes. The settings part is derived from
:meth:`InpaintSettings.describe`, so names, types, defaults, bounds and help are written once
(in :mod:`moebius.settings`); requests are validated by :meth:`InpaintSettings.from_mapping`,
with the same rules and messages as the command line."""

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from moebius.settings import InpaintSettings

_TYPES = {"int": int, "float": float, "bool": bool}


def _setting_field(row: dict[str, Any]) -> tuple[Any, Any]:
    kind = Literal[tuple(row["choices"])] if row["type"] == "choice" else _TYPES[row["type"]]
    if row["nullable"]:
        kind = kind | None
    return kind, Field(
        row["default"], description=row["help"], ge=row.get("low"), le=row.get("high")
    )


SettingsModel = create_model(
    "Settings",
    __doc__="Inpainting settings; every one is optional and defaults as shown.",
    **{row["name"]: _setting_field(row) for row in InpaintSettings.describe()},
)


class ErrorBody(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. queue_full")
    detail: str = Field(description="one-line explanation")


class Health(BaseModel):
    status: Literal["ok"]
    queues: dict[str, dict[str, Any]] = Field(description="per worker lane: waiting, running")
    store: dict[str, int] = Field(description="uploads and results kept: images, bytes")


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="model name → loading, ready or failed")


class ModelInfo(BaseModel):
    name: str
    kind: Literal["diffusion", "classical"]
    description: str
    state: Literal["loading", "ready", "failed"]
    error: str | None = None
    default: bool = Field(description="used when a request names no model")
    image_size: int | None = Field(description="working size in pixels (null while loading)")
    settings: list[str] = Field(description="the settings that change this model's result")
    defaults: dict[str, Any] | None = Field(
        description="the model's own setting defaults, used for settings a request leaves out "
        "(null while loading)"
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


class SettingDescription(BaseModel):
    name: str
    type: Literal["int", "float", "bool", "choice"]
    default: Any
    help: str
    nullable: bool
    choices: list[str] | None = None
    low: int | float | None = None
    high: int | float | None = None


class SettingsSchema(BaseModel):
    settings: list[SettingDescription]


class ImageInfo(BaseModel):
    id: str = Field(description="pass as image_id to /v1/jobs or /v1/inpaint")
    width: int
    height: int


class JobCreated(BaseModel):
    id: str
    state: str
    position: int | None = Field(description="place in the queue, 1 = next")


class JobStatus(BaseModel):
    id: str
    model: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    position: int | None = Field(description="place in the queue while queued, 1 = next")
    step: int = Field(description="denoising steps finished")
    steps: int = Field(description="denoising steps in all")
    cancelling: bool = Field(description="a cancel was asked for and takes effect at the next step")
    created: float = Field(description="Unix time")
    started: float | None
    finished: float | None
    settings: SettingsModel = Field(description="what the job runs with, its seed included")
    image_id: str | None = Field(
        description="when done: the result, kept like an upload, to edit further as image_id"
    )
    width: int | None = None
    height: int | None = None
    timings: dict[str, float] = Field(description="seconds per phase")
    warnings: list[str]
    error: ErrorBody | None = None


class InpaintResult(BaseModel):
    image: str = Field(description="the result as a base64 PNG")
    width: int
    height: int
    model: str
    seed: int
    settings: SettingsModel
    timings: dict[str, float]
    warnings: list[str]


def _settings_properties() -> dict[str, Any]:
    return SettingsModel.model_json_schema()["properties"]


_MODEL_FIELD = {"type": "string", "description": "a name from /v1/models (default: the default)"}
_IMAGE_ID_FIELD = {
    "type": "string",
    "description": "an id from POST /v1/images or a finished job, instead of an image upload",
}


def inpaint_request_body() -> dict[str, Any]:
    """The OpenAPI request body of /v1/inpaint and /v1/jobs: multipart files or base64 JSON,
    with the settings as fields."""

    def schema(encoding: dict[str, str], image: str, mask: str) -> dict[str, Any]:
        properties = {
            "image": encoding | {"description": image},
            "mask": encoding | {"description": mask},
            "image_id": _IMAGE_ID_FIELD,
            "model": _MODEL_FIELD,
            **_settings_properties(),
        }
        return {"type": "object", "properties": properties, "required": ["mask"]}

    binary = {"type": "string", "format": "binary"}
    base64 = {"type": "string", "contentEncoding": "base64"}
    multipart = schema(
        binary, "the photo (or give image_id)", "white = repaint, or the opaque part of a PNG"
    )
    json_body = schema(
        base64,
        "the photo file, base64 (or a data: URL; or give image_id)",
        "the mask file, base64 (or a data: URL)",
    )
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": multipart},
            "application/json": {"schema": json_body},
        },
    }


def image_upload_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }


def error_responses(*statuses: int) -> dict:
    """OpenAPI responses for the error statuses a route can answer, each an ErrorBody."""
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
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


RESULT_HEADERS = {
    "X-Model": {"description": "the model that ran", "schema": {"type": "string"}},
    "X-Seed": {"description": "the seed used (reuse it to repeat)", "schema": {"type": "integer"}},
    "X-Warnings": {"description": "warnings, '; '-separated", "schema": {"type": "string"}},
    "Server-Timing": {
        "description": "time per phase in milliseconds, as name;dur=ms (queue, prepare, "
        "encode, denoise, decode, paste, total, png)",
        "schema": {"type": "string"},
    },
}
# the 200 answer of the routes that return an inpainted image
IMAGE_RESULT = {
    200: {
        "model": InpaintResult,
        "description": "the result as PNG, or as JSON with a base64 PNG on Accept: "
        "application/json",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "headers": RESULT_HEADERS,
    }
}

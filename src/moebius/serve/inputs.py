"""Reading an inpainting request, multipart or JSON, into a job. The cheap checks come first
(model ready, settings valid, room in the queue), so a request that is refused costs no
decoding; images are decoded off the event loop."""

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile

from moebius.errors import InputError
from moebius.serve.errors import ApiError
from moebius.serve.images import decode_mask, decode_photo, from_base64
from moebius.serve.jobs import Job
from moebius.serve.models import ServedModel
from moebius.serve.service import Service
from moebius.settings import InpaintSettings

FILE_FIELDS = ("image", "mask")
MAX_FORM_FIELDS = 64


@dataclass
class _Fields:
    """A request's parts: uploaded bytes, an image id, a model name, the settings as given."""

    files: dict[str, bytes]
    image_id: str | None
    model: str | None
    settings: dict[str, Any]


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _multipart_fields(request: Request) -> _Fields:
    files, text = {}, {}
    # the context closes the uploads' spooled temporary files
    async with request.form(max_files=len(FILE_FIELDS), max_fields=MAX_FORM_FIELDS) as form:
        for name, value in form.multi_items():
            if name in files or name in text:
                raise ApiError(422, "invalid_request", f"{name} is given twice")
            if isinstance(value, UploadFile):
                if name not in FILE_FIELDS:
                    raise ApiError(422, "invalid_request", f"unexpected file field {name!r}")
                files[name] = await value.read()
            elif name in FILE_FIELDS:
                raise ApiError(422, "invalid_request", f"{name} must be a file upload")
            else:
                text[name] = value
    image_id, model = text.pop("image_id", None), text.pop("model", None)
    return _Fields(files, image_id, model, text)


async def _json_fields(request: Request) -> _Fields:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the JSON body must be an object")
    files = {name: from_base64(body.pop(name), name) for name in FILE_FIELDS if name in body}
    image_id, model = body.pop("image_id", None), body.pop("model", None)
    for name, value in (("image_id", image_id), ("model", model)):
        if value is not None and not isinstance(value, str):
            raise ApiError(422, "invalid_request", f"{name} must be a string")
    return _Fields(files, image_id, model, body)


async def request_fields(request: Request) -> _Fields:
    kind = media_type(request)
    if kind == "multipart/form-data":
        return await _multipart_fields(request)
    if kind == "application/json":
        return await _json_fields(request)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send multipart/form-data or application/json, not {kind or 'no content type'}",
    )


def _settings(model: ServedModel, given: dict[str, Any]) -> InpaintSettings:
    try:
        base = model.pipeline.default_settings
        return model.pipeline.settings_for(InpaintSettings.from_mapping(given, base))
    except InputError as exc:
        raise ApiError(422, "invalid_settings", str(exc)) from None


async def _photo(service: Service, fields: _Fields) -> Image.Image:
    if fields.image_id is not None:
        if "image" in fields.files:
            raise ApiError(422, "invalid_request", "give image or image_id, not both")
        stored = service.store.get(fields.image_id)
        if stored is None:
            raise ApiError(
                404, "unknown_image", "no such image id (it may have expired): upload it again"
            )
        return stored.image
    if "image" not in fields.files:
        raise ApiError(422, "invalid_request", "give an image (a file or base64) or an image_id")
    return await service.in_thread(decode_photo, fields.files["image"], service.config.max_pixels)


async def read_job(service: Service, request: Request) -> Job:
    """A job for the request, not yet submitted, or an :class:`ApiError`."""
    fields = await request_fields(request)
    model = service.models.get(fields.model)
    settings = _settings(model, fields.settings)
    service.queue.check_room(model.lane)
    if "mask" not in fields.files:
        raise ApiError(422, "invalid_request", "give a mask (a file or base64)")
    image = await _photo(service, fields)
    mask = await service.in_thread(decode_mask, fields.files["mask"], service.config.max_pixels)
    if mask.size != image.size and not settings.resize_mask:
        raise ApiError(
            422,
            "mask_size_mismatch",
            f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]} (set resize_mask=true to resize it)",
        )
    return Job(model.name, model.lane, model.pipeline, image, mask, settings)

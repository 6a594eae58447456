"""The REST service against the real app and the tiny model, through FastAPI's test client:
both endpoints and both encodings, every error class, the queue, cancelling, and clients that
run at the same time."""

import base64
import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import far_from, tiny_model, tiny_vae
from PIL import Image
from serving import png
from skimage import data

from moebius.errors import InputError
from moebius.pipeline import MoebiusInpaintPipeline
from moebius.serve.app import create_app
from moebius.serve.config import ServeConfig
from moebius.serve.models import ModelSet
from moebius.settings import InpaintSettings

SIZE = (96, 64)
HOLE = (30, 20, 60, 44)
LONG = {"steps": "400"}  # a job that runs until it is cancelled (the tiny model: ~0.1 s a step)


@pytest.fixture(scope="module")
def pipe() -> MoebiusInpaintPipeline:
    p = MoebiusInpaintPipeline(tiny_model(), tiny_vae())
    p.set_progress_bar_config(disable=True)
    return p


def photo(which=data.astronaut, size=SIZE) -> Image.Image:
    return Image.fromarray(which()).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def box_mask(size=SIZE, box=HOLE) -> Image.Image:
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return Image.fromarray(mask)


def files(image=None, mask=None) -> dict:
    return {
        "image": ("photo.png", png(image or photo())),
        "mask": ("mask.png", png(mask or box_mask())),
    }


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


@pytest.fixture
def make_client(pipe):
    """A started app (models loaded, workers running) with the given limits."""
    clients = []

    def make(models: ModelSet | None = None, **limits) -> TestClient:
        app = create_app(models or ModelSet.ready_with("tiny", pipe), ServeConfig(**limits))
        client = TestClient(app).__enter__()
        clients.append(client)
        if models is None:
            app.state.service.models.wait(30)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def events_of(client: TestClient, job_id: str) -> list[tuple[str, dict]]:
    """The job's server-sent events, until the stream ends after the final one."""
    events, name = [], None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    return events


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def running(client: TestClient, job_id: str) -> bool:
    status = client.get(f"/v1/jobs/{job_id}").json()
    return status["state"] == "running" and status["step"] >= 1


# ---------------------------------------------------------------------------- what is served
def test_health_models_and_settings(client, pipe):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "models": {"tiny": "ready", "opencv-telea": "ready", "opencv-ns": "ready"},
    }
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["tiny"]["default"] and models["tiny"]["image_size"] == pipe.image_size
    assert models["tiny"]["kind"] == "diffusion"
    assert models["opencv-telea"]["kind"] == "classical"
    assert "steps" not in models["opencv-ns"]["settings"]
    assert "dilation" in models["opencv-ns"]["settings"]
    assert client.get("/v1/settings").json()["settings"] == json.loads(
        json.dumps(InpaintSettings.describe())
    )


def test_not_ready_until_loaded(pipe, make_client):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return "tiny", pipe

    client = make_client(ModelSet("auto", slow_load))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    refused = client.post("/v1/inpaint", files=files())
    assert refused.status_code == 503
    assert refused.json()["error"] == "not_ready"
    assert int(refused.headers["Retry-After"]) >= 1
    # the instant fills need no loading
    assert (
        client.post("/v1/inpaint", files=files(), data={"model": "opencv-telea"}).status_code == 200
    )
    release.set()
    client.app.state.service.models.wait(30)
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/models").json()["models"][0]["name"] == "tiny"
    assert client.post("/v1/inpaint", files=files(), data={"steps": "2"}).status_code == 200


# ---------------------------------------------------------------------------- synchronous
def test_inpaint_multipart_returns_the_pipelines_png(client, pipe):
    answer = client.post("/v1/inpaint", files=files(), data={"steps": "3", "seed": "7"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["X-Seed"] == "7"
    assert answer.headers["X-Model"] == "tiny"
    assert "denoise;dur=" in answer.headers["Server-Timing"]
    result = decode(answer.content)
    expected = pipe(photo(), box_mask(), settings=InpaintSettings(steps=3, seed=7)).images[0]
    np.testing.assert_array_equal(result, np.asarray(expected))
    far = far_from(box_mask(), scale=SIZE[0] / 64)
    np.testing.assert_array_equal(result[far], np.asarray(photo())[far])
    assert not np.array_equal(result[~far], np.asarray(photo())[~far])
    # a synchronous job leaves nothing behind
    assert client.get("/healthz").json()["store"] == {"images": 0, "bytes": 0}


def test_a_models_own_defaults_serve_requests_that_leave_settings_out(make_client):
    own = MoebiusInpaintPipeline(
        tiny_model(), tiny_vae(), default_settings=InpaintSettings(strength=0.5, prefill="telea")
    )
    own.set_progress_bar_config(disable=True)
    client = make_client(ModelSet.ready_with("own", own))
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["own"]["defaults"] == own.default_settings.to_dict()
    assert listed["opencv-telea"]["defaults"]["strength"] == InpaintSettings().strength
    accept = {"Accept": "application/json"}
    answer = client.post("/v1/inpaint", files=files(), data={"steps": "4"}, headers=accept)
    assert answer.json()["settings"] | {"seed": 0} == (
        InpaintSettings(steps=4, strength=0.5, prefill="telea").to_dict()
    )
    given = client.post(
        "/v1/inpaint", files=files(), data={"steps": "4", "prefill": "none"}, headers=accept
    )
    assert given.json()["settings"]["prefill"] == "none"
    assert given.json()["settings"]["strength"] == 0.5


def test_inpaint_json_both_ways(client):
    settings = {"steps": 3, "seed": 11, "dilation": 5, "paste": "compensate"}
    by_form = client.post(
        "/v1/inpaint", files=files(), data={k: str(v) for k, v in settings.items()}
    )
    body = {
        "image": base64.b64encode(png(photo())).decode(),
        "mask": "data:image/png;base64," + base64.b64encode(png(box_mask())).decode(),
        **settings,
    }
    as_png = client.post("/v1/inpaint", json=body)
    assert as_png.headers["content-type"] == "image/png"
    as_json = client.post("/v1/inpaint", json=body, headers={"Accept": "application/json"})
    assert as_json.headers["content-type"] == "application/json"
    answer = as_json.json()
    assert answer["seed"] == 11 and answer["model"] == "tiny"
    assert answer["settings"]["paste"] == "compensate" and answer["settings"]["dilation"] == 5
    assert (answer["width"], answer["height"]) == SIZE
    assert set(answer["timings"]) >= {"queue", "prepare", "denoise", "total"}
    same = [
        decode(by_form.content),
        decode(as_png.content),
        decode(base64.b64decode(answer["image"])),
    ]
    np.testing.assert_array_equal(same[0], same[1])
    np.testing.assert_array_equal(same[0], same[2])


def test_accept_header_preferences(client):
    def kind(accept):
        response = client.post(
            "/v1/inpaint", files=files(), data={"steps": "2"}, headers={"Accept": accept}
        )
        return response.headers["content-type"]

    assert kind("*/*") == "image/png"
    assert kind("image/png, application/json;q=0.5") == "image/png"
    assert kind("application/json, image/png;q=0.9") == "application/json"


def test_empty_mask_returns_the_photo_with_a_warning(client):
    empty = Image.new("L", SIZE, 0)
    answer = client.post("/v1/inpaint", files=files(mask=empty), data={"steps": "2"})
    assert answer.status_code == 200
    assert "mask is empty" in answer.headers["X-Warnings"]
    np.testing.assert_array_equal(decode(answer.content), np.asarray(photo()))


def test_opencv_models(client):
    for name in ("opencv-telea", "opencv-ns"):
        answer = client.post("/v1/inpaint", files=files(), data={"model": name})
        assert answer.status_code == 200 and answer.headers["X-Model"] == name
        result = decode(answer.content)
        far = far_from(box_mask())
        np.testing.assert_array_equal(result[far], np.asarray(photo())[far])
        assert not np.array_equal(result[~far], np.asarray(photo())[~far])


# ---------------------------------------------------------------------------- jobs
def test_job_lifecycle_and_editing_the_result(client, pipe):
    created = client.post("/v1/jobs", files=files(), data={"steps": "4", "seed": "3"})
    assert created.status_code == 202
    job = created.json()
    assert created.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running")
    events = events_of(client, job["id"])
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "done"
    steps = [data["step"] for name, data in events if name == "step"]
    assert steps == [1, 2, 3]  # int(4 × strength 0.99) denoising steps, in order
    status = client.get(f"/v1/jobs/{job['id']}").json()
    assert status["state"] == "done" and (status["step"], status["steps"]) == (3, 3)
    assert status["settings"]["seed"] == 3 and status["position"] is None
    assert status["image_id"] == events[-1][1]["image_id"]

    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["X-Image-Id"] == status["image_id"]
    expected = pipe(photo(), box_mask(), settings=InpaintSettings(steps=4, seed=3)).images[0]
    np.testing.assert_array_equal(decode(result.content), np.asarray(expected))
    stored = client.get(f"/v1/images/{status['image_id']}")
    assert stored.content == result.content
    as_json = client.get(f"/v1/jobs/{job['id']}/result", headers={"Accept": "application/json"})
    assert base64.b64decode(as_json.json()["image"]) == result.content

    # the next edit starts from the result, without sending it again
    second_mask = box_mask(box=(5, 5, 25, 25))
    follow = client.post(
        "/v1/jobs",
        files={"mask": ("m.png", png(second_mask))},
        data={"image_id": status["image_id"], "steps": "2"},
    ).json()
    assert events_of(client, follow["id"])[-1][0] == "done"
    edited = decode(client.get(f"/v1/jobs/{follow['id']}/result").content)
    untouched = far_from(second_mask, scale=SIZE[0] / 64)
    np.testing.assert_array_equal(edited[untouched], decode(result.content)[untouched])

    # DELETE of a finished job forgets it and its result
    assert client.delete(f"/v1/jobs/{job['id']}").json()["state"] == "done"
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_uploaded_image_is_sent_once(client):
    upload = client.post("/v1/images", files={"image": ("p.png", png(photo()))})
    assert upload.status_code == 201
    image = upload.json()
    assert (image["width"], image["height"]) == SIZE
    raw = client.post("/v1/images", content=png(photo()), headers={"Content-Type": "image/png"})
    assert raw.status_code == 201 and raw.json()["id"] != image["id"]
    answers = [
        client.post(
            "/v1/inpaint",
            files={"mask": ("m.png", png(box_mask()))},
            data={"image_id": image["id"], "steps": "2", "seed": str(seed)},
        )
        for seed in (1, 2)
    ]
    assert all(answer.status_code == 200 for answer in answers)
    assert answers[0].content != answers[1].content
    np.testing.assert_array_equal(
        decode(client.get(f"/v1/images/{image['id']}").content), np.asarray(photo())
    )


def test_kept_images_are_bounded_in_bytes_and_time(make_client):
    one = SIZE[0] * SIZE[1] * 3  # an upload is kept decoded, as RGB
    client = make_client(store_bytes=int(2.5 * one))

    def upload() -> str:
        return client.post("/v1/images", files={"image": ("p.png", png(photo()))}).json()["id"]

    def kept(image_id: str) -> bool:
        return client.get(f"/v1/images/{image_id}").status_code == 200

    first, second = upload(), upload()
    assert kept(first)  # now the most recently used
    third = upload()
    assert kept(first) and kept(third) and not kept(second)
    assert client.get("/healthz").json()["store"] == {"images": 2, "bytes": 2 * one}

    brief = make_client(keep_seconds=0.3)
    image = brief.post("/v1/images", files={"image": ("p.png", png(photo()))}).json()["id"]
    job = brief.post("/v1/jobs", files=files(), data={"model": "opencv-telea"}).json()
    assert events_of(brief, job["id"])[-1][0] == "done"
    time.sleep(0.5)
    assert brief.get(f"/v1/images/{image}").status_code == 404
    assert brief.get(f"/v1/jobs/{job['id']}").status_code == 404


# ---------------------------------------------------------------------------- errors
def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert "\n" not in body["detail"]
    return body["detail"]


def test_undecodable_and_non_images(client):
    truncated = png(photo())[:200]
    error_of(
        client.post("/v1/inpaint", files=files() | {"image": ("p.png", truncated)}),
        400,
        "bad_image",
    )
    error_of(
        client.post("/v1/inpaint", json={"image": "not base64!", "mask": "x"}), 400, "bad_image"
    )
    error_of(
        client.post("/v1/inpaint", content=b"{", headers={"Content-Type": "application/json"}),
        400,
        "bad_request",
    )
    text = ("notes.txt", b"just some text, not a picture")
    error_of(client.post("/v1/inpaint", files=files() | {"mask": text}), 415, "not_an_image")
    error_of(client.post("/v1/images", files={"image": text}), 415, "not_an_image")
    error_of(
        client.post("/v1/inpaint", content=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` × ``height`` pixels, with almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_refused_from_the_header(client):
    bomb = bomb_png(100_000, 100_000)
    clock = time.perf_counter()
    response = client.post("/v1/inpaint", files=files() | {"image": ("bomb.png", bomb)})
    elapsed = time.perf_counter() - clock
    error_of(response, 413, "too_many_pixels")
    # decoding 10^10 pixels would take minutes and 30 GB; the header alone takes milliseconds
    assert elapsed < 1.0
    error_of(client.post("/v1/images", files={"image": ("bomb.png", bomb)}), 413, "too_many_pixels")


def test_pixel_and_byte_limits(make_client):
    client = make_client(max_pixels=SIZE[0] * SIZE[1] - 1, max_upload_bytes=64 * 1024)
    detail = error_of(client.post("/v1/inpaint", files=files()), 413, "too_many_pixels")
    assert "96x64" in detail
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)
    upload = png(Image.fromarray(big))
    assert len(upload) > 64 * 1024
    error_of(
        client.post("/v1/images", content=upload, headers={"Content-Type": "image/png"}),
        413,
        "too_large",
    )

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for start in range(0, len(upload), 8192):
            yield upload[start : start + 8192]

    error_of(
        client.post("/v1/images", content=chunks(), headers={"Content-Type": "image/png"}),
        413,
        "too_large",
    )


def test_bad_settings_use_the_command_lines_messages(client):
    detail = error_of(
        client.post("/v1/inpaint", files=files(), data={"steps": "0"}), 422, "invalid_settings"
    )
    with pytest.raises(InputError) as expected:
        InpaintSettings.from_mapping({"steps": "0"})
    assert detail == str(expected.value)
    error_of(
        client.post("/v1/inpaint", files=files(), data={"strategy": "sideways"}),
        422,
        "invalid_settings",
    )
    error_of(
        client.post("/v1/inpaint", files=files(), data={"bogus": "1"}), 422, "invalid_settings"
    )
    error_of(
        client.post("/v1/inpaint", json={"mask": "", "steps": "many"}), 422, "invalid_settings"
    )
    error_of(
        client.post("/v1/inpaint", files=files(), data={"model": "dall-e"}), 422, "unknown_model"
    )
    error_of(
        client.post("/v1/inpaint", files={"image": ("p.png", png(photo()))}), 422, "invalid_request"
    )


def test_mask_size_mismatch(client):
    small = box_mask(size=(48, 32), box=(10, 10, 20, 20))
    detail = error_of(
        client.post("/v1/inpaint", files=files(mask=small)), 422, "mask_size_mismatch"
    )
    assert "48x32" in detail and "96x64" in detail
    resized = client.post(
        "/v1/inpaint", files=files(mask=small), data={"resize_mask": "true", "steps": "2"}
    )
    assert resized.status_code == 200


def test_unknown_ids(client):
    error_of(client.get("/v1/jobs/nope"), 404, "unknown_job")
    error_of(client.get("/v1/jobs/nope/result"), 404, "unknown_job")
    error_of(client.get("/v1/jobs/nope/events"), 404, "unknown_job")
    error_of(client.delete("/v1/jobs/nope"), 404, "unknown_job")
    error_of(client.get("/v1/images/nope"), 404, "unknown_image")
    expired = client.post(
        "/v1/inpaint", files={"mask": ("m.png", png(box_mask()))}, data={"image_id": "nope"}
    )
    error_of(expired, 404, "unknown_image")
    error_of(client.get("/no/such/page"), 404, "not_found")


def test_queue_full_is_429_with_retry_after(make_client):
    client = make_client(queue_size=1)
    first = client.post("/v1/jobs", files=files(), data=LONG).json()
    wait_for(lambda: running(client, first["id"]))
    second = client.post("/v1/jobs", files=files(), data=LONG)
    assert second.status_code == 202 and second.json()["position"] == 1
    full = client.post("/v1/jobs", files=files(), data=LONG)
    error_of(full, 429, "queue_full")
    assert int(full.headers["Retry-After"]) >= 1
    error_of(client.post("/v1/inpaint", files=files()), 429, "queue_full")
    # the instant fills have a lane of their own
    assert client.post("/v1/inpaint", files=files(), data={"model": "opencv-ns"}).status_code == 200
    for job in (second.json(), first):
        client.delete(f"/v1/jobs/{job['id']}")
    assert events_of(client, first["id"])[-1][0] == "cancelled"


def test_cancel_a_queued_and_a_running_job(client):
    first = client.post("/v1/jobs", files=files(), data=LONG).json()
    wait_for(lambda: running(client, first["id"]))
    second = client.post("/v1/jobs", files=files(), data=LONG).json()
    assert client.get(f"/v1/jobs/{second['id']}").json()["position"] == 1

    cancelled = client.delete(f"/v1/jobs/{second['id']}").json()
    assert cancelled["state"] == "cancelled"
    assert [name for name, _ in events_of(client, second["id"])] == ["queued", "cancelled"]

    asked = client.delete(f"/v1/jobs/{first['id']}").json()
    assert asked["state"] == "running" and asked["cancelling"]
    events = events_of(client, first["id"])
    assert events[-1][0] == "cancelled"
    stopped_at = events[-1][1]["step"]
    assert 1 <= stopped_at < events[-1][1]["steps"]
    assert client.get(f"/v1/jobs/{first['id']}").json()["state"] == "cancelled"
    error_of(client.get(f"/v1/jobs/{first['id']}/result"), 409, "cancelled")
    # the worker goes on with the next job
    after = client.post("/v1/jobs", files=files(), data={"steps": "2"}).json()
    assert events_of(client, after["id"])[-1][0] == "done"


def test_concurrent_clients_get_their_own_results_and_events(client, pipe):
    jobs = {
        "astronaut": (photo(data.astronaut), 3, 5),  # (photo, seed, steps)
        "coffee": (photo(data.coffee), 4, 7),
    }
    outcomes, errors = {}, []
    start = threading.Barrier(len(jobs))

    def one_client(name):
        try:
            image, seed, steps = jobs[name]
            start.wait()
            created = client.post(
                "/v1/jobs", files=files(image=image), data={"seed": str(seed), "steps": str(steps)}
            ).json()
            events = events_of(client, created["id"])
            result = client.get(f"/v1/jobs/{created['id']}/result")
            outcomes[name] = (created["id"], events, decode(result.content))
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for name, (image, seed, steps) in jobs.items():
        job_id, events, result = outcomes[name]
        denoising = InpaintSettings(steps=steps).denoising_steps
        names = [event for event, _ in events]
        assert names[0] == "queued" and names[-1] == "done"
        assert set(names) == {"queued", "running", "step", "done"}
        assert [d["step"] for e, d in events if e == "step"] == list(range(1, denoising + 1))
        assert all(d["steps"] == denoising for e, d in events if e == "step")
        assert events[-1][1]["seed"] == seed
        expected = pipe(image, box_mask(), settings=InpaintSettings(steps=steps, seed=seed)).images[
            0
        ]
        np.testing.assert_array_equal(result, np.asarray(expected))


def test_concurrent_synchronous_requests(client, pipe):
    seeds = (21, 22, 23)
    answers = {}

    def request(seed):
        answers[seed] = client.post(
            "/v1/inpaint", files=files(), data={"seed": str(seed), "steps": "2"}
        )

    threads = [threading.Thread(target=request, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for seed in seeds:
        assert answers[seed].status_code == 200 and answers[seed].headers["X-Seed"] == str(seed)
        expected = pipe(photo(), box_mask(), settings=InpaintSettings(steps=2, seed=seed)).images[0]
        np.testing.assert_array_equal(decode(answers[seed].content), np.asarray(expected))


def test_events_resume_after_the_last_seen(client):
    job = client.post("/v1/jobs", files=files(), data={"steps": "3"}).json()
    everything = events_of(client, job["id"])
    with client.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "2"}
    ) as stream:
        rest = [
            line[len("event: ") :] for line in stream.iter_lines() if line.startswith("event: ")
        ]
    assert rest == [name for name, _ in everything[3:]]


# ---------------------------------------------------------------------------- the web boundary
def test_foreign_pages_and_hosts_are_refused(make_client, pipe):
    client = make_client()
    own = client.post(
        "/v1/images",
        files={"image": ("p.png", png(photo()))},
        headers={"Origin": "http://testserver"},
    )
    assert own.status_code == 201
    error_of(
        client.post("/v1/jobs", files=files(), headers={"Origin": "https://evil.example"}),
        403,
        "foreign_origin",
    )
    assert (
        "access-control-allow-origin"
        not in client.get("/v1/models", headers={"Origin": "https://evil.example"}).headers
    )

    allowed = make_client(cors_origins=("https://app.example",))
    preflight = allowed.options(
        "/v1/jobs",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    answer = allowed.post(
        "/v1/inpaint", files=files(), data={"steps": "2"}, headers={"Origin": "https://app.example"}
    )
    assert (
        answer.status_code == 200
        and "x-seed" in answer.headers["access-control-expose-headers"].lower()
    )

    local = TestClient(
        create_app(ModelSet.ready_with("tiny", pipe), allowed_hosts=("127.0.0.1", "localhost"))
    )
    error_of(local.get("/healthz"), 400, "bad_host")
    assert local.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200


def test_openapi_documents_every_response(client):
    spec = client.get("/openapi.json").json()
    inpaint = spec["paths"]["/v1/inpaint"]["post"]
    assert set(inpaint["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    form = inpaint["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {row["name"] for row in InpaintSettings.describe()} <= set(form)
    assert form["steps"]["default"] == InpaintSettings().steps and form["steps"]["minimum"] == 1
    assert set(inpaint["responses"]["200"]["content"]) == {"image/png", "application/json"}
    assert {"400", "413", "415", "422", "429", "503"} <= set(inpaint["responses"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                assert response.get("content") or status == "204", (method, path, status)
    assert client.get("/docs").status_code == 200


def test_api_docs_load_nothing_from_the_internet(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assets = re.findall(r"""(?:src|href)=['"](/docs-assets/[^'"]+)""", page.text)
    assert len(assets) == 3  # the script, the style sheet and the icon
    for url in assets:
        assert client.get(url).status_code == 200 and client.get(url).content
    assert client.get("/docs-assets/index.html").status_code == 404


def test_ui_is_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "cdn" not in page.text.lower()
    script = client.get("/static/js/main.js")
    assert script.headers["content-type"].startswith("text/javascript")
    for sneaky in ("/static/../app.py", "/static/%2e%2e/app.py", "/static//etc/passwd"):
        assert client.get(sneaky).status_code == 404

"""The browser UI, driven in Debian's Chromium by Playwright against a real ``moebius serve``
with the bundled demo model: open a real photo, paint over an object, run, follow the progress,
get the result; undo and redo; the before/after wipe; the mask tools. Never downloads a browser:
without /usr/bin/chromium (``apt-get install chromium``, as .ci/run does) it is skipped.

``MOEBIUS_UPDATE_DOCS=1`` also writes the screenshot the README shows
(docs/images/serve-ui.jpg)."""

import base64
import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import far_from
from PIL import Image
from skimage import data

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "serve-ui.jpg"
VIEWPORT = {"width": 1280, "height": 800}
# the right-hand lightning tower of scikit-image's rocket photo (held out from the demo's training)
TOWER_X, TOWER_TOP, TOWER_BOTTOM, BRUSH = 452, 112, 372, 64
# the demo model's own defaults: 20 steps at strength 0.25 from a Telea-filled hole, no guidance
DENOISING_STEPS = 5  # int(20 × 0.25)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def server(demo_server):
    return demo_server  # the bundled demo model, as a fresh clone serves it offline


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    problems = []
    page.requests = []  # (method, path) of every request the page makes
    page.on("request", lambda request: page.requests.append((request.method, request.url)))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='true']")
    yield page
    context.close()
    assert not problems, problems  # script errors, failed requests, CSP violations


@pytest.fixture(scope="module")
def rocket(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "rocket.png"
    Image.fromarray(data.rocket()).save(path)
    return path


def wait_until(page, script: str, timeout: float = 60.0):
    """Poll a page expression (the UI's Content-Security-Policy forbids Playwright's
    wait_for_function, which evaluates strings inside the page)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.05)


def open_photo(page, path: Path, size: tuple[int, int]):
    page.set_input_files("#file-input", str(path))
    wait_until(
        page, f"document.querySelector('#image-info').textContent === '{size[0]} × {size[1]}'"
    )


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of an image pixel, from where the photo is drawn."""
    box = page.locator("#image-layer").bounding_box()
    width = page.evaluate("document.querySelector('#image-layer').width")
    scale = box["width"] / width
    return box["x"] + x * scale, box["y"] + y * scale


def drag(page, points, modifiers=()):
    for key in modifiers:
        page.keyboard.down(key)
    page.mouse.move(*to_screen(page, *points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*to_screen(page, *point), steps=4)
    page.mouse.up()
    for key in modifiers:
        page.keyboard.up(key)


def saved(page, button: str) -> Image.Image:
    with page.expect_download() as download:
        page.click(button)
    return Image.open(download.value.path()).copy()


def saved_mask(page) -> np.ndarray:
    return np.asarray(saved(page, "#download-mask").convert("L")) >= 128


def shown(page) -> np.ndarray:
    """The pixels of the canvas that shows the photo."""
    url = page.evaluate("document.querySelector('#image-layer').toDataURL('image/png')")
    return np.asarray(
        Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")
    )


def test_remove_an_object(page, rocket, tmp_path):
    original = np.asarray(Image.open(rocket).convert("RGB"))
    height, width = original.shape[:2]
    open_photo(page, rocket, (width, height))
    np.testing.assert_array_equal(shown(page), original)

    # the panel built from /v1/settings shows the demo model's own defaults (GET /v1/models)
    wait_until(page, "document.querySelector('#setting-strength').value === '0.25'")
    assert page.input_value("#setting-steps") == "20"
    assert page.input_value("#setting-guidance") == "1"
    assert page.locator("input[name=setting-prefill]:checked").get_attribute("value") == "telea"
    page.locator("#brush-size").fill(str(BRUSH))
    drag(page, [(TOWER_X, y) for y in range(TOWER_TOP, TOWER_BOTTOM + 1, 20)])
    mask = saved_mask(page)
    assert mask[TOWER_TOP:TOWER_BOTTOM, TOWER_X - BRUSH // 3 : TOWER_X + BRUSH // 3].all()
    assert not mask[:, : TOWER_X - BRUSH].any() and not mask[: TOWER_TOP - BRUSH].any()

    # record every progress state the page shows
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const box = document.querySelector('#progress');
            new MutationObserver(() => window.progressSeen.push(`${box.dataset.step}/${box.dataset.steps}`))
                .observe(box, {attributes: true, attributeFilter: ['data-step', 'data-steps']});
        }"""
    )
    page.keyboard.press("Shift+R")
    wait_until(page, "document.querySelectorAll('#history li').length === 2")
    seen = page.evaluate("window.progressSeen")
    steps = [int(item.split("/")[0]) for item in seen if item.endswith(f"/{DENOISING_STEPS}")]
    assert steps == list(range(DENOISING_STEPS + 1)), seen  # step 0 of 5 (running), 1 … 5

    result = np.asarray(saved(page, "#download-result").convert("RGB"))
    np.testing.assert_array_equal(shown(page), result)
    far = far_from(mask * 255, scale=width / 128)  # a margin 4x wider than the demo needs
    np.testing.assert_array_equal(result[far], original[far])
    # the tower is gone: where the stroke covered it (pixels far from the colour of the sky
    # around the stroke), the result is near that colour
    # the tower is gone: along the stroke, above the lights at its foot, its struts' edges
    # (the grey level's change from pixel to pixel across the row) are smoothed away
    rows = slice(TOWER_TOP, TOWER_BOTTOM - BRUSH)
    columns = slice(TOWER_X - BRUSH // 3, TOWER_X + BRUSH // 3)

    def edges(pixels: np.ndarray) -> float:
        grey = np.asarray(Image.fromarray(pixels).convert("L"), dtype=float)[rows, columns]
        return np.abs(np.diff(grey, axis=1)).mean()

    assert edges(result) < 0.5 * edges(original), (edges(result), edges(original))
    assert "seed 0" in page.locator("#status").inner_text()

    # undo brings back the photo and its mask; redo the result
    page.keyboard.press("Control+z")
    np.testing.assert_array_equal(saved_mask(page), mask)
    np.testing.assert_array_equal(shown(page), original)
    page.keyboard.press("Control+Shift+z")
    np.testing.assert_array_equal(shown(page), result)
    assert not saved_mask(page).any()

    # a stroke on the result edits the result; undo takes just that stroke back
    drag(page, [(100, 100), (140, 120)])
    assert saved_mask(page)[110, 120]
    page.keyboard.press("Control+z")
    assert not saved_mask(page).any()

    # the wipe: before on the left of the divider, after on its right
    page.keyboard.press("c")
    assert page.locator("#wipe").is_visible()
    page.mouse.click(*to_screen(page, TOWER_X, (TOWER_TOP + TOWER_BOTTOM) / 2))
    time.sleep(0.3)  # Chromium restyles the button the pointer left on a later frame
    screenshot = page.screenshot(path=str(tmp_path / "serve-ui.png"))
    check_wipe(
        page, np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")), original, result, mask
    )
    if os.environ.get("MOEBIUS_UPDATE_DOCS"):
        Image.open(io.BytesIO(screenshot)).convert("RGB").save(DOCS_SCREENSHOT, quality=88)

    # the photo went to the server once; the run sent only the mask and named the photo
    posts = [url.split("/", 3)[3] for method, url in page.requests if method == "POST"]
    assert posts == ["v1/images", "v1/jobs"], posts

    page.keyboard.press("?")
    assert page.locator("#help-dialog").is_visible()
    assert "Shift" in page.locator("#help-dialog").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#help-dialog").is_visible()


def check_wipe(page, screenshot, before, after, mask):
    """In the hole, screen pixels left of the divider match the photo before, those right of it
    the result (each nearer to its own than to the other)."""
    box = page.locator("#image-layer").bounding_box()
    scale = box["width"] / before.shape[1]
    rows = np.arange(TOWER_TOP + 20, TOWER_BOTTOM - 20)
    for columns, own, other in (
        (np.arange(TOWER_X - 24, TOWER_X - 4), before, after),
        (np.arange(TOWER_X + 4, TOWER_X + 24), after, before),
    ):
        ys, xs = np.meshgrid(rows, columns, indexing="ij")
        assert mask[ys, xs].all()
        # Only where the photo and the fill differ clearly (the tower's struts against the sky
        # filled in) does the screen tell them apart beyond the browser's resampling.
        telling = np.abs(own[ys, xs].astype(int) - other[ys, xs]).mean(axis=-1) > 25
        assert telling.sum() >= 20
        ys, xs = ys[telling], xs[telling]
        screen = screenshot[
            np.round(box["y"] + (ys + 0.5) * scale).astype(int),
            np.round(box["x"] + (xs + 0.5) * scale).astype(int),
        ].astype(int)
        to_own = np.abs(screen - own[ys, xs]).mean()
        to_other = np.abs(screen - other[ys, xs]).mean()
        assert to_own < to_other / 2, (to_own, to_other, telling.sum())


def test_cancel_from_the_page(page, rocket, server):
    open_photo(page, rocket, (640, 427))
    page.fill("#setting-steps", "1000")
    drag(page, [(TOWER_X, TOWER_TOP), (TOWER_X, TOWER_BOTTOM)])
    page.click("#run")
    wait_until(page, "Number(document.querySelector('#progress').dataset.step) >= 1")
    page.keyboard.press("Escape")
    assert page.locator("#progress").is_hidden()
    assert page.locator("#status").inner_text() == "Cancelled."
    deadline = time.monotonic() + 30  # the server stops it before its next step
    while httpx.get(f"{server.url}/healthz").json()["queues"]["diffusion"]["running"]:
        assert time.monotonic() < deadline, "the cancelled job still runs"
        time.sleep(0.1)
    assert page.locator("#history li").count() == 1


def test_mask_tools(page, rocket):
    open_photo(page, rocket, (640, 427))
    page.keyboard.press("r")
    drag(page, [(100, 100), (200, 180)])
    rectangle = saved_mask(page)
    assert rectangle[105:175, 105:195].all() and rectangle.sum() == pytest.approx(
        100 * 80, rel=0.05
    )

    page.keyboard.press("l")
    drag(page, [(300, 100), (400, 100), (350, 200)])  # a triangle, closed by the lasso
    lasso = saved_mask(page) & ~rectangle
    assert (
        lasso[120, 350]
        and not lasso[190, 310]
        and lasso.sum() == pytest.approx(100 * 100 / 2, rel=0.08)
    )

    drag(page, [(120, 120), (180, 120), (180, 160), (120, 160)], modifiers=["Alt"])  # subtracts
    assert not saved_mask(page)[140, 150]

    page.keyboard.press("g")
    grown = saved_mask(page)
    assert grown.sum() > (rectangle | lasso).sum() - 60 * 40
    page.keyboard.press("i")
    inverted = saved_mask(page)
    np.testing.assert_array_equal(inverted, ~grown)
    page.keyboard.press("i")
    page.keyboard.press("s")
    assert saved_mask(page).sum() < grown.sum()

    page.keyboard.press("e")
    page.locator("#brush-size").fill("30")
    drag(page, [(110, 110), (190, 110)])
    assert not saved_mask(page)[110, 150]

    page.keyboard.press("Delete")
    assert not saved_mask(page).any()
    for _ in range(8):  # clear, eraser, shrink, invert twice, grow, subtraction, lasso
        page.keyboard.press("Control+z")
    np.testing.assert_array_equal(saved_mask(page), rectangle)
    page.keyboard.press("Control+y")
    assert saved_mask(page).sum() > rectangle.sum()

    # a mask file replaces the mask (white = repaint), as the server reads masks
    uploaded = np.zeros((427, 640), np.uint8)
    uploaded[300:400, 500:600] = 255
    buffer = io.BytesIO()
    Image.fromarray(uploaded).save(buffer, format="PNG")
    page.set_input_files(
        "#mask-input",
        files=[{"name": "m.png", "mimeType": "image/png", "buffer": buffer.getvalue()}],
    )
    wait_until(page, "!document.querySelector('#undo').disabled")
    time.sleep(0.2)
    np.testing.assert_array_equal(saved_mask(page), uploaded > 0)


def test_zoom_and_pan(page, rocket):
    open_photo(page, rocket, (640, 427))
    before = page.locator("#image-layer").bounding_box()
    page.mouse.move(before["x"] + 100, before["y"] + 100)
    page.mouse.wheel(0, -400)
    wait_until(
        page,
        f"document.querySelector('#image-layer').getBoundingClientRect().width > {before['width'] * 1.5}",
    )
    zoomed = page.locator("#image-layer").bounding_box()
    # the pixel under the pointer stays under it
    assert (100 / before["width"]) == pytest.approx(
        (before["x"] + 100 - zoomed["x"]) / zoomed["width"], abs=0.01
    )
    page.keyboard.down(" ")
    page.mouse.down()
    page.mouse.move(before["x"] + 250, before["y"] + 180, steps=5)
    page.mouse.up()
    page.keyboard.up(" ")
    panned = page.locator("#image-layer").bounding_box()
    assert panned["x"] == pytest.approx(zoomed["x"] + 150, abs=2)
    assert not saved_mask(page).any()  # panning paints nothing
    page.keyboard.press("0")
    assert page.locator("#image-layer").bounding_box()["width"] == pytest.approx(
        before["width"], abs=1
    )


def test_touch_paints_and_two_fingers_zoom(browser, server, rocket):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True, has_touch=True)
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='true']")
    open_photo(page, rocket, (640, 427))
    touch = context.new_cdp_session(page)

    def fingers(kind: str, *points):
        spots = [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]
        touch.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": spots})

    start, end = to_screen(page, 100, 200), to_screen(page, 300, 200)
    fingers("touchStart", start)
    for step in range(1, 11):
        fingers("touchMove", (start[0] + (end[0] - start[0]) * step / 10, start[1]))
    fingers("touchEnd")
    painted = saved_mask(page)
    assert painted[200, 120:280].all() and not painted[350].any()

    width = page.locator("#image-layer").bounding_box()["width"]
    (cx, cy) = to_screen(page, 320, 213)
    fingers("touchStart", (cx - 40, cy), (cx + 40, cy))
    for step in range(1, 11):  # the fingers end 160 px apart instead of 80
        fingers("touchMove", (cx - 40 - 4 * step, cy), (cx + 40 + 4 * step, cy))
    fingers("touchEnd")
    assert page.locator("#image-layer").bounding_box()["width"] == pytest.approx(
        2 * width, rel=0.02
    )
    np.testing.assert_array_equal(saved_mask(page), painted)  # the pinch painted nothing
    context.close()


def test_open_by_drop_and_by_paste(page):
    def deliver(event: str, name: str, size: tuple[int, int]):
        buffer = io.BytesIO()
        Image.fromarray(data.chelsea()).resize(size).save(buffer, format="PNG")
        page.evaluate(
            """([event, name, encoded]) => {
                const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
                const files = new DataTransfer();
                files.items.add(new File([bytes], name, { type: "image/png" }));
                const init = { bubbles: true, cancelable: true };
                const fired = event === "paste"
                    ? new ClipboardEvent("paste", { ...init, clipboardData: files })
                    : new DragEvent("drop", { ...init, dataTransfer: files });
                document.querySelector("#viewport").dispatchEvent(fired);
            }""",
            [event, name, base64.b64encode(buffer.getvalue()).decode()],
        )

    deliver("drop", "dropped.png", (300, 200))
    wait_until(page, "document.querySelector('#image-info').textContent === '300 × 200'")
    deliver("paste", "pasted.png", (240, 160))
    wait_until(page, "document.querySelector('#image-info').textContent === '240 × 160'")

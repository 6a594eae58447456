"""The default model (``moebius inpaint`` without ``--model``) against a stand-in for the Hugging
Face Hub on the loopback address: downloaded once when online, then found in the cache; the
bundled demo, with a note saying why, when offline or when the Hub cannot be reached or refuses.
Nothing here touches the network or the real Hugging Face cache."""

import hashlib
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import huggingface_hub.constants as hub_constants
import numpy as np
import pytest
import torch
from helpers import TINY_YAML, tiny_model, tiny_vae
from PIL import Image
from skimage import data

from moebius.cli import main as cli_main
from moebius.errors import CheckpointError, InputError
from moebius.eval.weights import find_weights
from moebius.weights import (
    DEFAULT_REPO,
    OFFLINE_SWITCHES,
    default_model,
    locate,
    offline_switch,
)


class _Resolve(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub = self.server
        hub.requests.append((self.command, self.path))
        repo, _, rest = unquote(self.path).lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        content = hub.files.get(f"{repo}/{filename}") if revision == "main" else None
        status, error_code = hub.refuse or (200, None)
        if content is None and status == 200:
            status, error_code = 404, "EntryNotFound"
        self.send_response(status)
        if status != 200:
            self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # What huggingface_hub needs of a file: the commit it belongs to (its cache's snapshot
        # folder), an ETag (the blob's name) and the size.
        self.send_header("X-Repo-Commit", hashlib.sha1(repo.encode()).hexdigest())
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if send_body:
            self.wfile.write(content)

    def log_message(self, *args) -> None:
        pass


class StandInHub(ThreadingHTTPServer):
    """Just enough of the Hub's file-resolve protocol for huggingface_hub: HEAD and GET
    ``/{repo}/resolve/main/{path}`` for ``files`` ({"repo/path": bytes}), a 404 with the Hub's
    error code for anything else; ``refuse`` = (status, X-Error-Code) answers every request so."""

    def __init__(self, files: dict[str, bytes], refuse: tuple[int, str] | None = None):
        super().__init__(("127.0.0.1", 0), _Resolve)
        self.files, self.refuse = files, refuse
        self.requests: list[tuple[str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _torch_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def official_files() -> dict[str, bytes]:
    """The official layout with the tiny student and a tiny VAE in it."""
    vae = tiny_vae()
    return {
        "hustvl/Moebius/ft_places2/diffusion_pytorch_model.bin": _torch_bytes(
            tiny_model().state_dict()
        ),
        "hustvl/PixelHacker/vae/config.json": json.dumps(dict(vae.config)).encode(),
        "hustvl/PixelHacker/vae/diffusion_pytorch_model.bin": _torch_bytes(vae.state_dict()),
    }


@pytest.fixture
def hub_at(tmp_path, monkeypatch):
    """Sets huggingface_hub up as HF_HOME=tmp_path/hf and HF_ENDPOINT=<url> in the environment at
    start-up would: it reads both once, at import, so the settings derived from them are set
    here as well. Returns the function that points it at a URL."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    for name in OFFLINE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    # The first request of a process would also fetch the Hub's list of AI agents (telemetry).
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", True)

    def point_at(url: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(hub_constants, "ENDPOINT", url)
        template = url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)

    point_at(f"http://127.0.0.1:{_closed_port()}")  # no test reaches the real Hub by mistake
    return point_at


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _inpaint(tmp_path, name: str) -> int:
    """``moebius inpaint`` without ``--model``; the official repo's preset is the full-size
    student, so ``--model-config`` says the served weights are the tiny one."""
    Image.fromarray(data.coffee()).resize((96, 64)).save(tmp_path / "photo.png")
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 30:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    argv = ["inpaint", tmp_path / "photo.png", tmp_path / "mask.png", "-o", tmp_path / name]
    return cli_main([*map(str, argv), "--steps", "2", "--model-config", str(TINY_YAML)])


def test_downloads_the_official_weights_once_then_uses_the_cache(
    tmp_path, hub_at, official_files, capsys, monkeypatch
):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's bars, also without a terminal
    hub = StandInHub(official_files)
    hub_at(hub.url)
    try:
        assert _inpaint(tmp_path, "first.png") == 0
    finally:
        hub.stop()
    err = capsys.readouterr().err
    size = sum(map(len, official_files.values()))
    assert f"({size / 1e6:.1f} MB) into {tmp_path / 'hf' / 'hub'}" in err
    assert "ft_places2/diffusion_pytorch_model.bin: 100%" in err
    assert "moebius-demo" not in err
    resolve = {"/{}/{}/resolve/main/{}".format(*name.split("/", 2)) for name in official_files}
    assert sorted(path for method, path in hub.requests if method == "GET") == sorted(resolve)
    photo = np.asarray(Image.open(tmp_path / "photo.png"))
    first = np.asarray(Image.open(tmp_path / "first.png"))
    assert first.shape == photo.shape and not np.array_equal(first, photo)

    # The server is gone: the weights come from the cache, with no note and no download.
    assert default_model() == (DEFAULT_REPO, None)
    assert _inpaint(tmp_path, "second.png") == 0
    err = capsys.readouterr().err
    assert "downloading" not in err and "moebius-demo" not in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "second.png")), first)


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "MOEBIUS_OFFLINE"])
def test_offline_and_not_cached_gives_the_demo_without_asking_the_hub(
    hub_at, official_files, monkeypatch, switch
):
    hub = StandInHub(official_files)
    hub_at(hub.url)
    monkeypatch.setenv(switch, "1")
    try:
        model, note = default_model()
    finally:
        hub.stop()
    assert model == "moebius-demo"
    assert f"not in the Hugging Face cache and {switch} is set" in note
    assert hub.requests == []


@pytest.mark.parametrize(
    "refuse,why",
    [((404, "RepoNotFound"), "404 Client Error"), ((401, "RepoNotFound"), "401 Client Error")],
)
def test_a_refusing_hub_gives_the_demo_and_says_why(hub_at, official_files, refuse, why):
    hub = StandInHub(official_files, refuse=refuse)
    hub_at(hub.url)
    try:
        model, note = default_model()
    finally:
        hub.stop()
    assert model == "moebius-demo"
    assert "could not be downloaded from the Hugging Face Hub" in note and why in note
    assert "Repository Not Found for url" in note
    assert [method for method, _ in hub.requests] == ["HEAD"]  # nothing downloaded


def test_a_missing_file_gives_the_demo_before_anything_is_downloaded(hub_at, official_files):
    served = {k: v for k, v in official_files.items() if "PixelHacker" not in k}
    hub = StandInHub(served)
    hub_at(hub.url)
    try:
        model, note = default_model()
    finally:
        hub.stop()
    assert model == "moebius-demo" and "Entry Not Found for url" in note
    assert all(method == "HEAD" for method, _ in hub.requests)


def test_an_unreachable_hub_gives_the_demo_at_once(hub_at):
    hub_at(f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    model, note = default_model()
    assert model == "moebius-demo" and "could not be downloaded" in note
    assert time.monotonic() - start < 5


def test_a_silent_hub_gives_the_demo_after_the_etag_timeout(hub_at, monkeypatch):
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hub_at(f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        model, note = default_model()
    assert model == "moebius-demo" and "could not be downloaded" in note
    assert time.monotonic() - start < 5


@pytest.mark.usefixtures("hub_at")
def test_a_name_that_cannot_be_a_repo_id_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="cannot get no/such dir/ft_places2"):
        locate("no/such dir")


@pytest.mark.usefixtures("hub_at")  # for its clean environment
@pytest.mark.parametrize("switch", OFFLINE_SWITCHES)
def test_one_offline_switch_for_hub_and_metric_weights(tmp_path, monkeypatch, switch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MOEBIUS_WEIGHTS_DIR", raising=False)
    assert offline_switch() is None
    monkeypatch.setenv(switch, "on")
    assert offline_switch() == switch
    with pytest.raises(InputError, match="missing .* weights 'alexnet-owt-7be5be79.pth'"):
        find_weights("alexnet", tmp_path / "empty")

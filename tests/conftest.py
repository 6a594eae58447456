import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moebius.nn.engines import CACHE_ENV, MODE_ENV
from moebius.runtime import available_cores

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: harmless where xdist is absent
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per CPU this process may run on, hyperthreads included (xdist
    would count physical cores), since each worker runs its models on one thread."""
    return available_cores()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tests run tiny models, whose time is dominated by thread hand-offs: one thread is
    several times faster than two, more so on a busy machine, and the suite runs one worker per
    CPU. Session-wide, so that module fixtures and tests agree (thread counts change float
    summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def engines_off_the_user_cache(tmp_path_factory):
    """PyTorch's own kernels unless a test asks for others (moebius.nn.engines): tuning by
    timing would make results depend on machine load by float rounding, and its cache goes to a
    temporary folder rather than the user's. Set in the environment, so CLI subprocesses agree."""
    saved = {name: os.environ.get(name) for name in (MODE_ENV, CACHE_ENV)}
    os.environ[MODE_ENV] = "aten"
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("engine-cache"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_fixture() -> dict[str, torch.Tensor]:
    """The authors' tiny student fixture: weights under checkpoint keys plus __input__/__output__."""
    return load_file(str(FIXTURES / "moebius_tiny_a.safetensors"))


@pytest.fixture(scope="session")
def tiny_state_dict(tiny_fixture) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tiny_fixture.items() if not k.startswith("__")}


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return FIXTURES / "moebius_tiny_a.yaml"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """``moebius serve`` as on a fresh clone, offline: nothing in the Hugging Face cache, so it
    serves the bundled demo model. One process for the load test and the browser test."""
    from serving import DEMO_QUEUE, serve

    tmp = tmp_path_factory.mktemp("serve")
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf-home")}
    with serve(tmp, "--queue-size", str(DEMO_QUEUE), env=offline) as running:
        yield running

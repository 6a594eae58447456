"""``moebius serve``: the web app and REST service (FastAPI + uvicorn)."""

import argparse
import contextlib
import ipaddress
import socket
import sys

from moebius.errors import InputError
from moebius.loading import add_backend_args
from moebius.runtime import add_runtime_args

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_GRACE_SECONDS = 3  # open event streams may hold a shutdown this long


def register(subparsers: argparse._SubParsersAction) -> None:
    from moebius.serve.config import MB, ServeConfig

    defaults = ServeConfig()
    parser = subparsers.add_parser(
        "serve",
        help="object-removal web app and REST API",
        description="Serve a browser UI at / and a REST API (documented at /docs) for "
        "inpainting. One model is loaded (the same rules as moebius inpaint) plus OpenCV's "
        "opencv-telea and opencv-ns fills; diffusion jobs run one at a time (the instant fills "
        "in a queue of their own), and each user sees only their own jobs. Without --host it "
        "listens on 127.0.0.1 only. There is no authentication: on another address, anyone "
        "who can reach it can use it.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        default="auto",
        help="as for moebius inpaint: auto (official weights, else the bundled moebius-demo), "
        "moebius-demo, opencv-telea, opencv-ns, a folder or a Hub repo id, or with --backend "
        "onnxruntime|openvino a directory written by `moebius export` (default: auto)",
    )
    parser.add_argument(
        "--variant", default="ft_places2", help="weights variant (default: %(default)s)"
    )
    parser.add_argument("--model-config", help="model preset when it cannot be guessed")
    add_backend_args(parser)
    add_runtime_args(parser)
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.max_upload_bytes / MB,
        help="largest request body in MB (default: %(default)g)",
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=defaults.max_pixels,
        help="largest image, width x height, checked before decoding (default: %(default)d)",
    )
    limits.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help="jobs that may wait in each queue; more get 429 with Retry-After "
        "(default: %(default)d)",
    )
    limits.add_argument(
        "--keep-minutes",
        type=float,
        default=defaults.keep_seconds / 60,
        help="how long unused uploads, results and finished jobs are kept (default: %(default)g)",
    )
    limits.add_argument(
        "--store-mb",
        type=float,
        default=defaults.store_bytes / MB,
        help="memory for kept uploads and results, decoded; the least recently used go first "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://example.com) whose pages may call the API; repeat for "
        "more (default: none, only the server's own UI)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no request log")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from moebius.serve.config import MB, ServeConfig

    for name in ("max_upload_mb", "max_pixels", "queue_size", "keep_minutes", "store_mb"):
        if getattr(args, name) <= 0:
            raise InputError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    for origin in args.cors_origin:
        if origin == "*" or "://" not in origin:
            raise InputError(
                f"--cors-origin takes an origin like https://example.com, not {origin!r}"
            )
    return ServeConfig(
        max_upload_bytes=int(args.max_upload_mb * MB),
        max_pixels=args.max_pixels,
        queue_size=args.queue_size,
        keep_seconds=args.keep_minutes * 60,
        store_bytes=int(args.store_mb * MB),
        cors_origins=tuple(origin.rstrip("/") for origin in args.cors_origin),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(args: argparse.Namespace) -> int:
    from moebius.runtime import apply_runtime_args

    config = _config(args)
    runtime = apply_runtime_args(args)
    try:
        import uvicorn

        from moebius.serve.app import create_app
    except ImportError as exc:
        raise InputError(
            f"moebius serve needs FastAPI and uvicorn ({exc}); install them with "
            "pip install 'moebius[serve]'"
        ) from None
    from moebius.loading import load_pipeline
    from moebius.serve.models import ModelSet

    sock = _listen(args.host, args.port)
    url = _url(sock)
    failure: list[BaseException] = []

    def say(text: str) -> None:
        print(f"moebius serve: {text}", file=sys.stderr, flush=True)

    def load():
        say(f"loading {args.model} …")
        name, pipe = load_pipeline(
            args.model,
            args.variant,
            args.model_config,
            runtime,
            lambda note: say(f"note: {note}"),
            backend=args.backend,
        )
        pipe.set_progress_bar_config(disable=True)  # the UI and the API report progress
        say(f"serving {name} at {url} (API: {url}/docs)")
        return name, pipe

    def failed(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    models = ModelSet(args.model, load, on_failure=failed)
    local = _is_loopback(args.host)
    app = create_app(models, config, allowed_hosts=LOOPBACK_NAMES if local else None)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning" if args.quiet else "info",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    )
    say(f"listening on {url}")
    if not local:
        say(f"note: no authentication: anyone who can reach {url} can use this server")
    # uvicorn re-raises the Ctrl+C it has handled; here that is the normal way to stop
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if failure:
        raise failure[0]
    say("stopped")
    return 0

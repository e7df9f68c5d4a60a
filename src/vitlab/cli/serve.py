"""`vitlab serve`: the web page and HTTP API for a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitlab.cli.common import add_checkpoint_args, add_device_arg, add_precision_arg, number

HELP = "a web page and an HTTP API for a checkpoint: top-5 and attention rollout per image"

DESCRIPTION = """\
Serve a checkpoint (any file `vitlab predict` takes) on http://HOST:PORT/:

  /               the page: drop or choose images, see the top-5 classes and where the model
                  looked (attention rollout overlay, the raw rollout, or any block and head)
  /v1/predict     POST an image (multipart field `file`, or the raw bytes as the body);
                  ?topk=K&explain=true adds the rollout, every head's map and an overlay PNG
  /v1/model       the config, class names and preprocessing
  /healthz        liveness;  /openapi.json  the API's description (there is no /docs page:
                  FastAPI's loads from a CDN and is blank offline)

Concurrent requests are batched (at most --max-batch images, waiting at most --max-wait-ms for
more) by one inference worker. A body over --max-mb is answered 413, a file that is not an image
415, an unusable image (truncated or corrupt, a decompression bomb) 422, and more than
--max-queue waiting requests 503 with Retry-After; the server keeps serving after each. Every
error answer is JSON: {"error": "..."}. It binds to 127.0.0.1 unless --host says otherwise; a
port in use is an error before the model loads, and --port 0 takes a free port (the address
printed is the one served). Needs `pip install 'vitlab[serve]'`.
"""

EPILOG = """\
examples:
  vitlab serve --checkpoint runs/demo/last.safetensors
  vitlab serve --checkpoint ViT-B_16.npz --port 8080 --max-batch 32
  curl -F file=@shirt.png 'http://127.0.0.1:8000/v1/predict?topk=3'
"""


def port(text: str) -> int:
    """An argparse `type` for a TCP port, 0 to 65535."""
    value = number(int, 0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text}")
    return value


port.numeric = True  # type: ignore[attr-defined]  (the generated CLI test finds it)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(p, help="the weights to serve (any file vitlab.load_checkpoint reads)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=port, default=8000, help="port (default 8000; 0: any free one, printed)"
    )
    p.add_argument(
        "--max-batch", type=number(int, 1), default=16, metavar="N", help="images per batch (16)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=number(float, 0),
        default=5.0,
        metavar="MS",
        help="how long a batch waits for more requests (default 5 ms)",
    )
    p.add_argument(
        "--max-queue",
        type=number(int, 1),
        default=64,
        metavar="N",
        help="requests that may wait; more are answered 503 (default 64)",
    )
    p.add_argument(
        "--max-mb",
        type=number(float, 0, above=True),
        default=16.0,
        metavar="MB",
        help="largest request body; larger ones are answered 413 (default 16)",
    )
    p.add_argument("--name", help="the model's name on the page (default: the file's name)")
    add_precision_arg(p)
    add_device_arg(p)


def build(args: argparse.Namespace):
    """The application `run` serves (the tests build it without a server)."""
    from vitlab.cli.common import load_model, note_channels
    from vitlab.serve.app import MB, ServeConfig, create_app
    from vitlab.serve.engine import Engine

    model = load_model(args)
    note_channels(model)
    config = ServeConfig(
        max_bytes=int(args.max_mb * MB),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
    )
    name = args.name or Path(str(args.checkpoint)).name
    return create_app(Engine(model, name, precision=args.precision), config)


def run(args: argparse.Namespace) -> int:
    from vitlab.serve.server import address, require_uvicorn, reserve, serve

    require_uvicorn()
    sock = reserve(args.host, args.port)  # a taken port or a foreign host: before the loading
    try:
        app = build(args)
    except BaseException:
        sock.close()
        raise
    print(f"serving {app.state.engine.name} on {address(sock, args.host)} (Ctrl-C stops)")
    serve(app, args.host, sock, quiet=args.quiet)
    return 0

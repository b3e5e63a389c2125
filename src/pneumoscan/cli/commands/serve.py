"""`pneumoscan serve`: the model as a web service and page (FastAPI + uvicorn)."""

import argparse
import math

from rich.console import Console

from pneumoscan.cli.common import add_engine_option, add_model_option
from pneumoscan.errors import PneumoscanError

HELP = "the model as a web service and page (FastAPI + uvicorn)"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help=HELP,
        description="Serve a model over HTTP: a page at / to drop X-rays on, GET /health, GET /v1/model, POST "
                    "/v1/predict (multipart 'files'), OpenAPI docs at /docs. Research tool, not a diagnosis.")
    add_model_option(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted file, in MB")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="micro-batching: how long a request waits for others to share its batch")
    parser.add_argument("--max-queue", type=int, default=256, help="images waiting before answering 503")
    add_engine_option(parser, default=None)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    import logging

    import uvicorn

    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.serving.service import ServiceConfig, create_app

    if not (0 < args.port < 65536 and 0 < args.max_upload_mb < math.inf and args.max_queue >= 1
            and 0 <= args.max_wait_ms < math.inf):
        raise PneumoscanError("--port must be 1-65535, --max-upload-mb a positive number, --max-queue at least 1 "
                              f"and --max-wait-ms a number at least 0; got {args.port}, {args.max_upload_mb}, "
                              f"{args.max_queue} and {args.max_wait_ms}")
    bundle = load_bundle(args.model)
    config = ServiceConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_wait_ms=args.max_wait_ms,
                           max_queue=args.max_queue)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backend = None
    if args.engine not in (None, "torch") and args.exported is None:
        raise PneumoscanError(f"--engine {args.engine} needs --exported FILE (made by `pneumoscan export`)")
    if args.exported is not None and args.engine != "torch":
        from pneumoscan.serving.export import backend_for

        backend = backend_for(args.exported)
    app = create_app(bundle, name=str(args.model), config=config, backend=backend)
    console.print(f"serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops",
                  highlight=False, soft_wrap=True)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")

"""`pneumoscan serve`: the model as a web service and page (FastAPI + uvicorn)."""

import argparse

from rich.console import Console

from pneumoscan.cli.common import (
    add_engine_option,
    add_model_option,
    add_recipe_options,
    engine_for,
    recipe_settings,
)
from pneumoscan.config import ServeConfig

HELP = "the model as a web service and page (FastAPI + uvicorn)"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help=HELP,
        description="Serve a model over HTTP: a page at / to drop X-rays on, GET /health, GET /v1/model, POST "
                    "/v1/predict (multipart 'files'), OpenAPI docs at /docs. A --host other than loopback needs "
                    "API keys (--api-keys FILE or PNEUMOSCAN_API_KEYS). Research tool, not a diagnosis.")
    add_model_option(parser)
    add_recipe_options(parser, ServeConfig)
    add_engine_option(parser)
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages of this origin (e.g. https://app.example.org; repeatable) call the API from "
                             "a browser; default: no CORS headers at all")


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    import logging
    import math

    import uvicorn

    from pneumoscan.serving.exposure import check_exposure, check_origins
    from pneumoscan.serving.keys import open_key_store
    from pneumoscan.serving.service import ServiceConfig, create_app

    settings = recipe_settings(args, ServeConfig)
    origins = check_origins(args.cors_origin)
    keys = open_key_store(settings.api_keys)
    check_exposure(settings.host, keys is not None)  # before the model loads and long before anything binds
    config = ServiceConfig(max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
                           max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                           latency_budget_ms=settings.latency_budget_ms, decode_threads=settings.decode_threads,
                           rate_limit_per_minute=settings.rate_limit, cors_origins=origins)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = engine_for(args, console)
    app = create_app(engine, name=str(args.model), config=config, keys=keys)
    access = ("no API keys (this machine only)" if keys is None else
              f"{len(keys.keys)} API key(s), at most {settings.rate_limit} requests a minute each"
              if settings.rate_limit else f"{len(keys.keys)} API key(s), no rate limit")
    console.print(f"serving {args.model} with {engine.info.name} on http://{settings.host}:{settings.port}/ (API docs "
                  f"at /docs; {access}); Ctrl-C stops", highlight=False, soft_wrap=True)
    # SIGTERM: stop accepting, let accepted requests finish for at most --shutdown-timeout-s, then cancel what is
    # left (uploads still trickling in); without the bound one slow client holds the shutdown forever.
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s), timeout_keep_alive=5)

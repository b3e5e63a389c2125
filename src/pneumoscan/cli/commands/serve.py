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
                    "/v1/predict (multipart 'files'), OpenAPI docs at /docs. Research tool, not a diagnosis.")
    add_model_option(parser)
    add_recipe_options(parser, ServeConfig)
    add_engine_option(parser)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    import logging
    import math

    import uvicorn

    from pneumoscan.serving.service import ServiceConfig, create_app

    settings = recipe_settings(args, ServeConfig)
    config = ServiceConfig(max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
                           max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                           latency_budget_ms=settings.latency_budget_ms, decode_threads=settings.decode_threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = engine_for(args, console)
    app = create_app(engine, name=str(args.model), config=config)
    console.print(f"serving {args.model} with {engine.info.name} on http://{settings.host}:{settings.port}/ (API docs "
                  "at /docs); Ctrl-C stops", highlight=False, soft_wrap=True)
    # SIGTERM: stop accepting, let accepted requests finish for at most --shutdown-timeout-s, then cancel what is
    # left (uploads still trickling in); without the bound one slow client holds the shutdown forever.
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s), timeout_keep_alive=5)

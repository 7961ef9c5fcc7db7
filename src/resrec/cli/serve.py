"""``resrec serve``: the HTTP API and web page for one run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from resrec.cli.app import app
from resrec.errors import ConfigError

Opt = typer.Option

log = logging.getLogger("resrec.cli")


@app.command()
def serve(
    run: Annotated[
        Path, typer.Argument(help="Run directory written by 'resrec train'.", show_default=False)
    ],
    host: Annotated[
        str, Opt(help="Address to bind; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, Opt(min=1, max=65535, help="TCP port.")] = 8000,
    movies: Annotated[
        Path | None,
        Opt(help="Movie titles and genres; default: the release's file beside the run's ratings."),
    ] = None,
    workers: Annotated[
        int, Opt(min=1, help="Server processes, each with its own copy of the model.")
    ] = 1,
    threads: Annotated[
        int, Opt(min=1, help="torch threads per request; 1 scales best under concurrent load.")
    ] = 1,
    access_log: Annotated[
        bool, Opt("--access-log/--no-access-log", help="Log every request.")
    ] = False,
) -> None:
    """Serve the HTTP API (OpenAPI schema at /openapi.json) and the web page at /."""
    import torch
    import uvicorn

    from resrec.api import create_app
    from resrec.inference import Recommender

    if not run.is_dir():
        raise ConfigError(f"run directory {run} does not exist")
    torch.set_num_threads(threads)
    if workers > 1:
        # Each worker process loads the run itself, once, through the app factory.
        os.environ["RESREC_RUN"] = str(run)
        os.environ["RESREC_MOVIES"] = str(movies or "")
        os.environ["RESREC_THREADS"] = str(threads)
        target: object = "resrec.api:app_from_env"
        factory = True
    else:
        recommender = Recommender.load(run, movies_path=movies)
        log.info(
            "serving %s (%s, %d users, %d movies%s)",
            run,
            recommender.kind,
            recommender.n_users,
            recommender.n_movies,
            ", with titles" if recommender.movies is not None else ", no titles",
        )
        target = create_app(recommender)
        factory = False
    typer.echo(f"serving {run} on http://{host}:{port}/  (API schema: /openapi.json)", err=True)
    uvicorn.run(
        target,  # type: ignore[arg-type]
        host=host,
        port=port,
        workers=workers,
        factory=factory,
        access_log=access_log,
        log_level="info",
    )

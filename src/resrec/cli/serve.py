"""``resrec serve``: the HTTP API and web page for one run."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
from pathlib import Path
from typing import Annotated

import typer

from resrec.cli.app import app
from resrec.errors import ConfigError, counted, quoted

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
    port: Annotated[int, Opt(help="TCP port, 1 to 65535.")] = 8000,
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
    from resrec.inference.recommender import check_inference_model
    from resrec.run import check_run_dir, load_run

    check_run_dir(run)
    check_listen_address(host, port)
    torch.set_num_threads(threads)
    if workers > 1:
        # Checked here once, so that a run the workers cannot serve stops the command.
        check_inference_model(load_run(run).model, str(run))
        # Each worker process loads the run itself, once, through the app factory.
        os.environ["RESREC_RUN"] = str(run)
        os.environ["RESREC_MOVIES"] = str(movies or "")
        os.environ["RESREC_THREADS"] = str(threads)
        target: object = "resrec.api:app_from_env"
        factory = True
    else:
        recommender = Recommender.load(run, movies_path=movies)
        log.info(
            "serving %s (%s, %s, %s%s)",
            run,
            recommender.kind,
            counted(recommender.n_users, "user"),
            counted(recommender.n_movies, "movie"),
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


_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LISTEN_HINT = "use 127.0.0.1 to serve this machine only, or 0.0.0.0 to serve every network"


def check_listen_address(host: str, port: int) -> None:
    """Raise a :class:`ConfigError` unless the server could listen on ``host:port`` now.

    Checks the port's range and the host's spelling (an IP address or a host
    name), then binds a socket the way uvicorn will and closes it again, so
    an unknown host, an address of another machine, a port in use or one
    that needs more rights is reported before the model is loaded.
    """
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535; got {port}")
    _check_host_spelling(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as exc:
            raise ConfigError(
                f"--host {quoted(host)} cannot be resolved ({exc.strerror})", hint=_LISTEN_HINT
            ) from None
        except OSError as exc:
            raise _bind_error(exc, host, port) from None


def _check_host_spelling(host: str) -> None:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"--host {quoted(host)} is not a valid IPv6 address", hint=_LISTEN_HINT
            ) from None
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(
                f"--host {quoted(host)} is not a valid IPv4 address "
                "(four numbers from 0 to 255, separated by dots)",
                hint=_LISTEN_HINT,
            ) from None
        return
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(
            f"--host {quoted(host)} is not a valid host name or IP address "
            "(names are letters, digits and hyphens, in parts separated by single dots)",
            hint=_LISTEN_HINT,
        )


def _bind_error(exc: OSError, host: str, port: int) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} on {host} is already in use",
            hint="choose another --port, or stop the program that uses it",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConfigError(
            f"no permission to listen on port {port}",
            hint="ports below 1024 need administrator rights; choose --port 8000, for example",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"--host {host} is not an address of this machine", hint=_LISTEN_HINT)
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")

"""The Typer application, logging set-up and the error boundary."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from resrec.errors import ResrecError


class _Group(TyperGroup):
    """Turns a user's mistake (a :class:`ResrecError`) into a message and exit 1."""

    def invoke(self, ctx: Any) -> Any:  # a click context (typer vendors its own click)
        try:
            return super().invoke(ctx)
        except ResrecError as exc:
            typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
            if exc.hint:
                typer.echo(f"hint: {exc.hint}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="resrec",
    cls=_Group,
    help="Train, evaluate and serve a residual-network recommender on MovieLens ratings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def fail(message: str, hint: str | None = None, code: int = 1) -> None:
    """Print a one-line error (and a hint) to stderr and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``resrec`` command."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing was written", err=True)
        sys.exit(130)

"""``resrec download`` and ``resrec synth``: getting ratings to train on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resrec.cli.app import app
from resrec.errors import ConfigError, counted

Opt = typer.Option


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="Release: ml-100k, ml-1m, ml-10m, ml-20m, ...")],
    cache_dir: Annotated[Path | None, Opt(help="Where releases are kept.")] = None,
) -> None:
    """Download a MovieLens release from GroupLens, verify its checksum and unpack it."""
    from resrec.data.download import download as fetch
    from resrec.data.download import release_ratings_path

    folder = fetch(name, cache_dir=cache_dir, progress=True)
    typer.echo(f"{name}: {folder}")
    typer.echo(f"ratings: {release_ratings_path(folder, name)}")


@app.command()
def synth(
    out: Annotated[Path, Opt(help="Folder to write ratings.csv and movies.csv into.")],
    users: Annotated[int, Opt(help="Number of users.")] = 138_493,
    movies: Annotated[int, Opt(help="Number of movies.")] = 26_744,
    ratings: Annotated[int, Opt(help="Number of ratings.")] = 20_000_263,
    seed: Annotated[int, Opt(help="Random seed.")] = 0,
    overwrite: Annotated[
        bool, Opt(help="Replace ratings.csv and movies.csv if OUT already holds them.")
    ] = False,
) -> None:
    """Write a synthetic, MovieLens-shaped ratings.csv (defaults: the size of ML-20M).

    The sizes and OUT are checked before anything is written: an existing
    ratings.csv or movies.csv is kept unless --overwrite is given.
    """
    from resrec.data.synth import write_synthetic_csv
    from resrec.files import output_problem
    from resrec.run import check_not_inside_output

    problem = output_problem(out, folder=True)
    if problem is not None:
        raise ConfigError(f"--out {out} {problem.message}", hint=problem.hint)
    check_not_inside_output(out / "ratings.csv", "synthetic ratings")
    files = write_synthetic_csv(
        out / "ratings.csv",
        n_users=users,
        n_movies=movies,
        n_ratings=ratings,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {counted(files.n_ratings, 'synthetic rating')} to {files.ratings}")
    typer.echo(f"wrote synthetic titles and genres to {files.movies}")

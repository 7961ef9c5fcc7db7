"""Options shared by several commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resrec.data.ratings import Ratings, RatingScale
from resrec.errors import ConfigError, counted
from resrec.files import check_input_file, check_output_file, check_writable_folder

__all__ = [
    "DUPLICATES_HELP",
    "RatingsOptions",
    "check_output_file",
    "check_writable_folder",
    "describe_counts",
    "load_ratings_from_options",
]

DUPLICATES_HELP = (
    "A (user, movie) pair rated twice: 'error' stops; 'last' keeps the later line; 'mean' "
    "keeps their mean rounded to the nearest step of the rating scale (halfway: the higher "
    "step, so 3 and 4.5 give 4)."
)


@dataclass
class RatingsOptions:
    ratings: Path | None = None
    dataset: str | None = None
    layout: str = "auto"
    sep: str | None = None
    header: bool | None = None
    columns: str | None = None
    scale: str | None = None
    duplicates: str = "error"


def load_ratings_from_options(options: RatingsOptions) -> Ratings:
    """Read the ratings named by ``--ratings`` or ``--dataset`` (downloading it if needed)."""
    from resrec.data import read_ratings
    from resrec.data.download import download, release_ratings_path

    if (options.ratings is None) == (options.dataset is None):
        raise ConfigError("give exactly one of --ratings PATH or --dataset NAME")
    path = options.ratings
    if path is not None:
        check_input_file(path, "a ratings file")
    if options.dataset is not None:
        folder = download(options.dataset, progress=True)
        path = release_ratings_path(folder, options.dataset)
    assert path is not None
    return read_ratings(
        path,
        layout=options.layout,  # type: ignore[arg-type]
        sep=options.sep,
        header=options.header,
        columns=None if options.columns is None else tuple(options.columns.split(",")),
        scale=None if options.scale is None else RatingScale.parse(options.scale),
        duplicates=options.duplicates,  # type: ignore[arg-type]
    )


def describe_counts(table: Ratings) -> str:
    """``N ratings of U users and M movies``, each noun in the number its count needs."""
    return (
        f"{counted(len(table), 'rating')} of {counted(table.n_users, 'user')} "
        f"and {counted(table.n_movies, 'movie')}"
    )

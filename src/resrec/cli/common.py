"""Options shared by several commands."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from resrec.data.ratings import Ratings, RatingScale
from resrec.errors import ConfigError, counted

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


def check_output_file(target: Path, *, overwrite: bool, what: str) -> None:
    """Refuse an ``--out`` file that exists (unless ``overwrite``) or is a folder.

    Its folder must exist and take a new file, so that a command finds out
    before its work, not after it, that it cannot write the result.
    """
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder; expected a file name for the {what}")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ConfigError(
            f"--out {target} already exists", hint="choose another --out or pass --overwrite"
        )
    check_writable_folder(target, what)


def check_writable_folder(target: Path, what: str) -> None:
    """Refuse a ``--out`` file whose folder is missing or does not take a new file."""
    folder = target.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(
            f"--out {target}: its folder {folder} {state}; expected an existing folder "
            f"for the {what}",
            hint="create the folder first, or choose another --out",
        )
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--out {target}: cannot write a file in {folder} ({exc.strerror or exc})",
            hint="choose a folder you can write to",
        ) from None

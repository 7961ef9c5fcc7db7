"""``resrec predict``, ``recommend``, ``similar``, ``explain`` and ``score``: using a run.

Each command loads the run once, calls one method of
:class:`resrec.inference.Recommender` and prints a small table, or JSON with
``--json``. Ids are raw MovieLens ids.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from resrec.cli.app import app
from resrec.cli.common import check_output_file
from resrec.errors import ConfigError, counted
from resrec.files import check_input_file
from resrec.inference import (
    Explanation,
    Movie,
    Prediction,
    Recommendations,
    Recommender,
    SimilarMovies,
    parse_rated,
)
from resrec.run import check_not_inside_output

Opt = typer.Option
Arg = typer.Argument

RunArg = Annotated[Path, Arg(help="Run directory written by 'resrec train'.", show_default=False)]
MoviesOpt = Annotated[
    Path | None,
    Opt(
        "--movies",
        help="Movie titles and genres (movies.csv, movies.dat or u.item); "
        "default: the release's file beside the run's ratings, if there is one.",
    ),
]
JsonOpt = Annotated[bool, Opt("--json", help="Print JSON instead of a table.")]
UserOpt = Annotated[int, Opt("--user", help="user_id.", show_default=False)]
MovieOpt = Annotated[int, Opt("--movie", help="movie_id.", show_default=False)]
FallbackOpt = Annotated[
    bool,
    Opt(
        "--fallback",
        help="For an unknown user or movie, use the bias estimate (mu + bias) instead of "
        "failing; the output says so.",
    ),
]
CountOpt = Annotated[int, Opt("-n", min=1, help="How many movies to list.")]

BAR_WIDTH = 24


def _load(run: Path, movies: Path | None) -> Recommender:
    # One torch thread: these commands run small operations, which a second thread slows
    # down (by 30x and more when other programs share the cores), as resrec serve does.
    torch.set_num_threads(1)
    if movies is not None:
        check_input_file(movies, "a movies file")  # before the run is loaded
    return Recommender.load(run, movies_path=movies)


@app.command()
def predict(
    run: RunArg,
    user: UserOpt,
    movie: MovieOpt,
    fallback: FallbackOpt = False,
    movies: MoviesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict one user's rating of one movie, clipped to the rating scale."""
    rec = _load(run, movies)
    result = rec.predict(user, movie, fallback=fallback)
    if as_json:
        _echo_json(_without_explanation(result))
        return
    typer.echo(
        f"user_id {user}, {_describe(result.movie)}: prediction {result.prediction:.3f} "
        f"(rating scale {rec.scale.describe()})"
    )
    _echo_note(result.note)


@app.command()
def recommend(
    run: RunArg,
    user: Annotated[int | None, Opt("--user", help="user_id of a user in the run.")] = None,
    rated: Annotated[
        str | None,
        Opt(
            "--rated",
            help="A new user's ratings as MOVIE:RATING,MOVIE:RATING,... "
            "(fits only that user's embedding and bias against the frozen model).",
        ),
    ] = None,
    n: CountOpt = 10,
    include_rated: Annotated[
        bool, Opt("--include-rated", help="Also list movies the user already rated.")
    ] = False,
    fallback: FallbackOpt = False,
    explain: Annotated[bool, Opt("--explain", help="Add each prediction's terms.")] = False,
    ignore_unknown: Annotated[
        bool,
        Opt("--ignore-unknown", help="With --rated: skip movies the model does not know."),
    ] = False,
    movies: MoviesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-N movies for a user (by prediction; rated movies left out), or for new ratings."""
    if (user is None) == (rated is None):
        raise ConfigError("give exactly one of --user USER_ID or --rated 'MOVIE:RATING,...'")
    rec = _load(run, movies)
    if user is not None:
        result = rec.recommend(
            user, n, include_rated=include_rated, fallback=fallback, explain=explain
        )
    else:
        assert rated is not None
        if fallback:
            raise ConfigError("--fallback applies to --user; a new user from --rated needs none")
        result = rec.recommend_for_ratings(
            parse_rated(rated),
            n,
            include_rated=include_rated,
            unknown="ignore" if ignore_unknown else "error",
            explain=explain,
        )
    if as_json:
        _echo_json(result)
        return
    _echo_recommendations(result, explain)


@app.command()
def similar(
    run: RunArg,
    movie: MovieOpt,
    n: CountOpt = 10,
    movies: MoviesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Movies whose embeddings are closest (cosine) to a movie's.

    This compares the learnt movie embeddings only: it ignores the movie
    biases (popularity, overall quality) and the side branch.
    """
    rec = _load(run, movies)
    result = rec.similar(movie, n)
    if as_json:
        _echo_json(result)
        return
    _echo_similar(result)


@app.command()
def explain(
    run: RunArg,
    user: UserOpt,
    movie: MovieOpt,
    fallback: FallbackOpt = False,
    movies: MoviesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the terms of a prediction: mu, biases, dot product and side branch."""
    rec = _load(run, movies)
    result = rec.explain(user, movie, fallback=fallback)
    if as_json:
        _echo_json(result)
        return
    typer.echo(f"user_id {user}, {_describe(result.movie)}")
    _echo_note(result.note)
    assert result.explanation is not None
    typer.echo(explanation_table(result.explanation, rec.scale.low, rec.scale.high))


@app.command()
def score(
    run: RunArg,
    pairs: Annotated[
        Path,
        Opt(
            "--pairs",
            help="CSV with a header naming user_id (or userId) and movie_id (or movieId) "
            "columns; other columns are ignored.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, Opt("--out", help="CSV to write: user_id,movie_id,prediction.", show_default=False)
    ],
    fallback: FallbackOpt = False,
    show_bad: Annotated[int, Opt("--show-bad", min=0, help="Bad rows to list.")] = 20,
    fail_on_bad: Annotated[
        bool, Opt("--fail-on-bad", help="Exit with status 1 when any row was bad.")
    ] = False,
    overwrite: Annotated[bool, Opt(help="Replace an existing file at --out.")] = False,
) -> None:
    """Predict every (user_id, movie_id) row of a CSV file, streaming; report bad rows by line.

    A bad row (wrong number of fields, an id that is not a whole number, an
    unknown id without --fallback) is left out of the output and listed with
    its line number.
    """
    check_input_file(pairs, "a CSV file of user_id,movie_id pairs")
    if out.exists() and out.resolve() == pairs.resolve():
        raise ConfigError(
            f"--out {out} is the --pairs file itself; it would be overwritten",
            hint="write the predictions to another file",
        )
    check_not_inside_output(out, "predictions")
    check_output_file(out, overwrite=overwrite, what="predictions")
    rec = _load(run, None)
    report = rec.score_file(
        pairs, out, fallback=fallback, max_reported=max(show_bad, 1), fail_on_bad=fail_on_bad
    )
    rate = report.scored / report.seconds if report.seconds > 0 else float("inf")
    where = f"into {out}" if report.written else f"but wrote nothing to {out} (--fail-on-bad)"
    typer.echo(
        f"scored {report.scored:,} of {counted(report.rows, 'row')} in {report.seconds:.2f} s "
        f"({rate:,.0f} pairs/s) {where}"
        + (f"; {report.fallback:,} with the bias estimate" if report.fallback else "")
    )
    if report.bad:
        typer.echo(f"{counted(report.bad, 'bad row')} left out:", err=True)
        for line, reason in report.bad_rows[:show_bad]:
            typer.echo(f"  {pairs}:{line}: {reason}", err=True)
        if report.bad > show_bad:
            typer.echo(f"  ... and {report.bad - show_bad:,} more", err=True)
        if fail_on_bad:
            raise typer.Exit(1)


# --------------------------------------------------------------------------- formatting


def _describe(movie: Movie) -> str:
    text = f"movie_id {movie.movie_id}"
    if movie.title:
        text += f" {movie.title!r}"
    if movie.genres:
        text += f" [{'|'.join(movie.genres)}]"
    return text


def _echo_note(note: str | None) -> None:
    if note:
        typer.echo(f"note: {note}")


def _echo_recommendations(result: Recommendations, explain: bool) -> None:
    who = f"user_id {result.user_id}" if result.user_id is not None else "the new user"
    header = f"top {len(result.items)} for {who} ({result.estimate} estimate"
    if result.excluded_rated:
        header += f"; {counted(result.excluded_rated, 'rated movie')} left out"
    typer.echo(header + ")")
    _echo_note(result.note)
    if result.reason:
        typer.echo(f"reason: {result.reason}")
    if not result.items:
        return
    columns = "rank  movie_id  prediction"
    if explain:
        columns += "  user_bias movie_bias     dot    side"
    typer.echo(columns + "  title / genres")
    for item in result.items:
        line = f"{item.rank:>4}  {item.movie.movie_id:>8}  {item.prediction:>10.3f}"
        if explain and item.explanation is not None:
            e = item.explanation
            line += f"  {e.user_bias:>+9.3f} {e.movie_bias:>+10.3f} {e.dot:>+7.3f} {e.side:>+7.3f}"
        typer.echo(f"{line}  {_title(item.movie)}")


def _echo_similar(result: SimilarMovies) -> None:
    typer.echo(f"movies closest to {_describe(result.movie)} (cosine of embeddings)")
    typer.echo("rank  movie_id  cosine  title / genres")
    for rank, item in enumerate(result.items, start=1):
        typer.echo(
            f"{rank:>4}  {item.movie.movie_id:>8}  {item.similarity:>6.3f}  {_title(item.movie)}"
        )


def _title(movie: Movie) -> str:
    if movie.title is None:
        return "(no title known)"
    genres = "|".join(movie.genres)
    return f"{movie.title}  {genres}" if genres else movie.title


def explanation_table(e: Explanation, low: float, high: float) -> str:
    """The terms as rows with a bar each (bars scaled to the largest term after mu)."""
    rows = [("mu", e.mu), ("user bias", e.user_bias), ("movie bias", e.movie_bias)]
    rows += [("dot product", e.dot), ("side branch", e.side)]
    largest = max(abs(v) for _, v in rows[1:]) or 1.0
    lines = [f"{'term':<12} {'value':>9}  {'lowers':>{BAR_WIDTH}}|raises"]
    for name, value in rows:
        lines.append(f"{name:<12} {value:>+9.4f}  {_bar(value, largest) if name != 'mu' else ''}")
    lines.append(f"{'= sum':<12} {e.raw:>9.4f}  (unclipped)")
    clipped = " (clipped)" if e.prediction != e.raw else ""
    lines.append(
        f"{'prediction':<12} {e.prediction:>9.4f}  on the scale {low:g} to {high:g}{clipped}"
    )
    return "\n".join(lines)


def _bar(value: float, largest: float) -> str:
    length = round(abs(value) / largest * BAR_WIDTH)
    if value < 0:
        return f"{'#' * length:>{BAR_WIDTH}}|"
    return f"{'':>{BAR_WIDTH}}|{'#' * length}"


def _without_explanation(result: Prediction) -> Prediction:
    return dataclasses.replace(result, explanation=None)


def _echo_json(result: Any) -> None:
    json.dump(dataclasses.asdict(result), sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")

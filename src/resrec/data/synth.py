"""MovieLens-shaped synthetic ratings, for demos, tests and scale benchmarks.

Everything here is synthetic: no row, title or id comes from MovieLens. The
generator imitates the *shape* of MovieLens 20M (its defaults are ML-20M's
138,493 users, 26,744 rated movies and 20,000,263 ratings) and plants a known
structure that a recommender can learn:

Who rates what
    Each user rates at least ``min_user_ratings`` movies (20, as in ML-20M);
    the rest of the ratings are shared out in proportion to lognormal user
    activity weights, so a few users rate thousands of movies and most rate a
    few dozen. Movie popularity is lognormal too (capped at 0.5% of the draws
    for one movie), and higher for the lower (older) movie ids. Each user's
    movies are a popularity-weighted sample without replacement, so there are
    no duplicate (user, movie) pairs, and every movie is rated at least once.
    With the defaults, users have 20 / 67 / 144 / 9,360 ratings (min / median
    / mean / max; ML-20M: 20 / 68 / 144 / 9,254) and movies 1 / 19 / 748 /
    about 58,000 (ML-20M: 1 / 18 / 748 / 67,310).

What the ratings are
    ``rating = round(mu + b_u + b_m + p_u . q_m + side(p_u, q_m) + noise)``,
    where ``p_u`` and ``q_m`` are Gaussian factors of dimension ``rank``,
    ``b_u`` and ``b_m`` Gaussian biases (a movie's bias grows a little with its
    popularity), ``side`` a small random ELU network on ``[p_u; q_m]`` (the
    shape of the residual model's side branch), and ``noise`` Gaussian with
    standard deviation ``noise``. The sum is rounded onto ``scale`` and clipped
    to it; on a half-star scale half the ratings are rounded to whole stars, as
    MovieLens users favour them. ``mu`` is tuned so the mean rating is 3.53,
    ML-20M's; the standard deviation comes out near 1.0 (ML-20M: 1.05).
    :func:`synthesize_with_truth` returns the planted parameters too.

Ids, times and metadata
    ``user_id`` runs 1..n_users. ``movie_id`` is a sorted random sample of
    1..about 4.9 * n_movies, so ids have gaps as in MovieLens. Timestamps are
    int64 seconds since 1970 within ML-20M's period (January 1995 to March
    2015): each user rates within an active window, and no movie is rated
    before it joined the catalogue (joining times grow with the movie id, so a
    split by time sees new movies appear). ``movies.csv`` has titles
    "Synthetic movie <id> (<year>)" and 1-3 MovieLens genre names, chosen to
    agree with the movie's factors, so genres carry some signal.

The output depends only on the arguments: the same seed gives the same
ratings with the same numpy version on the same platform.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from resrec.data.ratings import HALF_STARS, Ratings, RatingScale
from resrec.errors import ConfigError, counted, echoed
from resrec.files import output_problem

logger = logging.getLogger(__name__)

# ML-20M's first and last rating times (1995-01-09 and 2015-03-31, UTC).
FIRST_TIMESTAMP = 789_652_009
LAST_TIMESTAMP = 1_427_784_002

# Standard deviations of the planted terms, in stars on the 0.5-5 scale (other
# scales are stretched to their width).
USER_BIAS_SD = 0.40
MOVIE_BIAS_SD = 0.45
FACTOR_SD = 0.45  # of the dot product p_u . q_m
SIDE_SD = 0.25  # of the ELU interaction term
DEFAULT_NOISE = 0.75

USER_ACTIVITY_SIGMA = 1.4  # lognormal sigma of each user's extra ratings
MOVIE_POPULARITY_SIGMA = 3.3  # lognormal sigma of movie popularity (ML-20M's median 18)
MAX_MOVIE_SHARE = 0.005  # cap on a movie's share of the draws (ML-20M's top: 0.34%)
MOVIE_ID_SPREAD = 4.9  # ML-20M: largest movie id 131,262 for 26,744 rated movies
MAX_USER_SHARE = 0.35  # ML-20M's most active user rated 35% of the movies
WHOLE_STAR_SHARE = 0.5  # share of half-star-scale ratings rounded to whole stars
TARGET_MEAN = 3.53  # ML-20M's mean rating

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Approximate relative frequencies of the genres among MovieLens movies, in the order above.
_GENRE_WEIGHTS = (
    3.5, 2.3, 1.0, 1.1, 8.4, 2.9, 2.5, 13.3, 1.4, 0.3, 2.6, 0.2, 1.0, 1.5, 4.1, 1.7, 4.2,
    1.2, 0.7,
)  # fmt: skip

_HIDDEN = 16  # units of the ELU interaction network
_CHUNK = 1 << 18  # rows per chunk when scoring and writing
_HEAVY_SHARE = 0.05  # users rating more than this share of movies are sampled exactly
_MAX_ROUNDS = 100  # rejection rounds before the exact sampler takes over
_EXACT_HANDOFF = 500  # ... or once this few users are still short


@dataclass(frozen=True)
class PlantedModel:
    """The parameters :func:`synthesize_with_truth` planted in its ratings.

    Arrays are indexed by user index and movie index (0..n-1, in ``user_id``
    and ``movie_id`` order); ``movie_ids`` maps a movie index to its raw id.
    """

    movie_ids: np.ndarray  # (n_movies,) int64
    mu: float
    user_bias: np.ndarray  # (n_users,) float32
    movie_bias: np.ndarray  # (n_movies,) float32
    user_factors: np.ndarray  # (n_users, rank) float32
    movie_factors: np.ndarray  # (n_movies, rank) float32
    side_w1: np.ndarray  # (2 * rank, hidden) float32
    side_c1: np.ndarray  # (hidden,) float32
    side_w2: np.ndarray  # (hidden,) float32
    side_c2: float
    noise: float  # standard deviation of the rating noise, on this scale

    def low_rank_score(self, user_index: np.ndarray, movie_index: np.ndarray) -> np.ndarray:
        """``mu + b_u + b_m + p_u . q_m`` for each (user index, movie index) pair."""
        p = self.user_factors[user_index]
        q = self.movie_factors[movie_index]
        dot = np.einsum("ij,ij->i", p, q)  # row-wise p_u . q_m
        return self.mu + self.user_bias[user_index] + self.movie_bias[movie_index] + dot

    def side_score(self, user_index: np.ndarray, movie_index: np.ndarray) -> np.ndarray:
        """The planted non-linear term ``w2 . elu(W1 [p_u; q_m] + c1) + c2``."""
        # W1 [p; q] = W1_user p + W1_movie q: both halves are computed once per
        # user and per movie, so each row costs a gather and an add.
        hidden = self._user_hidden[user_index] + self._movie_hidden[movie_index]
        negative = np.minimum(hidden, 0.0)
        np.expm1(negative, out=negative)
        np.maximum(hidden, 0.0, out=hidden)
        hidden += negative  # elu(x) = max(x, 0) + expm1(min(x, 0))
        return np.einsum("ij,j->i", hidden, self.side_w2) + self.side_c2

    @cached_property
    def _user_hidden(self) -> np.ndarray:
        rank = self.user_factors.shape[1]
        return (self.user_factors @ self.side_w1[:rank]).astype(np.float32)

    @cached_property
    def _movie_hidden(self) -> np.ndarray:
        rank = self.movie_factors.shape[1]
        return (self.movie_factors @ self.side_w1[rank:] + self.side_c1).astype(np.float32)

    def expected_rating(self, user_index: np.ndarray, movie_index: np.ndarray) -> np.ndarray:
        """The planted rating before noise, rounding and clipping."""
        return self.low_rank_score(user_index, movie_index) + self.side_score(
            user_index, movie_index
        )


@dataclass(frozen=True)
class SyntheticFiles:
    """What :func:`write_synthetic_csv` wrote."""

    ratings: Path
    movies: Path
    n_ratings: int


def synthesize(
    n_users: int = 138_493,
    n_movies: int = 26_744,
    n_ratings: int = 20_000_263,
    *,
    seed: int = 0,
    scale: RatingScale = HALF_STARS,
    rank: int = 10,
    min_user_ratings: int = 20,
    noise: float = DEFAULT_NOISE,
) -> Ratings:
    """Generate MovieLens-shaped synthetic ratings (see the module docstring).

    Parameters
    ----------
    n_users, n_movies, n_ratings : int
        Table size; the defaults are ML-20M's. Every user has at least
        ``min_user_ratings`` ratings and every movie at least one.
    seed : int
        Seed of every random choice, in [0, 2**32 - 1]; the same seed gives
        the same table.
    scale : RatingScale
        The rating scale; the planted effects are stretched to its width.
    rank : int
        Dimension of the planted user and movie factors.
    min_user_ratings : int
        The fewest ratings a user has (20 in ML-20M).
    noise : float
        Standard deviation of the rating noise, in stars on the 0.5-5 scale.

    Returns
    -------
    Ratings
        Rows sorted by ``user_id`` then ``movie_id`` (as ML-20M's
        ``ratings.csv``), with timestamps; ``layout`` is ``"synthetic"``.

    Raises
    ------
    ConfigError
        For arguments out of range (a negative seed, a non-finite noise), sizes
        that cannot be met (for example fewer ratings than users times
        ``min_user_ratings``) or a table too large for the memory available.
    """
    ratings, _ = synthesize_with_truth(
        n_users,
        n_movies,
        n_ratings,
        seed=seed,
        scale=scale,
        rank=rank,
        min_user_ratings=min_user_ratings,
        noise=noise,
    )
    return ratings


def synthesize_with_truth(
    n_users: int = 138_493,
    n_movies: int = 26_744,
    n_ratings: int = 20_000_263,
    *,
    seed: int = 0,
    scale: RatingScale = HALF_STARS,
    rank: int = 10,
    min_user_ratings: int = 20,
    noise: float = DEFAULT_NOISE,
) -> tuple[Ratings, PlantedModel]:
    """:func:`synthesize`, also returning the planted parameters (for tests and benchmarks)."""
    _check_arguments(n_users, n_movies, n_ratings, seed, rank, min_user_ratings, noise)
    started = time.perf_counter()
    rngs = _random_streams(seed)

    popularity = _movie_popularity(n_movies, rngs["activity"])
    counts = _user_counts(n_users, n_movies, n_ratings, min_user_ratings, rngs["activity"])
    keys = _sample_pairs(counts, popularity, rngs["pairs"])
    user_index = (keys // n_movies).astype(np.int32)
    movie_index = (keys % n_movies).astype(np.int32)
    del keys

    movie_ids = _movie_ids(n_movies, rngs["ids"])
    truth = _plant_model(n_users, movie_ids, popularity, scale, rank, noise, rngs["model"])
    truth = _calibrate_mean(truth, user_index, movie_index, scale, rngs["model"])
    rating = _rate(truth, user_index, movie_index, scale, rngs["noise"])
    timestamp = _timestamps(user_index, movie_index, movie_ids, n_users, rngs["time"])

    ratings = Ratings(
        user_id=user_index.astype(np.int64) + 1,
        movie_id=movie_ids[movie_index],
        rating=rating,
        timestamp=timestamp,
        scale=scale,
        source=f"<synthetic seed={seed}>",
        layout="synthetic",
        notes=[
            f"synthetic MovieLens-shaped ratings (seed {seed}, rank {rank}, noise {noise:g}); "
            "not real data"
        ],
    )
    logger.info(
        "synthesized %s (%s, %s) in %.1f s",
        counted(len(ratings), "rating"),
        counted(n_users, "user"),
        counted(n_movies, "movie"),
        time.perf_counter() - started,
    )
    return ratings, truth


def write_synthetic_csv(
    path: str | Path,
    n_users: int = 138_493,
    n_movies: int = 26_744,
    n_ratings: int = 20_000_263,
    *,
    seed: int = 0,
    scale: RatingScale = HALF_STARS,
    rank: int = 10,
    min_user_ratings: int = 20,
    noise: float = DEFAULT_NOISE,
    overwrite: bool = False,
) -> SyntheticFiles:
    """Write synthetic ``ratings.csv`` and ``movies.csv`` files in ML-20M's format.

    ``path`` is the ratings file to write, or an existing folder to write
    ``ratings.csv`` into; ``movies.csv`` goes beside it. The ratings file has
    the header ``userId,movieId,rating,timestamp`` and ratings written with one
    decimal (``4.0``, ``3.5``). The other arguments are those of
    :func:`synthesize`.

    Everything is checked before anything is created: the sizes, and that
    neither file exists yet (``overwrite`` replaces them). Both files are
    written under temporary names and renamed once both are complete; after an
    error neither they nor a folder made for them is left behind.

    Raises
    ------
    ConfigError
        For the arguments :func:`synthesize` refuses, an existing file without
        ``overwrite``, or a target that cannot be written.
    """
    _check_arguments(n_users, n_movies, n_ratings, seed, rank, min_user_ratings, noise)
    ratings_path, movies_path = _output_paths(Path(path), overwrite=overwrite)
    created = _make_folder(ratings_path.parent)
    temporaries = [_temporary(ratings_path), _temporary(movies_path)]
    try:
        ratings, truth = synthesize_with_truth(
            n_users,
            n_movies,
            n_ratings,
            seed=seed,
            scale=scale,
            rank=rank,
            min_user_ratings=min_user_ratings,
            noise=noise,
        )
        started = time.perf_counter()
        _write_ratings_csv(ratings, temporaries[0])
        _write_movies_csv(truth, seed, temporaries[1])
        os.replace(temporaries[0], ratings_path)
        os.replace(temporaries[1], movies_path)
    except BaseException as exc:
        _clean_up(temporaries, created)
        if isinstance(exc, OSError):
            raise _write_error(exc, ratings_path.parent) from None
        raise
    logger.info(
        "wrote %s and %s in %.1f s", ratings_path, movies_path, time.perf_counter() - started
    )
    return SyntheticFiles(ratings=ratings_path, movies=movies_path, n_ratings=len(ratings))


def _output_paths(path: Path, *, overwrite: bool) -> tuple[Path, Path]:
    """The ratings and movies files to write for ``path``; refuses what must not be replaced."""
    ratings_path = path / "ratings.csv" if path.is_dir() else path
    movies_path = ratings_path.with_name("movies.csv")
    if ratings_path.name == movies_path.name:
        raise ConfigError(f"the ratings file cannot be named movies.csv; got {ratings_path}")
    folder = next((p for p in ratings_path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder", hint="choose another --out")
    for target in (ratings_path, movies_path):
        problem = output_problem(target, what="synthetic ratings")
        if problem is not None:
            raise ConfigError(f"{target} {problem.message}", hint=problem.hint)
        if target.is_dir():
            raise ConfigError(f"{target} is a folder", hint="choose another --out")
        if target.exists() and not overwrite:
            raise ConfigError(
                f"{target} already exists",
                hint="choose another --out or pass --overwrite to replace it",
            )
    return ratings_path, movies_path


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, innermost first."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, folder) from None
    return created


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _clean_up(temporaries: list[Path], created: list[Path]) -> None:
    """Remove the temporary files and the folders made for them (if still empty)."""
    for temporary in temporaries:
        temporary.unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break


def _write_error(exc: OSError, path: Path) -> ConfigError:
    return ConfigError(f"cannot write {path}: {exc.strerror or exc}", hint="choose another --out")


def _random_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per step, so changing one step leaves the others alone."""
    names = ("activity", "pairs", "model", "noise", "time", "ids", "metadata")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children, strict=True)}


# --- sizes and activity ---------------------------------------------------------------


LARGEST_SEED = 2**32 - 1
"""The largest seed (numpy's seeds, like training's, are in [0, 2**32 - 1])."""
MAX_ROWS = 2**31 - 1
"""The most users or movies: their indices are int32."""
MAX_RANK = 1024
"""The largest dimension of the planted factors."""
_BYTES_PER_RATING = 48  # peak memory per rating while synthesizing and writing (measured: ~41)


def _check_arguments(
    n_users: int,
    n_movies: int,
    n_ratings: int,
    seed: int,
    rank: int,
    min_user_ratings: int,
    noise: float,
) -> None:
    """Refuse arguments that are out of range or cannot be met, before any work."""
    counts = {
        "n_users": n_users,
        "n_movies": n_movies,
        "n_ratings": n_ratings,
        "seed": seed,
        "rank": rank,
        "min_user_ratings": min_user_ratings,
    }
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a whole number; got {echoed(value)}")
    if not 0 <= seed <= LARGEST_SEED:
        raise ConfigError(f"seed must be in [0, {LARGEST_SEED}]; got {echoed(seed)}")
    if n_users < 1 or n_movies < 1 or rank < 1 or min_user_ratings < 1:
        raise ConfigError(
            "n_users, n_movies, rank and min_user_ratings must be at least 1; got "
            f"{n_users}, {n_movies}, {rank}, {min_user_ratings}"
        )
    for name, value, most in (
        ("n_users", n_users, MAX_ROWS),
        ("n_movies", n_movies, MAX_ROWS),
        ("rank", rank, MAX_RANK),
    ):
        if value > most:
            raise ConfigError(f"{name} must be at most {most:,}; got {echoed(value)}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not math.isfinite(noise):
        raise ConfigError(f"noise must be a finite number; got {echoed(noise)}")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0; got {noise}")
    if min_user_ratings > n_movies:
        raise ConfigError(
            f"min_user_ratings ({min_user_ratings}) cannot exceed n_movies ({n_movies})"
        )
    least = max(n_users * min_user_ratings, n_movies)
    most = n_users * n_movies
    if not least <= n_ratings <= most:
        raise ConfigError(
            f"n_ratings must lie between {least:,} (every user rates {min_user_ratings} "
            f"movies and every movie is rated) and {most:,} (every user rates every movie); "
            f"got {n_ratings:,}"
        )
    _check_memory(n_users, n_movies, n_ratings, rank)


def _check_memory(n_users: int, n_movies: int, n_ratings: int, rank: int) -> None:
    """Refuse a table that would not fit in the memory available now."""
    from resrec.config import available_memory

    needed = _BYTES_PER_RATING * n_ratings + 16 * (rank + 4) * (n_users + n_movies)
    free = available_memory()
    if free is not None and needed > free:
        raise ConfigError(
            f"{counted(n_ratings, 'rating')} of {counted(n_users, 'user')} and "
            f"{counted(n_movies, 'movie')} need about {needed / 1e9:,.1f} GB of memory to "
            f"make; {free / 1e9:,.1f} GB is available",
            hint="ask for fewer ratings (--ratings), users or movies",
        )


def _user_counts(
    n_users: int, n_movies: int, n_ratings: int, min_user_ratings: int, rng: np.random.Generator
) -> np.ndarray:
    """Ratings per user: at least the minimum, the rest in proportion to lognormal activity."""
    weights = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, n_users)
    cap = max(int(MAX_USER_SHARE * n_movies), math.ceil(n_ratings / n_users), min_user_ratings)
    return _allocate(weights, n_ratings, min_user_ratings, min(cap, n_movies))


def _allocate(weights: np.ndarray, total: int, floor: int, cap: int) -> np.ndarray:
    """Integer counts in [floor, cap] summing to ``total``, above floor in proportion to weights."""
    counts = np.full(len(weights), floor, dtype=np.int64)
    remaining = total - floor * len(weights)
    open_ = counts < cap
    while remaining > 0:
        share = np.where(open_, weights, 0.0)
        share *= remaining / share.sum()
        # Rounding the running total keeps every count within 1 of its share
        # and makes them add up to exactly ``remaining``.
        edges = np.rint(np.cumsum(share))
        edges[-1] = remaining
        counts += np.diff(edges, prepend=0.0).astype(np.int64)

        over = counts > cap
        remaining = int((counts[over] - cap).sum())
        counts[over] = cap
        open_ &= counts < cap
    return counts


def _movie_popularity(n_movies: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal popularity weights, higher for older movies (lower index), with a capped top."""
    age = _normal_scores(n_movies)[::-1]  # the first movie has the highest score
    z = 0.5 * age + math.sqrt(0.75) * rng.standard_normal(n_movies)
    weights = np.exp(MOVIE_POPULARITY_SIGMA * z)
    for _ in range(3):  # capping lowers the total, so cap again against the new total
        cap = max(MAX_MOVIE_SHARE * weights.sum(), 3.0 * weights.mean())
        weights = np.minimum(weights, cap)
    return weights


def _normal_scores(n: int) -> np.ndarray:
    """Approximate standard normal quantiles of ranks 1..n (Blom's plotting positions)."""
    from statistics import NormalDist

    quantile = np.vectorize(NormalDist().inv_cdf, otypes=[np.float64])
    return quantile((np.arange(1, n + 1) - 0.375) / (n + 0.25))


def _movie_ids(n_movies: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted distinct raw movie ids drawn from 1..MOVIE_ID_SPREAD * n_movies."""
    highest = max(n_movies, int(MOVIE_ID_SPREAD * n_movies))
    ids = rng.choice(highest, size=n_movies, replace=False) + 1
    return np.sort(ids).astype(np.int64)


# --- who rates what -------------------------------------------------------------------


def _sample_pairs(
    counts: np.ndarray, popularity: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Sorted keys ``user_index * n_movies + movie_index``, ``counts[u]`` distinct per user.

    First every movie is given one rating from a random rating slot, so every
    movie is rated. Users who rate many movies then pick the rest exactly by
    Gumbel top-k; the others draw by popularity and redraw duplicates, which
    is the same popularity-weighted sampling without replacement.
    """
    n_movies = len(popularity)
    seeded = _cover_every_movie(counts, n_movies, rng)
    heavy = counts > max(_HEAVY_SHARE * n_movies, 1)

    is_heavy_key = heavy[seeded // n_movies]
    chosen, deficit = _sample_light(counts, ~heavy, seeded[~is_heavy_key], popularity, rng)

    # Heavy users, and any light user the rejection rounds did not finish, are
    # sampled exactly; their keys so far are kept and completed.
    exact_users = np.flatnonzero(heavy | (deficit > 0))
    is_exact = np.zeros(len(counts), dtype=bool)
    is_exact[exact_users] = True
    is_exact_key = is_exact[chosen // n_movies]
    have = np.concatenate([chosen[is_exact_key], seeded[is_heavy_key]])
    exact = _sample_exact(exact_users, counts, have, popularity, rng)

    return np.sort(np.concatenate([chosen[~is_exact_key], exact]), kind="stable")


def _cover_every_movie(counts: np.ndarray, n_movies: int, rng: np.random.Generator) -> np.ndarray:
    """One (user, movie) key per movie, users drawn in proportion to their counts."""
    slots = np.sort(rng.choice(int(counts.sum()), size=n_movies, replace=False))
    users = np.searchsorted(np.cumsum(counts), slots, side="right")
    movies = rng.permutation(n_movies)
    return users.astype(np.int64) * n_movies + movies


def _sample_light(
    counts: np.ndarray,
    light: np.ndarray,
    seeded: np.ndarray,
    popularity: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Rejection sampling for light users; returns sorted unique keys and unmet counts.

    Round one draws every missing rating at once; later rounds redraw only the
    duplicates. Rounds stop once few users are still short, and those are left
    to the exact sampler, so a user who keeps hitting movies they already have
    cannot hold up the rest.
    """
    n_movies = len(popularity)
    draw = _AliasSampler(popularity)
    target = np.where(light, counts, 0)
    chosen = np.sort(seeded)
    later: list[np.ndarray] = []  # sorted keys accepted after round one
    deficit = target - np.bincount(chosen // n_movies, minlength=len(counts))

    for round_ in range(_MAX_ROUNDS):
        short = np.flatnonzero(deficit)
        if len(short) == 0 or (round_ > 0 and len(short) <= _EXACT_HANDOFF):
            break
        users = np.repeat(short.astype(np.int64), deficit[short])
        new = _unique_sorted(users * n_movies + draw(len(users), rng))
        fresh = ~_contains(chosen, new)
        for part in later:
            fresh &= ~_contains(part, new)
        new = new[fresh]
        if round_ == 0:  # sorted runs merge in linear time with a stable sort
            chosen = np.sort(np.concatenate([chosen, new]), kind="stable")
        else:
            later.append(new)
        deficit -= np.bincount(new // n_movies, minlength=len(counts))

    keys = np.sort(np.concatenate([chosen, *later]), kind="stable")
    return keys, deficit


def _sample_exact(
    users: np.ndarray,
    counts: np.ndarray,
    have: np.ndarray,
    popularity: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Complete each of ``users`` (ascending) to ``counts[user]`` movies by Gumbel top-k.

    ``have`` holds keys the users already have; the result holds all their keys.
    """
    n_movies = len(popularity)
    log_popularity = np.log(popularity)
    have = _unique_sorted(have)
    bounds = np.searchsorted(have, np.stack([users * n_movies, (users + 1) * n_movies]))
    parts = [np.empty(0, dtype=np.int64)]
    for user, start, stop in zip(users.tolist(), bounds[0], bounds[1], strict=True):
        movies = have[start:stop] - user * n_movies
        need = int(counts[user]) - len(movies)
        if need > 0:
            score = log_popularity + rng.gumbel(size=n_movies)
            score[movies] = -np.inf
            movies = np.concatenate([movies, np.argpartition(-score, need - 1)[:need]])
        parts.append(movies.astype(np.int64) + user * n_movies)
    return np.concatenate(parts)


class _AliasSampler:
    """Walker's alias method: O(1) draws of indices with probability proportional to weights."""

    def __init__(self, weights: np.ndarray) -> None:
        n = len(weights)
        scaled = weights * (n / weights.sum())
        self.threshold = np.ones(n)
        self.alias = np.arange(n)
        small = [i for i in range(n) if scaled[i] < 1.0]
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            self.threshold[s] = scaled[s]
            self.alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)

    def __call__(self, size: int, rng: np.random.Generator) -> np.ndarray:
        # One uniform gives both the column (integer part) and the coin (fraction).
        spot = rng.random(size) * len(self.alias)
        column = spot.astype(np.int64)
        spot -= column
        return np.where(spot < self.threshold[column], column, self.alias[column])


def _unique_sorted(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (faster than np.unique for large int64 arrays)."""
    keys = np.sort(keys)
    if len(keys) == 0:
        return keys
    keep = np.empty(len(keys), dtype=bool)
    keep[0] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For sorted ``queries``: which are in ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=bool)
    at = np.searchsorted(sorted_keys, queries)
    at[at == len(sorted_keys)] = 0
    return sorted_keys[at] == queries


# --- what the ratings are -------------------------------------------------------------


def _plant_model(
    n_users: int,
    movie_ids: np.ndarray,
    popularity: np.ndarray,
    scale: RatingScale,
    rank: int,
    noise: float,
    rng: np.random.Generator,
) -> PlantedModel:
    """Draw the planted biases, factors and ELU network, stretched to ``scale``."""
    n_movies = len(movie_ids)
    stretch = (scale.high - scale.low) / (HALF_STARS.high - HALF_STARS.low)
    mu = scale.low + (3.5 - HALF_STARS.low) * stretch

    # Factor entries N(0, a^2) give p . q a variance of rank * a^4.
    a = math.sqrt(FACTOR_SD * stretch / math.sqrt(rank))
    user_factors = rng.normal(0.0, a, (n_users, rank)).astype(np.float32)
    movie_factors = rng.normal(0.0, a, (n_movies, rank)).astype(np.float32)

    user_bias = rng.normal(0.0, USER_BIAS_SD * stretch, n_users)
    log_pop = np.log(popularity)
    pop_z = (log_pop - log_pop.mean()) / (log_pop.std() or 1.0)
    movie_z = 0.3 * pop_z + math.sqrt(1 - 0.3**2) * rng.standard_normal(n_movies)
    movie_bias = MOVIE_BIAS_SD * stretch * movie_z

    hidden_init = 1.0 / (a * math.sqrt(2 * rank))  # pre-activations of unit variance
    model = PlantedModel(
        movie_ids=movie_ids,
        mu=float(mu),
        user_bias=user_bias.astype(np.float32),
        movie_bias=movie_bias.astype(np.float32),
        user_factors=user_factors,
        movie_factors=movie_factors,
        side_w1=rng.normal(0.0, hidden_init, (2 * rank, _HIDDEN)).astype(np.float32),
        side_c1=rng.normal(0.0, 0.5, _HIDDEN).astype(np.float32),
        side_w2=rng.normal(0.0, 1.0, _HIDDEN).astype(np.float32),
        side_c2=0.0,
        noise=noise * stretch,
    )
    return _calibrate_side(model, SIDE_SD * stretch, rng)


def _calibrate_side(model: PlantedModel, sd: float, rng: np.random.Generator) -> PlantedModel:
    """Rescale the side network so its output has mean 0 and standard deviation ``sd``."""
    n_probe = 100_000
    users = rng.integers(0, len(model.user_bias), n_probe)
    movies = rng.integers(0, len(model.movie_bias), n_probe)
    raw = model.side_score(users, movies).astype(np.float64)
    gain = sd / (raw.std() or 1.0)
    return replace(
        model,
        side_w2=(model.side_w2 * gain).astype(np.float32),
        side_c2=float(-raw.mean() * gain),
    )


def _target_mean(scale: RatingScale) -> float:
    """ML-20M's mean rating where the scale has room for it, else two-thirds up the scale."""
    if scale.low + 0.5 <= TARGET_MEAN <= scale.high - 0.5:
        return TARGET_MEAN
    return scale.low + 2 / 3 * (scale.high - scale.low)


def _calibrate_mean(
    model: PlantedModel,
    user_index: np.ndarray,
    movie_index: np.ndarray,
    scale: RatingScale,
    rng: np.random.Generator,
) -> PlantedModel:
    """Shift mu so the rounded ratings of the sampled pairs average :func:`_target_mean`.

    Popular movies have higher biases and are rated more, and clipping pulls
    the mean down, so mu is tuned on a probe of the actual pairs.
    """
    probe = rng.integers(0, len(user_index), min(len(user_index), 200_000))
    users, movies = user_index[probe], movie_index[probe]
    target = _target_mean(scale)
    for _ in range(4):
        mean = float(_rate(model, users, movies, scale, rng).mean())
        model = replace(model, mu=model.mu + target - mean)
    return model


def _rate(
    model: PlantedModel,
    user_index: np.ndarray,
    movie_index: np.ndarray,
    scale: RatingScale,
    rng: np.random.Generator,
) -> np.ndarray:
    """Planted rating plus noise, rounded onto the scale, in chunks to bound memory."""
    rating = np.empty(len(user_index), dtype=np.float32)
    for start in range(0, len(rating), _CHUNK):
        rows = slice(start, start + _CHUNK)
        raw = model.expected_rating(user_index[rows], movie_index[rows])
        raw += model.noise * rng.standard_normal(len(raw), dtype=np.float32)
        rating[rows] = _round_to_scale(raw, scale, rng)
    return rating


def _round_to_scale(raw: np.ndarray, scale: RatingScale, rng: np.random.Generator) -> np.ndarray:
    """Nearest value on the scale; on a half-star scale, a share go to the nearest whole star."""
    steps = np.rint((raw - scale.low) / scale.step)
    rating = np.clip(scale.low + scale.step * steps, scale.low, scale.high)

    lowest_whole, highest_whole = math.ceil(scale.low), math.floor(scale.high)
    per_star = 1.0 / scale.step
    if per_star > 1 and per_star.is_integer() and lowest_whole < highest_whole:
        whole = rng.random(len(raw)) < WHOLE_STAR_SHARE
        rounded = np.clip(np.rint(raw), lowest_whole, highest_whole)
        rating = np.where(whole, rounded, rating)
    return rating.astype(np.float32)


# --- ids and times --------------------------------------------------------------------


def _added_times(movie_ids: np.ndarray) -> np.ndarray:
    """When each movie joined the catalogue: ids grow with time, as in MovieLens.

    In ML-20M the lower half of the id range was in use by about 2009, 70% of
    the way through its period; ``sqrt(position)`` matches that.
    """
    position = movie_ids / max(int(movie_ids.max()), 1)
    return FIRST_TIMESTAMP + (LAST_TIMESTAMP - FIRST_TIMESTAMP) * np.sqrt(position)


def _timestamps(
    user_index: np.ndarray,
    movie_index: np.ndarray,
    movie_ids: np.ndarray,
    n_users: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Each user rates within an active window, never before a movie was added."""
    span = LAST_TIMESTAMP - FIRST_TIMESTAMP
    start = FIRST_TIMESTAMP + span * rng.random(n_users)
    duration = np.exp(rng.normal(math.log(2 * 86_400), 2.5, n_users))
    duration = np.minimum(duration, LAST_TIMESTAMP - start)
    added = _added_times(movie_ids)

    timestamp = np.empty(len(user_index), dtype=np.int64)
    for first in range(0, len(timestamp), _CHUNK):
        rows = slice(first, first + _CHUNK)
        users = user_index[rows]
        when = start[users] + duration[users] * rng.random(len(users)) ** 2
        movie_added = added[movie_index[rows]]
        late = when < movie_added  # rated on a later visit, after the movie appeared
        when[late] = (
            movie_added[late]
            + (LAST_TIMESTAMP - movie_added[late]) * rng.random(int(late.sum())) ** 2
        )
        timestamp[rows] = np.floor(when)
    return timestamp


# --- files ----------------------------------------------------------------------------


def _rating_labels(scale: RatingScale) -> list[str]:
    """The text of each scale value, with one decimal or as many as the step needs."""
    n_levels = round((scale.high - scale.low) / scale.step) + 1
    values = [scale.low + i * scale.step for i in range(n_levels)]
    for decimals in range(1, 7):
        labels = [f"{v:.{decimals}f}" for v in values]
        if all(abs(float(text) - v) < 1e-9 for text, v in zip(labels, values, strict=True)):
            return labels
    return [repr(v) for v in values]


def _write_ratings_csv(ratings: Ratings, path: Path) -> None:
    """Write ``userId,movieId,rating,timestamp`` to ``path`` with pyarrow, in chunks."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    scale = ratings.scale
    labels = pa.array(_rating_labels(scale))
    level = np.rint((ratings.rating - scale.low) / scale.step).astype(np.int32)
    timestamp = ratings.timestamp
    if timestamp is None:
        raise ValueError("synthetic ratings always have timestamps")
    schema = pa.schema(
        [("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.string()),
         ("timestamp", pa.int64())]
    )  # fmt: skip
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")

    with pa.OSFile(str(path), "wb") as sink:
        sink.write(b"userId,movieId,rating,timestamp\n")
        with pa_csv.CSVWriter(sink, schema, write_options=options) as writer:
            for start in range(0, len(ratings), _CHUNK):
                rows = slice(start, start + _CHUNK)
                columns = [
                    pa.array(ratings.user_id[rows]),
                    pa.array(ratings.movie_id[rows]),
                    labels.take(pa.array(level[rows])),
                    pa.array(timestamp[rows]),
                ]
                writer.write_batch(pa.record_batch(columns, schema=schema))


def _write_movies_csv(model: PlantedModel, seed: int, path: Path) -> None:
    """Write ``movieId,title,genres`` with synthetic titles, years and genres."""
    rng = _random_streams(seed)["metadata"]
    movie_ids = model.movie_ids
    n_movies = len(movie_ids)

    added_year = 1970 + _added_times(movie_ids) / (365.25 * 86_400)
    year = np.maximum(np.floor(added_year - rng.exponential(8.0, n_movies)), 1902).astype(int)

    # Genres agree with the movie factors: each genre has a direction in factor space.
    factors = model.movie_factors / (
        np.linalg.norm(model.movie_factors, axis=1, keepdims=True) + 1e-9
    )
    directions = rng.standard_normal((len(GENRES), factors.shape[1]))
    affinity = 2.0 * factors @ directions.T + np.log(_GENRE_WEIGHTS)
    affinity += rng.gumbel(size=affinity.shape)
    n_genres = rng.choice([1, 2, 3], size=n_movies, p=[0.4, 0.35, 0.25])
    ranked = np.argsort(-affinity, axis=1)

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for i in range(n_movies):
            genres = "|".join(sorted(GENRES[g] for g in ranked[i, : n_genres[i]]))
            writer.writerow([movie_ids[i], f"Synthetic movie {movie_ids[i]} ({year[i]})", genres])

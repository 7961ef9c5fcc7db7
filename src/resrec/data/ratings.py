"""The columnar ratings table every reader returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from resrec.errors import ConfigError, echoed, quoted


@dataclass(frozen=True)
class RatingScale:
    """The allowed rating values: ``low``, ``low + step``, ... ``high``.

    Checked when made: finite numbers, ``low < high``, ``step > 0``, and a whole
    number of steps from ``low`` to ``high``, at most :data:`MAX_SCALE_STEPS`.
    """

    low: float
    high: float
    step: float

    def __post_init__(self) -> None:
        problem = _scale_problem(self.low, self.high, self.step)
        if problem is not None:
            raise ConfigError(
                "rating scale needs low < high and step > 0, finite, with a whole number of "
                f"steps from low to high (at most {MAX_SCALE_STEPS:,}); got "
                f"{':'.join(echoed(v) for v in (self.low, self.high, self.step))} "
                f"({problem})"
            )

    @classmethod
    def parse(cls, text: str) -> RatingScale:
        """Parse ``"LOW:HIGH:STEP"`` (for example ``"0.5:5:0.5"``) or a known name."""
        named = {"half-stars": HALF_STARS, "whole-stars": WHOLE_STARS}
        if text in named:
            return named[text]
        hint = (
            f"give LOW:HIGH:STEP with finite LOW < HIGH and STEP > 0 that divides HIGH - LOW "
            f"into at most {MAX_SCALE_STEPS:,} steps (e.g. 0.5:5:0.5), or one of {sorted(named)}"
        )
        try:
            low, high, step = (float(p) for p in text.split(":"))
        except ValueError:
            raise ConfigError(
                f"--scale must be LOW:HIGH:STEP (e.g. 0.5:5:0.5) or one of "
                f"{sorted(named)}; got {quoted(text)}",
                hint=hint,
            ) from None
        problem = _scale_problem(low, high, step)
        if problem is not None:
            raise ConfigError(f"--scale {quoted(text)}: {problem}", hint=hint)
        return cls(low, high, step)

    def on_scale(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask: which values lie in [low, high] on a multiple of step."""
        values = np.asarray(values, dtype=np.float64)
        steps = (values - self.low) / self.step
        on_step = np.abs(steps - np.round(steps)) < 1e-6
        return on_step & (values >= self.low - 1e-9) & (values <= self.high + 1e-9)

    def describe(self) -> str:
        return f"{self.low:g} to {self.high:g} in steps of {self.step:g}"

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "step": self.step}


MAX_SCALE_STEPS = 1000
"""The most steps from the lowest rating of a scale to its highest."""


def _scale_problem(low: float, high: float, step: float) -> str | None:
    """What is wrong with the scale ``low:high:step``, or None."""
    if not all(_finite(v) for v in (low, high, step)):
        return "LOW, HIGH and STEP must be finite numbers"
    if not high > low:
        return "LOW must be below HIGH"
    if not step > 0:
        return "STEP must be above 0"
    n_steps = (high - low) / step
    if not n_steps <= MAX_SCALE_STEPS:  # also catches an overflow to inf
        return f"HIGH - LOW is {n_steps:.3g} steps; at most {MAX_SCALE_STEPS:,} are allowed"
    if abs(n_steps - round(n_steps)) > 1e-9:
        return "HIGH - LOW must be a whole number of steps"
    return None


def _finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


HALF_STARS = RatingScale(0.5, 5.0, 0.5)
WHOLE_STARS = RatingScale(1.0, 5.0, 1.0)


@dataclass
class Ratings:
    """A validated table of ratings, one row per (user_id, movie_id) pair.

    Columns are numpy arrays of equal length: ``user_id`` and ``movie_id``
    (int64, the raw ids of the file), ``rating`` (float32, on ``scale``) and
    ``timestamp`` (int64 seconds since 1970 UTC, or ``None`` when the file has
    none).
    """

    user_id: np.ndarray
    movie_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None
    scale: RatingScale
    source: str = "<memory>"
    sha256: str | None = None
    layout: str = "memory"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.user_id)
        columns = [self.movie_id, self.rating] + (
            [] if self.timestamp is None else [self.timestamp]
        )
        if any(len(c) != n for c in columns):
            raise ValueError("Ratings columns must all have the same length")

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def n_users(self) -> int:
        return int(np.unique(self.user_id).size)

    @property
    def n_movies(self) -> int:
        return int(np.unique(self.movie_id).size)

    def take(self, rows: np.ndarray) -> Ratings:
        """A new table holding only ``rows`` (an index array or boolean mask)."""
        return Ratings(
            user_id=self.user_id[rows],
            movie_id=self.movie_id[rows],
            rating=self.rating[rows],
            timestamp=None if self.timestamp is None else self.timestamp[rows],
            scale=self.scale,
            source=self.source,
            sha256=self.sha256,
            layout=self.layout,
        )

    @classmethod
    def from_arrays(
        cls,
        user_id: np.ndarray | list[int],
        movie_id: np.ndarray | list[int],
        rating: np.ndarray | list[float],
        *,
        timestamp: np.ndarray | list[int] | None = None,
        scale: RatingScale = HALF_STARS,
    ) -> Ratings:
        """Build a table from in-memory arrays (used by tests and the Python API)."""
        return cls(
            user_id=np.asarray(user_id, dtype=np.int64),
            movie_id=np.asarray(movie_id, dtype=np.int64),
            rating=np.asarray(rating, dtype=np.float32),
            timestamp=None if timestamp is None else np.asarray(timestamp, dtype=np.int64),
            scale=scale,
        )

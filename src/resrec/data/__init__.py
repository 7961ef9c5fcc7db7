"""The data layer: reading, downloading and synthesising ratings.

Everything returns a :class:`Ratings` table (raw ids, ratings on a known
scale, optional timestamps) or a :class:`Movies` table of titles and genres.
"""

from resrec.data.ratings import HALF_STARS, WHOLE_STARS, Ratings, RatingScale
from resrec.data.readers import detect_layout, read_ratings

__all__ = [
    "HALF_STARS",
    "WHOLE_STARS",
    "RatingScale",
    "Ratings",
    "detect_layout",
    "read_ratings",
]

"""The data layer: reading, downloading and synthesising ratings.

Everything returns a :class:`Ratings` table (raw ids, ratings on a known
scale, optional timestamps) or a :class:`Movies` table of titles and genres.
"""

from resrec.data.download import download, release_movies_path, release_ratings_path
from resrec.data.movies import Movies, find_movies_file, read_movies
from resrec.data.ratings import HALF_STARS, WHOLE_STARS, Ratings, RatingScale
from resrec.data.readers import detect_layout, read_ratings
from resrec.data.synth import synthesize, write_synthetic_csv

__all__ = [
    "HALF_STARS",
    "WHOLE_STARS",
    "Movies",
    "RatingScale",
    "Ratings",
    "detect_layout",
    "download",
    "find_movies_file",
    "read_movies",
    "read_ratings",
    "release_movies_path",
    "release_ratings_path",
    "synthesize",
    "write_synthetic_csv",
]

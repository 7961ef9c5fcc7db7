"""resrec: train, evaluate and serve a residual-network recommender on MovieLens.

The public Python API::

    ratings = resrec.read_ratings("ml-100k/u.data")
    result = resrec.fit(ratings, resrec.preset("tutorial"))
    resrec.save_run(result, "runs/ml-100k")
"""

__version__ = "0.1.0"

from resrec.config import PRESETS, TrainConfig, preset
from resrec.data import Ratings, RatingScale, read_ratings
from resrec.ids import IdMap
from resrec.models import build_model
from resrec.plots import plot_history
from resrec.run import Run, load_run, save_run
from resrec.split import Split, split_ratings
from resrec.train.trainer import Examples, Trainer
from resrec.workflow import TrainResult, encode_ratings, fit

__all__ = [
    "PRESETS",
    "Examples",
    "IdMap",
    "RatingScale",
    "Ratings",
    "Run",
    "Split",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "__version__",
    "build_model",
    "encode_ratings",
    "fit",
    "load_run",
    "plot_history",
    "preset",
    "read_ratings",
    "save_run",
    "split_ratings",
]

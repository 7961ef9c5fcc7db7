"""Rating models: plain ``torch.nn.Module`` objects with no I/O.

Every trainable model predicts the *offset* from mu, the mean training rating,
and exposes its per-user and per-movie tables through :meth:`row_tables` so the
trainer can update only the rows a batch touches. The baselines (global mean,
biases) are fitted in closed form instead (:mod:`resrec.models.baselines`).
"""

from resrec.models.base import RatingModel, build_model
from resrec.models.baselines import Biases, DirectFitModel, GlobalMean
from resrec.models.residual import DeepNet, MFNet, ResidualNet, SideBranch

__all__ = [
    "Biases",
    "DeepNet",
    "DirectFitModel",
    "GlobalMean",
    "MFNet",
    "RatingModel",
    "ResidualNet",
    "SideBranch",
    "build_model",
]

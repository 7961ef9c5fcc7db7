"""resrec: train, evaluate and serve a residual-network recommender on MovieLens."""

__version__ = "0.1.0"

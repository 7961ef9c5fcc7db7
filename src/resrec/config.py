"""Hyperparameters: one typed, defaulted config object and the named presets.

A preset is a set of overrides applied on top of :class:`TrainConfig`'s
defaults; options given on the command line or in a config file apply on top of
the preset. The resolved config is saved in every run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from resrec.errors import ConfigError, echoed

ModelKind = Literal["residual", "mf", "deep", "biases", "global-mean"]
OptimizerKind = Literal["sgd", "adam", "adagrad"]
Activation = Literal["elu", "relu", "tanh", "gelu", "identity"]
Schedule = Literal["constant", "step", "cosine"]
SideInput = Literal["embeddings", "movie_ratings"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does.

    The defaults are those of the published tutorial (the ``tutorial`` preset).
    """

    # -- model ---------------------------------------------------------------
    model: ModelKind = "residual"  # residual = mf branch + MLP side branch
    embedding_dim: int = 10  # K: latent size per user and per movie
    hidden: tuple[int, ...] = (400,)  # widths of the side branch's hidden layers
    activation: Activation = "elu"  # side branch non-linearity
    dropout: float = 0.0  # dropout after each hidden activation (0 disables)
    batch_norm: bool = False  # batch normalisation before each hidden activation
    init_scale: float = 0.05  # embeddings start uniform in [-init_scale, init_scale]
    implicit_feedback: bool = False  # user vector p_u + |N(u)|^-1/2 sum of y_j (SVD++)
    # What the residual model's side branch reads: "embeddings" is the tutorial's MLP on
    # [p_u ; q_m] (hidden, activation, dropout, batch_norm above); "movie_ratings" is an
    # autoencoder of each movie's training ratings, trained after the main branch on its
    # residuals (the side_* fields below; see resrec.models.autoencoder). Residual model
    # only: mf has no side branch, and deep's is by definition the MLP on embeddings.
    side_input: SideInput = "embeddings"
    side_units: int = 500  # movie_ratings side: width of the movie code
    side_l2: float = 400.0  # movie_ratings side: penalty on its weights, per epoch (see README)
    side_lr: float = 0.001  # movie_ratings side: Adam learning rate of its stage
    side_epochs: int = 200  # movie_ratings side: most epochs of its stage (early stopping ends it)
    bias_reg_user: float = 5.0  # "biases" model: ridge penalty on b_u, in pseudo-ratings
    bias_reg_movie: float = 2.0  # "biases" model: ridge penalty on b_m (both chosen on validation)
    bias_passes: int = 10  # "biases" model: alternating closed-form passes

    # -- optimisation ----------------------------------------------------------
    optimizer: OptimizerKind = "sgd"
    lr: float = 0.08
    momentum: float = 0.9  # SGD only; Keras semantics (every row decays every step)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam only
    eps: float = 1e-7  # Adam / Adagrad denominator guard
    l2: float = 0.0  # penalty on the embedding and bias rows of each batch
    l2_count_power: float = 1.0  # l2 of a row per epoch grows as (its rating count) ** this
    l2_dense: float = 0.0  # weight decay on the side branch's weights
    l2_implicit: float = 0.0  # implicit feedback: weight decay on the y_j table
    schedule: Schedule = "constant"  # learning-rate schedule over epochs
    schedule_gamma: float = 0.5  # "step": multiply lr by this every schedule_step epochs
    schedule_step: int = 5
    batch_size: int = 128
    user_chunk: int = 0  # > 0: batches are made of chunks of this many ratings of one user
    epochs: int = 15
    early_stopping: int = 0  # patience in epochs on validation RMSE; 0 disables
    eval_batch_size: int = 65536

    # -- data and reproducibility ---------------------------------------------
    test_fraction: float = 0.2
    valid_fraction: float = 0.0  # fraction of all rows carved from train for validation
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = number of CPU cores
    device: Literal["auto", "cpu", "cuda"] = "cpu"

    extra: dict[str, Any] = field(default_factory=dict)  # free-form, saved as is

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.embedding_dim >= 1, "embedding_dim must be >= 1", self.embedding_dim)
        _check(all(h >= 1 for h in self.hidden), "hidden widths must be >= 1", self.hidden)
        _check(0 <= self.dropout < 1, "dropout must be in [0, 1)", self.dropout)
        _check(0 < self.lr <= 1e6, "lr must be > 0 and at most 1e6", self.lr)
        _check(0 <= self.momentum < 1, "momentum must be in [0, 1)", self.momentum)
        _check(
            min(self.l2, self.l2_dense, self.l2_implicit) >= 0,
            "l2, l2_dense and l2_implicit must be >= 0",
            (self.l2, self.l2_dense, self.l2_implicit),
        )
        _check(
            0 <= self.l2_count_power <= 1, "l2_count_power must be in [0, 1]", self.l2_count_power
        )
        _check(self.batch_size >= 1, "batch_size must be >= 1", self.batch_size)
        _check(self.user_chunk >= 0, "user_chunk must be >= 0", self.user_chunk)
        _check(self.side_units >= 1, "side_units must be >= 1", self.side_units)
        _check(self.side_l2 >= 0, "side_l2 must be >= 0", self.side_l2)
        _check(0 < self.side_lr <= 1e6, "side_lr must be > 0 and at most 1e6", self.side_lr)
        _check(self.side_epochs >= 1, "side_epochs must be >= 1", self.side_epochs)
        _check(self.epochs >= 1, "epochs must be >= 1", self.epochs)
        _check(self.early_stopping >= 0, "early_stopping must be >= 0", self.early_stopping)
        _check(self.threads >= 0, "threads must be >= 0", self.threads)
        _check(
            min(self.bias_reg_user, self.bias_reg_movie) >= 0 and self.bias_passes >= 1,
            "bias_reg_user, bias_reg_movie must be >= 0 and bias_passes >= 1",
            (self.bias_reg_user, self.bias_reg_movie, self.bias_passes),
        )
        if self.early_stopping and self.valid_fraction <= 0:
            raise ConfigError(
                "early_stopping needs a validation split: set valid_fraction > 0 "
                "(early stopping never looks at the test split)"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied; unknown names raise :class:`ConfigError`."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {sorted(unknown)}; known fields are "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **_coerce(changes))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls().replace(**data)


_CHOICES: dict[str, tuple[str, ...]] = {
    "model": get_args(ModelKind),
    "optimizer": get_args(OptimizerKind),
    "activation": get_args(Activation),
    "schedule": get_args(Schedule),
    "side_input": get_args(SideInput),
    "device": ("auto", "cpu", "cuda"),
}
_SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool}
_LARGEST_SEED = 2**32 - 1


def _check_types(config: TrainConfig) -> None:
    """Each field has its declared type, a finite value and, for names, a known choice."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in _CHOICES:
            if value not in _CHOICES[f.name]:
                raise ConfigError(
                    f"{f.name} must be one of {list(_CHOICES[f.name])}; got {echoed(value)}"
                )
        elif f.name in ("hidden", "betas"):
            kind = int if f.name == "hidden" else float
            if not all(_is(item, kind) for item in value):
                raise ConfigError(
                    f"{f.name} must be a list of {kind.__name__}s; got {echoed(value)}"
                )
        elif f.type in _SCALARS and not _is(value, _SCALARS[f.type]):
            article = "an" if f.type == "int" else "a"
            raise ConfigError(f"{f.name} must be {article} {f.type}; got {echoed(value)}")
    if not 0 <= config.seed <= _LARGEST_SEED:
        raise ConfigError(f"seed must be in [0, {_LARGEST_SEED}]; got {echoed(config.seed)}")


def _is(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _coerce(changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    for key in ("hidden", "betas"):
        if key in out and out[key] is not None:
            out[key] = tuple(out[key])
    return out


def _check(ok: bool, message: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{message}; got {echoed(value)}")


PRESETS: dict[str, dict[str, Any]] = {
    # The published tutorial, exactly: K=10, 400 ELU units, SGD(0.08, momentum 0.9),
    # batch 128, 15 epochs, no regularisation, shuffled 80/20 split.
    "tutorial": {},
    # Reaches the tutorial's final test RMSE in about a tenth of its time (see the README):
    # wider factors and a smaller side branch, lazy Adam on batches of 1024, l2 on the
    # rows, and a cosine schedule that ends the three epochs at a learning rate near 0.
    "fast": {
        "embedding_dim": 24,
        "hidden": (32,),
        "optimizer": "adam",
        "lr": 0.012,
        "l2": 0.04,
        "batch_size": 1024,
        "epochs": 3,
        "schedule": "cosine",
        "threads": 1,  # its operations are small: a second thread costs more than it saves
    },
    # The best validation RMSE found; see the README for how it was chosen. The main
    # branch has SVD++-style implicit feedback (batches of 8-rating user chunks keep it
    # cheap), and a row's l2 per epoch grows as the square root of its rating count. The
    # side branch reads each movie's ratings (an item autoencoder's decoder) and is
    # trained after the main branch, on its residuals. "hidden" is the deep sibling's:
    # one linear layer (a hidden layer made no difference on validation).
    "accurate": {
        "embedding_dim": 64,
        "hidden": (),
        "implicit_feedback": True,
        "user_chunk": 8,
        "side_input": "movie_ratings",
        "side_units": 500,
        "side_l2": 400.0,
        "side_lr": 0.001,
        "optimizer": "adam",
        "lr": 0.002,
        "batch_size": 512,
        "epochs": 80,
        "l2": 1.0,
        "l2_count_power": 0.5,
        "l2_dense": 0.1,
        "l2_implicit": 0.003,
        "valid_fraction": 0.05,
        "early_stopping": 5,
    },
}


def preset(name: str) -> TrainConfig:
    """The config of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)}; got {echoed(name)}")
    return TrainConfig().replace(**PRESETS[name])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read config overrides from a JSON file (as written by ``resrec tune``)."""
    data = _parse_json(path, _read_text(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields")
    return data.get("config", data)


def _read_text(path: str | Path) -> str:
    """The text of a config file; a clear error for a missing, binary or non-UTF-8 one."""
    from resrec.data.sniff import text_problem

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    problem = text_problem(raw, accepted="JSON text")
    if problem is not None:
        raise ConfigError(f"{path}: {problem.message}", hint=problem.hint)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1}); JSON is UTF-8") from None


def _parse_json(path: str | Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    except ValueError:  # an integer with more digits than Python converts
        raise ConfigError(
            f"{path}: a number is out of range (thousands of digits); no config value is that large"
        ) from None

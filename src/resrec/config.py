"""Hyperparameters: one typed, defaulted config object and the named presets.

A preset is a set of overrides applied on top of :class:`TrainConfig`'s
defaults; options given on the command line or in a config file apply on top of
the preset. The resolved config is saved in every run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from resrec.errors import ConfigError, counted, echoed

log = logging.getLogger(__name__)

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
        _check_ranges(self)
        _check_consistent(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied; unknown names raise :class:`ConfigError`.

        ``side_input`` is the residual model's: changing ``model`` to another
        model without naming ``side_input`` resets it to ``"embeddings"``. A
        changed field that the result does not use (``betas`` with SGD,
        ``schedule_step`` without the step schedule, ...) is logged as a warning.
        """
        new = self._replaced(changes)
        _warn_unused(self, new, changes)
        return new

    def _replaced(self, changes: dict[str, Any]) -> TrainConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {sorted(unknown)}; known fields are "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
            )
        changes = _coerce(changes)
        if "model" in changes and "side_input" not in changes and changes["model"] != "residual":
            changes["side_input"] = "embeddings"
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config saved as ``data`` (a run's or a checkpoint's), without warnings.

        Runs saved before ``side_input`` was checked may pair another model with
        ``"movie_ratings"``, which that model never read: it is read as ``"embeddings"``.
        """
        if data.get("side_input") == "movie_ratings" and data.get("model") in _OTHER_MODELS:
            data = {**data, "side_input": "embeddings"}
        return cls()._replaced(data)


_CHOICES: dict[str, tuple[str, ...]] = {
    "model": get_args(ModelKind),
    "optimizer": get_args(OptimizerKind),
    "activation": get_args(Activation),
    "schedule": get_args(Schedule),
    "side_input": get_args(SideInput),
    "device": ("auto", "cpu", "cuda"),
}
_OTHER_MODELS = tuple(m for m in get_args(ModelKind) if m != "residual")
_SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool}
_LARGEST_SEED = 2**32 - 1

MAX_EMBEDDING_DIM = 4096
"""The largest ``embedding_dim``."""
MAX_WIDTH = 65536
"""The largest width of a hidden layer (``hidden``) and of the movie code (``side_units``)."""
MAX_HIDDEN_LAYERS = 64
"""The most hidden layers of the side branch."""
MAX_BATCH = 2**24
"""The largest ``batch_size``, ``eval_batch_size`` and ``user_chunk``."""
MAX_EPOCHS = 1_000_000
"""The largest ``epochs``, ``side_epochs``, ``bias_passes``, ``schedule_step``, patience."""
MAX_THREADS = 4096
"""The most torch threads."""

# Whole-number fields and their [low, high] ranges.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "embedding_dim": (1, MAX_EMBEDDING_DIM),
    "side_units": (1, MAX_WIDTH),
    "side_epochs": (1, MAX_EPOCHS),
    "bias_passes": (1, MAX_EPOCHS),
    "schedule_step": (1, MAX_EPOCHS),
    "batch_size": (1, MAX_BATCH),
    "user_chunk": (0, MAX_BATCH),
    "epochs": (1, MAX_EPOCHS),
    "early_stopping": (0, MAX_EPOCHS),
    "eval_batch_size": (1, MAX_BATCH),
    "seed": (0, _LARGEST_SEED),
    "threads": (0, MAX_THREADS),
}


def _check_types(config: TrainConfig) -> None:
    """Each field has its declared type, a finite value and, for names, a known choice."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in _CHOICES:
            if value not in _CHOICES[f.name]:
                raise ConfigError(
                    f"{f.name} must be one of {list(_CHOICES[f.name])}; got {echoed(value)}"
                )
        elif f.name == "hidden":
            if not isinstance(value, tuple | list) or not all(_is(item, int) for item in value):
                raise ConfigError(f"hidden must be a list of ints; got {echoed(value)}")
        elif f.name == "betas":
            pair = isinstance(value, tuple | list) and len(value) == 2
            if not (pair and all(map(_is_finite, value))):
                raise ConfigError(
                    "betas must be a list of two finite numbers (Adam's beta1 and beta2); "
                    f"got {echoed(value)}"
                )
        elif f.name == "extra":
            _check_extra(value)
        elif f.type in _SCALARS and not _is(value, _SCALARS[f.type]):
            if f.type == "float" and _is_number(value):
                raise ConfigError(f"{f.name} must be a finite number; got {echoed(value)}")
            article = "an" if f.type == "int" else "a"
            raise ConfigError(f"{f.name} must be {article} {f.type}; got {echoed(value)}")


def _check_extra(value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"extra must be a JSON object; got {echoed(value)}")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise ConfigError(
            "extra must hold only JSON values (text, numbers, true/false, null, lists, "
            f"objects); got {echoed(value)}"
        ) from None


def _check_ranges(c: TrainConfig) -> None:
    """Each number within what training can use (finiteness is checked with the types)."""
    for name, (low, high) in _INT_RANGES.items():
        value = getattr(c, name)
        _check(low <= value <= high, f"{name} must be in [{low}, {high}]", value)
    _check(
        all(1 <= h <= MAX_WIDTH for h in c.hidden),
        f"hidden widths must be in [1, {MAX_WIDTH}]",
        c.hidden,
    )
    _check(
        len(c.hidden) <= MAX_HIDDEN_LAYERS,
        f"hidden must have at most {MAX_HIDDEN_LAYERS} layers",
        len(c.hidden),
    )
    _check(0 <= c.dropout < 1, "dropout must be in [0, 1)", c.dropout)
    _check(0 < c.init_scale <= 1, "init_scale must be > 0 and at most 1", c.init_scale)
    _check(0 < c.lr <= 1e6, "lr must be > 0 and at most 1e6", c.lr)
    _check(0 < c.side_lr <= 1e6, "side_lr must be > 0 and at most 1e6", c.side_lr)
    _check(0 <= c.momentum < 1, "momentum must be in [0, 1)", c.momentum)
    _check(all(0 <= b < 1 for b in c.betas), "betas must both be in [0, 1)", c.betas)
    _check(0 < c.eps <= 1, "eps must be > 0 and at most 1", c.eps)
    _check(0 < c.schedule_gamma <= 1, "schedule_gamma must be > 0 and at most 1", c.schedule_gamma)
    penalties = ("l2", "l2_dense", "l2_implicit", "side_l2", "bias_reg_user", "bias_reg_movie")
    for name in penalties:
        _check(getattr(c, name) >= 0, f"{name} must be >= 0", getattr(c, name))
    _check(0 <= c.l2_count_power <= 1, "l2_count_power must be in [0, 1]", c.l2_count_power)
    _check(0 <= c.test_fraction < 1, "test_fraction must be in [0, 1)", c.test_fraction)
    _check(0 <= c.valid_fraction < 1, "valid_fraction must be in [0, 1)", c.valid_fraction)


def _check_consistent(c: TrainConfig) -> None:
    """Fields that only make sense together."""
    if c.side_input == "movie_ratings" and c.model != "residual":
        raise ConfigError(
            f"side_input 'movie_ratings' is for model 'residual' only; got model {c.model!r}",
            hint="use model 'residual', or side_input 'embeddings' (mf, biases and "
            "global-mean have no side branch; deep's is the MLP on the embeddings)",
        )
    if c.test_fraction + c.valid_fraction >= 1:
        raise ConfigError(
            "test_fraction + valid_fraction must be below 1; got "
            f"{c.test_fraction} + {c.valid_fraction}"
        )
    if c.early_stopping and c.valid_fraction <= 0:
        raise ConfigError(
            "early_stopping needs a validation split: set valid_fraction > 0 "
            "(early stopping never looks at the test split)"
        )


def _sgd(c: TrainConfig) -> bool:
    return c.optimizer == "sgd"


def _adam(c: TrainConfig) -> bool:
    return c.optimizer == "adam"


def _step_schedule(c: TrainConfig) -> bool:
    return c.schedule == "step"


def _ratings_side(c: TrainConfig) -> bool:
    return c.model == "residual" and c.side_input == "movie_ratings"


def _biases(c: TrainConfig) -> bool:
    return c.model == "biases"


def _factors(c: TrainConfig) -> bool:
    return c.model in ("residual", "mf", "deep")


def _implicit(c: TrainConfig) -> bool:
    return c.implicit_feedback and _factors(c)


def _mlp(c: TrainConfig) -> bool:
    return c.model == "deep" or (c.model == "residual" and c.side_input == "embeddings")


def _mlp_activation(c: TrainConfig) -> bool:
    return c.model == "residual" and c.side_input == "embeddings"  # deep's is always relu


# Field -> (what uses it, test of a config, the fields that decide it).
_USED_WITH: dict[str, tuple[str, Callable[[TrainConfig], bool], tuple[str, ...]]] = {
    "momentum": ("optimizer 'sgd'", _sgd, ("optimizer",)),
    "betas": ("optimizer 'adam'", _adam, ("optimizer",)),
    "eps": ("optimizer 'adam' or 'adagrad'", lambda c: not _sgd(c), ("optimizer",)),
    "schedule_gamma": ("schedule 'step'", _step_schedule, ("schedule",)),
    "schedule_step": ("schedule 'step'", _step_schedule, ("schedule",)),
    **{
        name: (
            "model 'residual' with side_input 'movie_ratings'",
            _ratings_side,
            ("model", "side_input"),
        )
        for name in ("side_units", "side_l2", "side_lr", "side_epochs")
    },
    **{
        name: ("model 'biases'", _biases, ("model",))
        for name in ("bias_reg_user", "bias_reg_movie", "bias_passes")
    },
    **{
        name: ("models 'residual', 'mf' and 'deep'", _factors, ("model",))
        for name in ("embedding_dim", "init_scale", "implicit_feedback")
    },
    "l2_implicit": ("implicit_feedback true", _implicit, ("implicit_feedback", "model")),
    **{
        name: (
            "model 'deep', or 'residual' with side_input 'embeddings'",
            _mlp,
            ("model", "side_input"),
        )
        for name in ("hidden", "dropout", "batch_norm")
    },
    "activation": (
        "model 'residual' with side_input 'embeddings' (deep's is relu)",
        _mlp_activation,
        ("model", "side_input"),
    ),
}
_WARNED: set[tuple[str, ...]] = set()


def _warn_unused(old: TrainConfig, new: TrainConfig, changes: dict[str, Any]) -> None:
    """Log a warning (once per combination) for each changed field that ``new`` does not use."""
    for name, (where, used, deciding) in _USED_WITH.items():
        if name not in changes or getattr(new, name) == getattr(old, name) or used(new):
            continue
        this = ", ".join(f"{d} {getattr(new, d)!r}" for d in deciding)
        key = (name, this)
        if key in _WARNED:
            continue
        _WARNED.add(key)
        log.warning(
            "%s %s has no effect: it is used with %s only, and this config has %s",
            name,
            echoed(getattr(new, name)),
            where,
            this,
        )


def _is(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return _is_finite(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_number(value)  # an int is finite, even one too large for a float


def _coerce(changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    for key in ("hidden", "betas"):
        if isinstance(out.get(key), list):
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
    return TrainConfig()._replaced(PRESETS[name])  # a preset warns of nothing unused


_BYTES = 4  # float32


def model_memory(config: TrainConfig, n_users: int, n_movies: int) -> dict[str, int]:
    """Bytes that training needs for the model, by the fields that decide them.

    Counted: the weights, the optimiser's state and one more copy (the best
    epoch's weights, a checkpoint); not the ratings, batches or activations. The
    keys name the fields, for example ``"embedding_dim 64 x (users + movies)"``.
    """
    c = config
    if c.model == "global-mean":
        return {}
    if c.model == "biases":
        return {"biases of users and movies": 4 * _BYTES * (n_users + n_movies)}
    slots = {"sgd": 1 if c.momentum > 0 else 0, "adam": 2, "adagrad": 1}[c.optimizer]
    copies = 2 + slots  # the weights, one more copy, the optimiser's state
    rows = n_users + n_movies + (n_movies if c.implicit_feedback else 0)
    implicit = " + implicit" if c.implicit_feedback else ""
    parts = {
        f"embedding_dim {c.embedding_dim} x (users + movies{implicit})": (
            copies * _BYTES * rows * c.embedding_dim
        )
    }
    if c.model != "deep":
        parts["biases of users and movies"] = copies * _BYTES * (n_users + n_movies)
    if c.model == "residual" and c.side_input == "movie_ratings":
        # Encoder and decoder rows per user, trained by Adam (+ gradient); codes per movie.
        weights = 2 * n_users * c.side_units
        parts[f"side_units {c.side_units} x users"] = _BYTES * (
            5 * weights + 2 * n_movies * c.side_units
        )
    elif c.model in ("residual", "deep"):
        width, count = 2 * c.embedding_dim, 0
        for size in (*c.hidden, 1):
            count += width * size + size * (5 if c.batch_norm else 1)
            width = size
        parts[f"hidden {list(c.hidden)}"] = (copies + 1) * _BYTES * count  # + gradient
    return parts


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable``), else the machine's; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return total if total > 0 else None


def check_model_memory(
    config: TrainConfig, n_users: int, n_movies: int, *, available: int | None = None
) -> int:
    """Refuse a model whose training would need more memory than is available.

    ``available`` defaults to :func:`available_memory`; when that is unknown,
    nothing is refused. Returns the estimate of :func:`model_memory` in bytes.
    """
    parts = model_memory(config, n_users, n_movies)
    total = sum(parts.values())
    free = available_memory() if available is None else available
    if free is None or total <= free:
        return total
    largest = max(parts, key=parts.__getitem__)
    raise ConfigError(
        f"the model needs about {_size(total)} of memory to train ({counted(n_users, 'user')}, "
        f"{counted(n_movies, 'movie')}), more than the {_size(free)} available; "
        f"{largest} takes {_size(parts[largest])}",
        hint="lower embedding_dim, hidden or side_units, or use a machine with more memory",
    )


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:,.0f} TB"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read config overrides from a JSON file (as written by ``resrec tune``)."""
    data = _parse_json(path, _read_text(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields")
    return data.get("config", data)


def _read_text(path: str | Path) -> str:
    """The text of a config file; a clear error for a missing, binary or non-UTF-8 one."""
    from resrec.data.sniff import text_problem
    from resrec.files import check_input_file

    check_input_file(path, "a config file")
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
    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ConfigError(
                    f"{path}: {key!r} is given twice ({seen[key]!r} and {value!r}); "
                    "expected each field once",
                    hint=f"keep the {key} you mean and delete the other",
                )
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    except ValueError:  # an integer with more digits than Python converts
        raise ConfigError(
            f"{path}: a number is out of range (thousands of digits); no config value is that large"
        ) from None

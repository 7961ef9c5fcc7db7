"""Keras reference ratio: the tutorial's model in Keras 3 beside resrec's ``tutorial`` preset.

Builds the published tutorial's residual network in Keras 3 (TensorFlow
backend) from its definition: user and movie factor embeddings (K = 10) and
user and movie bias embeddings, all initialised uniform in [-0.05, 0.05]; the
main branch is the dot product of the factors plus the two biases, the side
branch Concatenate -> Dense(400, ELU) -> Dense(1), and the output their sum,
fitted to ``rating - mu`` with MSE and SGD (lr 0.08, momentum 0.9) on batches
of 128. The sizes and optimiser settings are read from the ``tutorial`` preset,
so the two models cannot drift apart.

On the same ``--ratings`` synthetic training ratings (ML-20M's user and movie
counts) it times one epoch of ``model.fit``, after a warm-up fit on
``--warmup`` rows so graph tracing is not counted, and one resrec training
pass of the ``tutorial`` preset as ``bench_train.py`` does, for each
``--threads``. It prints ratings per second by wall clock and per CPU-second,
the ratio resrec / Keras, and each model's test MSE after that one epoch on
``--test`` held-out ratings: a check that both train the same kind of model,
not a race (the synthetic ratings are random, so neither can do much better
than predicting mu, whose MSE is printed alongside). Keras keeps TensorFlow's
default thread settings, which are printed.

TensorFlow is not a dependency of resrec; without it the script says so and
exits 0. Install it into a separate environment that also has resrec:

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow==2.21.0
    /tmp/tfenv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/tfenv/bin/pip install -e .
    /tmp/tfenv/bin/python benchmarks/bench_keras.py                    # 1M ratings
    /tmp/tfenv/bin/python benchmarks/bench_keras.py --ratings 300000 --threads 1
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from _common import ML20M_MOVIES, ML20M_USERS, header, synthetic_examples, timed
from resrec.config import TrainConfig, preset
from resrec.data.ratings import HALF_STARS
from resrec.models import build_model
from resrec.train.trainer import Examples, Trainer

INSTALL = (
    "python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow==2.21.0 && "
    "/tmp/tfenv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    " && /tmp/tfenv/bin/pip install -e ."
)


@dataclass
class Result:
    name: str
    wall: float  # ratings per second by wall clock
    cpu: float  # ratings per CPU-second (all the process's threads)
    test_mse: float  # raw output against rating - mu on the held-out ratings


def import_keras() -> tuple[Any, Any] | None:
    """TensorFlow and Keras 3 on the TensorFlow backend, or None if they cannot be imported."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up notes out
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        return None
    return tf, keras


def slice_examples(examples: Examples, lo: int, hi: int) -> Examples:
    return Examples(examples.users[lo:hi], examples.movies[lo:hi], examples.ratings[lo:hi])


def keras_tutorial(keras: Any, config: TrainConfig, n_users: int, n_movies: int) -> Any:
    """The tutorial's residual network, compiled with its loss and optimiser."""
    layers = keras.layers
    k, scale = config.embedding_dim, config.init_scale
    user = keras.Input(shape=(1,), dtype="int32", name="user")
    movie = keras.Input(shape=(1,), dtype="int32", name="movie")

    def rows(index: Any, count: int, width: int, name: str) -> Any:
        init = keras.initializers.RandomUniform(-scale, scale)
        table = layers.Embedding(count, width, embeddings_initializer=init, name=name)
        return layers.Flatten()(table(index))

    p = rows(user, n_users, k, "user_factors")
    q = rows(movie, n_movies, k, "movie_factors")
    b_u = rows(user, n_users, 1, "user_bias")
    b_m = rows(movie, n_movies, 1, "movie_bias")
    main = layers.Add()([layers.Dot(axes=1)([p, q]), b_u, b_m])
    hidden = layers.Concatenate()([p, q])
    for width in config.hidden:
        hidden = layers.Dense(width, activation=config.activation)(hidden)
    side = layers.Dense(1)(hidden)
    model = keras.Model([user, movie], layers.Add()([main, side]))
    optimizer = keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def keras_inputs(examples: Examples, mu: float) -> tuple[list[np.ndarray], np.ndarray]:
    users = examples.users.numpy().astype(np.int32).reshape(-1, 1)
    movies = examples.movies.numpy().astype(np.int32).reshape(-1, 1)
    return [users, movies], (examples.ratings.numpy() - np.float32(mu)).reshape(-1, 1)


def run_keras(
    keras: Any, train: Examples, test: Examples, mu: float, warmup: int, batch: int
) -> tuple[Result, Any]:
    """One timed epoch of ``model.fit`` after a warm-up fit, and the test MSE after it."""
    config = preset("tutorial")
    keras.utils.set_random_seed(0)
    model = keras_tutorial(keras, config, ML20M_USERS, ML20M_MOVIES)
    x_warm, y_warm = keras_inputs(slice_examples(train, 0, warmup), mu)
    model.fit(x_warm, y_warm, batch_size=config.batch_size, epochs=1, verbose=0)
    x, y = keras_inputs(train, mu)
    with timed() as t:
        model.fit(x, y, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)
    x_test, y_test = keras_inputs(test, mu)
    predicted = model.predict(x_test, batch_size=batch, verbose=0).astype(np.float64)
    mse = float(np.mean((predicted - y_test) ** 2))
    return Result("keras", len(train) / t.wall, len(train) / t.cpu, mse), model


def run_resrec(train: Examples, test: Examples, mu: float, threads: int) -> Result:
    """One timed training pass of the tutorial preset, as bench_train.py times it."""
    torch.set_num_threads(threads)
    config = preset("tutorial").replace(threads=threads)
    model = build_model(config, ML20M_USERS, ML20M_MOVIES, seed=0)
    warm_rows = slice_examples(train, 0, 20_000)
    warm = Trainer(model, config, warm_rows, mu=mu, scale=HALF_STARS, fused=True)
    warm._train_pass(None)
    warm.row_optimizer.flush(warm.step)
    trainer = Trainer(model, config, train, mu=mu, scale=HALF_STARS, fused=True)
    with timed() as t:
        trainer._train_pass(None)
    # The lazy momentum rows catch up here, as at the end of every epoch (not timed,
    # as in bench_train.py; it is one pass over the tables).
    trainer.row_optimizer.flush(trainer.step)
    mse = trainer.evaluate(test)["mse"]
    return Result(f"resrec {threads}t", len(train) / t.wall, len(train) / t.cpu, mse)


def thread_settings(tf: Any) -> str:
    """TensorFlow's intra- and inter-op thread counts, left at their defaults."""
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return f"intra-op {intra}, inter-op {inter} (0 = TensorFlow picks; {os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--test", type=int, default=200_000, help="held-out ratings")
    parser.add_argument("--warmup", type=int, default=5_000, help="rows of Keras's warm-up fit")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()

    header("Keras reference ratio: the tutorial model, Keras 3 beside resrec")
    found = import_keras()
    if found is None:
        print(
            "# skipped: TensorFlow/Keras cannot be imported here; to run it, install tensorflow "
            f"into a separate environment that also has resrec ({INSTALL}) and run "
            "/tmp/tfenv/bin/python benchmarks/bench_keras.py"
        )
        return
    tf, keras = found
    print(
        f"# tensorflow {tf.__version__}, keras {keras.__version__} "
        f"(backend {keras.backend.backend()}); TensorFlow threads: {thread_settings(tf)}"
    )

    data = synthetic_examples(args.ratings + args.test)
    train = slice_examples(data, 0, args.ratings)
    test = slice_examples(data, args.ratings, args.ratings + args.test)
    mu = float(train.ratings.to(torch.float64).mean())
    guess = float(((test.ratings.to(torch.float64) - mu) ** 2).mean())
    print(
        f"# {args.ratings:,} training ratings, {args.test:,} held out, {ML20M_USERS:,} users, "
        f"{ML20M_MOVIES:,} movies; mu {mu:.4f}; test MSE of predicting mu: {guess:.4f}"
    )

    keras_result, model = run_keras(keras, train, test, mu, args.warmup, 8192)
    print(
        f"# Keras model: {model.count_params():,} parameters, jit_compile {model.jit_compile}, "
        f"warm-up fit on {args.warmup:,} rows"
    )
    print("model        ratings/s (wall)  per CPU-second  test MSE  resrec/Keras (wall, CPU)")
    print(
        f"{keras_result.name:11s}  {keras_result.wall:16,.0f}  {keras_result.cpu:14,.0f}  "
        f"{keras_result.test_mse:8.4f}",
        flush=True,
    )
    for threads in args.threads:
        r = run_resrec(train, test, mu, threads)
        print(
            f"{r.name:11s}  {r.wall:16,.0f}  {r.cpu:14,.0f}  {r.test_mse:8.4f}  "
            f"{r.wall / keras_result.wall:11.1f}x  {r.cpu / keras_result.cpu:7.1f}x",
            flush=True,
        )
    print("# per CPU-second: ratings over the CPU time of all the process's threads")


if __name__ == "__main__":
    main()

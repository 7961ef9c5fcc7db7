"""Training throughput of the tutorial and fast presets at ML-20M scale.

For each preset and thread count: ratings per second over one full pass of
``--ratings`` synthetic training ratings on ML-20M's user and movie counts,
the seconds an ML-20M epoch (16.0M training ratings) takes at that rate, and
the fraction of the compute bound reached. The bound is the side branch's
matrix-product FLOPs per rating (forward and backward) at the float32 GFLOP/s
this machine reaches on those shapes, measured in the same run. The autograd
path (``Trainer(fused=False)``) is timed on ``--autograd-ratings`` for the
ratio.

    .venv/bin/python benchmarks/bench_train.py                     # full scale
    .venv/bin/python benchmarks/bench_train.py --ratings 500000 --threads 1
"""

from __future__ import annotations

import argparse

import torch

from _common import (
    ML20M_MOVIES,
    ML20M_TRAIN,
    ML20M_USERS,
    header,
    matmul_gflops,
    side_flops_per_rating,
    synthetic_examples,
    timed,
)
from resrec.config import preset
from resrec.data.ratings import HALF_STARS
from resrec.models import build_model
from resrec.train.trainer import Examples, Trainer


def one_pass(name: str, examples: Examples, threads: int, fused: bool) -> tuple[float, float]:
    """Ratings per second (wall, CPU) of one training pass, after a short warm-up."""
    torch.set_num_threads(threads)
    config = preset(name).replace(threads=threads)
    model = build_model(config, ML20M_USERS, ML20M_MOVIES, seed=0)
    warm = Examples(examples.users[:20_000], examples.movies[:20_000], examples.ratings[:20_000])
    Trainer(model, config, warm, mu=3.5, scale=HALF_STARS, fused=fused)._train_pass(None)
    trainer = Trainer(model, config, examples, mu=3.5, scale=HALF_STARS, fused=fused)
    with timed() as t:
        trainer._train_pass(None)
    return len(examples) / t.wall, len(examples) / t.cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=ML20M_TRAIN)
    parser.add_argument("--autograd-ratings", type=int, default=300_000)
    parser.add_argument("--presets", nargs="+", default=["tutorial", "fast"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()

    header("training throughput at ML-20M scale (synthetic ratings)")
    examples = synthetic_examples(args.ratings)
    print(f"# {args.ratings:,} training ratings, {ML20M_USERS:,} users, {ML20M_MOVIES:,} movies")
    print(
        "preset    path      threads  ratings/s (wall)  per CPU-second  "
        "s/ML-20M epoch  GFLOP/s  bound/s   of bound"
    )
    for name in args.presets:
        config = preset(name)
        hidden = config.hidden[0] if config.hidden else 0
        small = Examples(
            examples.users[: args.autograd_ratings],
            examples.movies[: args.autograd_ratings],
            examples.ratings[: args.autograd_ratings],
        )
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows = min(config.batch_size, max(64, (1 << 17) // max(hidden, 1)))
            gflops = matmul_gflops(config.embedding_dim, hidden, rows)
            bound = gflops * 1e9 / side_flops_per_rating(config.embedding_dim, hidden)
            for path, data in (("fused", examples), ("autograd", small)):
                wall, cpu = one_pass(name, data, threads, fused=path == "fused")
                epoch = ML20M_TRAIN / wall
                print(
                    f"{name:9s} {path:9s} {threads:7d}  {wall:16,.0f}  {cpu:14,.0f}  "
                    f"{epoch:14.1f}  {gflops:7.1f}  {bound:8,.0f}  {wall / bound:8.1%}",
                    flush=True,
                )
    print("# per CPU-second: ratings over the CPU time of all the process's threads")


if __name__ == "__main__":
    main()

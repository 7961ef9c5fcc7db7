"""Evaluation throughput: raw model outputs for held-out ratings, per second.

Times :func:`resrec.train.fused.predict_offsets` (what the trainer scores its
eval sets with after every epoch) against the model's own ``forward`` in
batches of 65,536, for the tutorial and fast architectures on ML-20M's user and
movie counts. The weights are the seeded initial ones, which cost the same to
evaluate as trained ones.

    .venv/bin/python benchmarks/bench_eval.py                  # 4M ratings
    .venv/bin/python benchmarks/bench_eval.py --ratings 200000 --threads 1
"""

from __future__ import annotations

import argparse

import torch

from _common import ML20M_MOVIES, ML20M_USERS, best_of, header, synthetic_examples
from resrec.config import preset
from resrec.models import build_model
from resrec.train.fused import predict_offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=4_000_053)  # ML-20M's test split
    parser.add_argument("--presets", nargs="+", default=["tutorial", "fast"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    header("evaluation throughput at ML-20M scale")
    data = synthetic_examples(args.ratings, seed=1)
    users, movies = data.users, data.movies
    print(f"# {args.ratings:,} ratings; best of {args.repeats}")
    print("preset    path            threads  ratings/s (wall)  per CPU-second")
    for name in args.presets:
        model = build_model(preset(name), ML20M_USERS, ML20M_MOVIES, seed=0).eval()

        def forward(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                for lo in range(0, len(users), 65536):
                    model(users[lo : lo + 65536], movies[lo : lo + 65536])

        def fused(model: torch.nn.Module = model) -> None:
            predict_offsets(model, users, movies)  # type: ignore[arg-type]

        for threads in args.threads:
            torch.set_num_threads(threads)
            for path, run in (("predict_offsets", fused), ("model.forward", forward)):
                t = best_of(args.repeats, run)
                print(
                    f"{name:9s} {path:15s} {threads:7d}  {len(users) / t.wall:16,.0f}  "
                    f"{len(users) / t.cpu:14,.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

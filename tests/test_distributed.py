"""Data-parallel training: 2 processes over loopback equal 1 process.

Equivalence tolerance. Two processes split every global batch in two shares
and exchange the rows' gradients, so every row update is that of the whole
batch, applied in the same order as in one process. What differs is float32
rounding only: the side branch's weight gradient is the sum of two
half-batch sums instead of one sum over the batch (one extra rounding, about
6e-8 relative, per element and step), matrix products over half batches may
block their sums differently, and one process takes the trainer's fused CPU
step, whose sums run in yet another order (distributed training uses the
autograd step). SGD with momentum carries these differences forward; on the
data below (about 180 steps) the history figures of 2 and 1 processes
differ by at most 4e-8 relative and the weights by at most 2e-7 absolute.
The tests require 1e-5 relative (and 1e-6 absolute on weights): over two
hundred times what rounding produced, and far below a real fault: leaving
out the row update of a single batch (step 100) moves the test MSE of the
following epochs by 6e-4 to 3e-3 relative.

The matrix-factorisation model has no dense parameters and computes each
row's gradient row by row, so 2 processes and 1 process on the same
(autograd) step agree bitwise in weights and evaluation figures.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from resrec.cli import app
from resrec.config import TrainConfig, preset
from resrec.errors import ConfigError
from resrec.train import distributed
from resrec.train.distributed import _Layout
from tests.conftest import planted_ratings, write_udata

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5
TIMEOUT = 240  # seconds for a whole multi-process run; normally under 30


def _config(model: str = "residual") -> TrainConfig:
    # An odd batch size: the ranks' shares differ in size and the last batch is short.
    return preset("tutorial").replace(
        model=model, epochs=3, batch_size=33, threads=1, hidden=(32,), seed=4
    )


def _ratings_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_udata(folder / "u.data", planted_ratings(n_users=80, n_movies=50, n=2500))


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RESREC_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# -- the worker, run by each rank: python -m tests.test_distributed OUT MODEL ----


def _worker(out: Path, model: str) -> None:
    from resrec.data import read_ratings
    from resrec.workflow import fit

    process = distributed.init_process_group()
    try:
        ratings = read_ratings(out / "u.data", cache=False)
        result = fit(ratings, _config(model), process=process)
        state = {k: v.clone() for k, v in result.model.state_dict().items()}
        torch.save(
            {"weights": state, "history": result.history, "test": result.metrics["test"]},
            out / f"rank{process.rank}.pt",
        )
    finally:
        distributed.shutdown()


def _run_ranks(tmp_path: Path, model: str, nproc: int = 2) -> list[dict]:
    _ratings_file(tmp_path)
    command = [sys.executable, "-m", "tests.test_distributed", str(tmp_path), model]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _env(tmp_path).items():
            patch.setenv(key, value)
        patch.chdir(ROOT)
        assert distributed.launch_local(command, nproc) == 0
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def _one_process(tmp_path: Path, model: str) -> dict:
    """One process through :func:`resrec.workflow.fit` (its fastest step)."""
    from resrec.data import read_ratings
    from resrec.workflow import fit

    threads = torch.get_num_threads()
    try:
        result = fit(read_ratings(_ratings_file(tmp_path), cache=False), _config(model))
    finally:
        torch.set_num_threads(threads)
    return {
        "weights": result.model.state_dict(),
        "history": result.history,
        "test": result.metrics["test"],
    }


def _one_process_autograd(tmp_path: Path, model: str) -> dict:
    """One process through the trainer's autograd step, which distributed training uses."""
    from resrec.data import read_ratings
    from resrec.models import build_model
    from resrec.train.trainer import Trainer
    from resrec.workflow import encode_ratings, make_split

    config = _config(model)
    encoded = encode_ratings(read_ratings(_ratings_file(tmp_path), cache=False))
    split = make_split(encoded, config)
    train = encoded.examples(split.train)
    net = build_model(config, len(encoded.user_map), len(encoded.movie_map), seed=config.seed)
    trainer = Trainer(
        net,
        config,
        train,
        mu=float(train.ratings.double().mean()),
        scale=encoded.ratings.scale,
        eval_sets={"test": encoded.examples(split.test)},
        fused=False,
    )
    history = trainer.fit()
    return {"weights": net.state_dict(), "history": history}


def _figures(history: list[dict[str, float]]) -> np.ndarray:
    keys = [k for k in history[0] if not k.endswith("_seconds")]
    return np.array([[row[k] for k in keys] for row in history])


# -- tests -------------------------------------------------------------------------


def test_two_processes_match_one_process_and_each_other(tmp_path: Path) -> None:
    ranks = _run_ranks(tmp_path / "two", "residual")
    single = _one_process(tmp_path / "one", "residual")

    # Every rank holds bitwise the same weights and reports the same figures.
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name
    assert ranks[0]["test"] == ranks[1]["test"]

    # And they match one process with the same global batch.
    np.testing.assert_allclose(
        _figures(ranks[0]["history"]), _figures(single["history"]), rtol=RTOL, atol=0
    )
    for key in ("mse", "rmse", "mae"):
        assert ranks[0]["test"][key] == pytest.approx(single["test"][key], rel=RTOL)
    for name, tensor in single["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][name], tensor, rtol=RTOL, atol=1e-6)


def test_two_processes_are_bitwise_one_process_for_matrix_factorisation(tmp_path: Path) -> None:
    ranks = _run_ranks(tmp_path / "two", "mf")
    single = _one_process_autograd(tmp_path / "one", "mf")
    for name, tensor in single["weights"].items():
        assert torch.equal(ranks[0]["weights"][name], tensor), name
    for two, one in zip(ranks[0]["history"], single["history"], strict=True):
        assert two["test_mse"] == one["test_mse"]
        # The train loss adds float32 per-rank losses: equal up to their rounding.
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-7)


@pytest.mark.slow
def test_cli_nproc_2_writes_one_run_equal_to_one_process(tmp_path: Path) -> None:
    data = _ratings_file(tmp_path)
    args = ["--ratings", str(data), "--epochs", "2", "--batch-size", "33", "--hidden", "32"]
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"n{n}"
        proc = subprocess.run(
            [sys.executable, "-m", "resrec", "train", *args, "--out", str(out), "--nproc", str(n)],
            cwd=tmp_path,
            env=_env(tmp_path),
            timeout=TIMEOUT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("test RMSE") == 1  # only rank 0 prints the summary
        runs[n] = out

    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("n")) == ["n1", "n2"]
    metrics = [json.loads((runs[n] / "metrics.json").read_text()) for n in (1, 2)]
    assert metrics[1]["processes"] == 2
    assert metrics[1]["test"]["rmse"] == pytest.approx(metrics[0]["test"]["rmse"], rel=RTOL)
    rows = [list(csv.reader((runs[n] / "history.csv").open())) for n in (1, 2)]
    assert rows[0][0] == rows[1][0]
    np.testing.assert_allclose(
        np.array(rows[1][1:], dtype=float), np.array(rows[0][1:], dtype=float), rtol=RTOL
    )


def test_launch_local_stops_the_other_ranks_when_one_fails() -> None:
    script = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(120)"
    status = distributed.launch_local([sys.executable, "-c", script], 2)
    assert status == 3


def test_launch_local_sets_the_torchrun_variables(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "keys = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR')\n"
        "open(sys.argv[1] + os.environ['RANK'], 'w').write(' '.join(os.environ[k] for k in keys))\n"
    )
    assert distributed.launch_local([sys.executable, "-c", script, str(tmp_path / "r")], 2) == 0
    assert (tmp_path / "r0").read_text() == "0 0 2 2 127.0.0.1"
    assert (tmp_path / "r1").read_text() == "1 1 2 2 127.0.0.1"


def test_nproc_relaunches_the_same_command_without_nproc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def fake_launch(command: list[str], nproc: int) -> int:
        seen.update(command=command, nproc=nproc)
        return 0

    monkeypatch.setattr(distributed, "launch_local", fake_launch)
    args = ["-q", "train", "--ratings", "r.csv", "--epochs", "3", "--no-progress", "--nproc", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    command = seen["command"]
    assert isinstance(command, list) and seen["nproc"] == 2
    assert "--nproc" not in command
    tail = command[command.index("train") - 1 :]
    assert tail[:2] == ["--quiet", "train"]
    assert tail[tail.index("--ratings") + 1] == "r.csv"
    assert tail[tail.index("--epochs") + 1] == "3"
    assert "--no-progress" in tail


def test_device_auto_trains_where_torch_sees_a_device() -> None:
    from resrec.workflow import fit

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.check_device("auto", None).type == expected
    assert distributed.backend_for(torch.device("cuda")) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    config = _config("residual").replace(device="auto", epochs=1)
    result = fit(planted_ratings(), config)
    assert next(result.model.parameters()).device.type == expected
    assert np.isfinite(result.metrics["test"]["rmse"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_a_clean_error() -> None:
    with pytest.raises(ConfigError, match="no GPU"):
        distributed.check_device("cuda", None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_matches_the_cpu() -> None:
    from resrec.workflow import fit

    config = _config("residual")
    on_cpu = fit(planted_ratings(), config.replace(device="cpu"))
    on_gpu = fit(planted_ratings(), config.replace(device="cuda"))
    assert next(on_gpu.model.parameters()).is_cuda
    assert on_gpu.metrics["test"]["rmse"] == pytest.approx(on_cpu.metrics["test"]["rmse"], rel=1e-3)


def test_message_layout_round_trip_equals_the_whole_batch() -> None:
    # Two ranks' shares of a 7-row batch (3 + 4 rows), packed and unpacked in one process.
    g = torch.Generator().manual_seed(0)
    users, movies = torch.randint(0, 9, (7,), generator=g), torch.randint(0, 5, (7,), generator=g)
    grads = {"uf": torch.randn(7, 3, generator=g), "ub": torch.randn(7, 1, generator=g)}
    dense = [torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)]
    shares = [(0, 3), (3, 7)]

    buffers: list[torch.Tensor] = []
    layout = None
    for lo, hi in shares:
        share_users = users[lo:hi]  # one tensor for both user tables, as in the trainer
        index = {"uf": share_users, "ub": share_users, "mf": movies[lo:hi]}
        part = {"uf": grads["uf"][lo:hi], "ub": grads["ub"][lo:hi], "mf": grads["uf"][lo:hi]}
        layout = layout or _Layout.plan(4, index, part, [dense[0]], [])
        buf = torch.zeros(layout.nbytes, dtype=torch.uint8)
        layout.pack(buf, hi - lo, index, part, [dense[len(buffers)]], [])
        buffers.append(buf)
    assert layout is not None and layout.n_indices == 2  # users sent once for two tables

    out = [torch.empty(2, 2)]
    index, got = layout.unpack(buffers, out, [])
    assert torch.equal(index["uf"], users) and torch.equal(index["ub"], users)
    assert torch.equal(index["mf"], movies)
    assert torch.equal(got["uf"], grads["uf"]) and torch.equal(got["ub"], grads["ub"])
    assert torch.equal(out[0], dense[0] + dense[1])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])

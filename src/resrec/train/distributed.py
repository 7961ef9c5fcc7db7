"""Data-parallel training over several processes with ``torch.distributed``.

Every process (rank) holds the whole model and the whole training split. They
draw the same batch order from the same seed, and each trains on its own
contiguous share of every global batch (:meth:`Trainer._shard_bounds`). After
each backward pass, :class:`GradientSync` exchanges, in one ``all_gather``:

* the user and movie indices of each rank's share and the gradients of the
  rows it gathered (the embedding and bias tables' sparse gradients), so that
  every rank applies the row update of the *whole* global batch, in the same
  order as a single process would;
* the gradients of the dense parameters (the side branch), which every rank
  then sums in rank order, so the sums are bitwise equal on every rank;
* batch-normalisation running statistics, which every rank averages.

The trainer divides the loss by the global batch size, so the sum of the
ranks' gradients is the gradient of the global batch. Every rank therefore
applies identical updates and the weights stay identical on all ranks
(:func:`check_replicas` verifies it at the end). Train loss and MSE are summed
over ranks with :meth:`GradientSync.total`; evaluation runs on every rank with
the identical weights, so its figures need no exchange.

Processes find each other through the environment variables that ``torchrun``
sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``). The backend is gloo on the CPU and NCCL on
CUDA, where each process uses the GPU numbered by its ``LOCAL_RANK``.
:func:`launch_local` starts N such processes on this machine (``resrec train
--nproc N``).

Limitations
-----------
* Only the forward and backward passes are divided between the ranks: every
  rank applies the row update of the whole global batch, evaluates the whole
  validation and test splits and reads the whole ratings file (from the same
  path on every machine).
* Distributed training takes the trainer's autograd step; one process on the
  CPU takes the faster fused step (:mod:`resrec.train.fused`), so on one
  machine with few cores, one process can outrun several.
* Dropout masks differ between ranks (each rank seeds its generator with
  ``seed + rank``), and batch normalisation normalises each rank's share with
  that share's statistics, as ``DistributedDataParallel`` does without
  ``SyncBatchNorm``; with either, results match a single process in
  distribution, not number for number.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from resrec.errors import ConfigError
from resrec.models.base import RatingModel
from resrec.train.trainer import resolve_device

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = dt.timedelta(minutes=30)  # how long a rank waits for the others (a download, say)

T = TypeVar("T")


@dataclass(frozen=True)
class Process:
    """This process's place in a distributed training."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


class PeerFailed(Exception):
    """Rank 0 failed at a step the other ranks waited on; it reports the error."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or :func:`launch_local`)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: torch.device) -> str:
    """The collective backend for tensors on ``device``: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group() -> Process:
    """Join the process group described by the ``torchrun`` environment variables.

    The backend is gloo, and where torch sees a GPU also NCCL for CUDA tensors
    (``"cpu:gloo,cuda:nccl"``), with GPU ``LOCAL_RANK`` made the current
    device, so ``--device cuda`` trains each rank on its own GPU over NCCL.
    """
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise ConfigError(
            f"distributed training needs the environment variables {', '.join(missing)}",
            hint="launch with torchrun or with 'resrec train --nproc N'",
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    backend = "gloo"
    if torch.cuda.is_available():
        backend = f"cpu:gloo,cuda:{backend_for(torch.device('cuda'))}"
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:  # DistStoreError derives from RuntimeError
        raise ConfigError(
            f"rank {rank} could not join the process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}",
            hint="check that every machine can reach the rendezvous address and port",
        ) from None
    log.info("rank %d of %d joined the process group (%s)", rank, world, backend)
    return Process(rank, world, local_rank, local_world, backend)


def check_device(device: str, process: Process | None) -> torch.device:
    """The device this rank trains on, for the config's ``device`` setting."""
    resolved = resolve_device(device)
    if process is None or resolved.type != "cuda":
        return resolved
    if process.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"the process with LOCAL_RANK {process.local_rank} needs its own GPU, "
            f"but only {torch.cuda.device_count()} GPU(s) are visible",
            hint="start at most one process per GPU on each machine (--nproc-per-node)",
        )
    return torch.device("cuda", process.local_rank)


def shutdown() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(value: Any, process: Process | None) -> Any:
    """``value`` as rank 0 has it, on every rank (plain values; pickled in transit)."""
    if process is None:
        return value
    box = [value if process.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work: Callable[[], T], process: Process | None) -> T:
    """Run ``work`` on rank 0 and give its result to every rank.

    When it raises, rank 0 re-raises the error and the other ranks raise
    :class:`PeerFailed`, so nobody waits for a message that never comes.
    """
    if process is None:
        return work()
    if not process.is_main:
        ok, value = share(None, process)
        if not ok:
            raise PeerFailed(value)
        return cast(T, value)
    try:
        value = work()
    except BaseException as exc:
        share((False, f"{type(exc).__name__}: {exc}"), process)
        raise
    share((True, value), process)
    return value


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank went away (it crashed or was stopped)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "closed by peer" in text or "reset by peer" in text or "Broken pipe" in text
    )


def gather(value: Any, process: Process | None) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if process is None:
        return [value]
    out: list[Any] = [None] * process.world_size
    dist.all_gather_object(out, value)
    return out


class GradientSync:
    """The trainer's :class:`~resrec.train.trainer.Synchronizer` for data parallelism.

    Parameters
    ----------
    model
        The model every rank trains (the same on every rank).
    batch_size
        The global batch size; a rank's share is at most ``ceil(batch_size /
        world_size)`` rows, the size every rank pads its share to.
    process
        This process's rank, world size and device.
    """

    def __init__(self, model: RatingModel, batch_size: int, process: Process) -> None:
        self.model = model
        self.world_size = process.world_size
        self.capacity = -(-batch_size // process.world_size)
        self._layout: _Layout | None = None
        self._send: Tensor | None = None
        self._received: list[Tensor] = []

    # -- the Synchronizer protocol ----------------------------------------------

    def grads(
        self, row_index: dict[str, Tensor], row_grads: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Exchange one step's gradients; return the global batch's rows and gradients."""
        if self._layout is None or self._send is None:
            self._layout = _Layout.plan(
                self.capacity, row_index, row_grads, self._dense_grads(), self._buffers()
            )
            device = next(iter(row_grads.values())).device
            self._send = torch.zeros(self._layout.nbytes, dtype=torch.uint8, device=device)
            self._received = [torch.empty_like(self._send) for _ in range(self.world_size)]
        n = len(next(iter(row_index.values())))
        if n > self.capacity:
            raise RuntimeError(f"a rank's share has {n} rows, more than {self.capacity}")

        dense, buffers = self._dense_grads(), self._buffers()
        self._layout.pack(self._send, n, row_index, row_grads, dense, buffers)
        dist.all_gather(self._received, self._send)
        return self._layout.unpack(self._received, dense, buffers)

    def total(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over all ranks."""
        out = value.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    # -- what is exchanged besides the rows ---------------------------------------

    def _dense_grads(self) -> list[Tensor]:
        grads = []
        for p in self.model.dense_parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:  # a parameter this rank's share did not reach
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        return grads

    def _buffers(self) -> list[Tensor]:
        # Batch-norm running statistics (num_batches_tracked, an integer, agrees anyway).
        return [b for b in self.model.buffers() if b.is_floating_point()]


@dataclass
class _Layout:
    """Where each part of a rank's message lies in its flat byte buffer.

    The buffer holds, in order: the row count (int64); each distinct index
    tensor padded to ``capacity`` (int64); the row gradients of all tables
    side by side, padded to ``capacity`` rows; the dense gradients; the
    floating-point buffers. Integer sections come first so that every slice
    is aligned for viewing as its dtype without a copy.
    """

    capacity: int
    index_slots: dict[str, int]  # table name -> which distinct index tensor it uses
    n_indices: int
    row_shapes: dict[str, tuple[int, ...]]  # table name -> shape of one row's gradient
    dense_sizes: list[int]
    buffer_sizes: list[int]
    dtype: torch.dtype

    @classmethod
    def plan(
        cls,
        capacity: int,
        row_index: dict[str, Tensor],
        row_grads: dict[str, Tensor],
        dense: Sequence[Tensor],
        buffers: Sequence[Tensor],
    ) -> _Layout:
        # Tables of the same side share one index tensor: send it once.
        distinct: list[Tensor] = []
        slots: dict[str, int] = {}
        for name, index in row_index.items():
            found = next((i for i, t in enumerate(distinct) if t is index), None)
            if found is None:
                found = len(distinct)
                distinct.append(index)
            slots[name] = found
        dtypes = {g.dtype for g in (*row_grads.values(), *dense, *buffers)}
        if len(dtypes) != 1:
            raise NotImplementedError(f"gradients of mixed dtypes {dtypes} cannot be exchanged")
        return cls(
            capacity=capacity,
            index_slots=slots,
            n_indices=len(distinct),
            row_shapes={name: tuple(g.shape[1:]) for name, g in row_grads.items()},
            dense_sizes=[t.numel() for t in dense],
            buffer_sizes=[t.numel() for t in buffers],
            dtype=dtypes.pop(),
        )

    @property
    def row_width(self) -> int:
        return sum(math.prod(shape) for shape in self.row_shapes.values())

    @property
    def float_offset(self) -> int:
        return 8 * (1 + self.n_indices * self.capacity)

    @property
    def n_floats(self) -> int:
        return self.capacity * self.row_width + sum(self.dense_sizes) + sum(self.buffer_sizes)

    @property
    def nbytes(self) -> int:
        size = self.float_offset + self.n_floats * self.dtype.itemsize
        return -(-size // 8) * 8

    def _views(self, buf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The int64 section, the row-gradient matrix and the flat dense section."""
        ints = buf[: self.float_offset].view(torch.int64)
        end = self.float_offset + self.n_floats * self.dtype.itemsize
        floats = buf[self.float_offset : end].view(self.dtype)
        n_rows = self.capacity * self.row_width
        rows = floats[:n_rows].view(self.capacity, self.row_width)
        return ints, rows, floats[n_rows:]

    def _index(self, ints: Tensor, slot: int) -> Tensor:
        start = 1 + slot * self.capacity
        return ints[start : start + self.capacity]

    def pack(
        self,
        buf: Tensor,
        n: int,
        row_index: dict[str, Tensor],
        row_grads: dict[str, Tensor],
        dense: list[Tensor],
        buffers: list[Tensor],
    ) -> None:
        ints, rows, flat = self._views(buf)
        ints[0] = n
        for name, slot in self.index_slots.items():
            self._index(ints, slot)[:n] = row_index[name]

        col = 0
        for name, shape in self.row_shapes.items():
            width = math.prod(shape)
            rows[:n, col : col + width] = row_grads[name].reshape(n, width)
            col += width
        at = 0
        for t in (*dense, *buffers):
            flat[at : at + t.numel()] = t.detach().reshape(-1)
            at += t.numel()

    def unpack(
        self, received: list[Tensor], dense: list[Tensor], buffers: list[Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        views = [self._views(buf) for buf in received]
        counts = [int(ints[0]) for ints, _, _ in views]

        # Every rank's rows, in rank order: the global batch in its original order.
        index = [
            torch.cat([self._index(v[0], slot)[:n] for v, n in zip(views, counts, strict=True)])
            for slot in range(self.n_indices)
        ]
        rows = torch.cat([v[1][:n] for v, n in zip(views, counts, strict=True)])
        out_index, out_grads, col = {}, {}, 0
        for name, shape in self.row_shapes.items():
            width = math.prod(shape)
            out_index[name] = index[self.index_slots[name]]
            out_grads[name] = rows[:, col : col + width].reshape(-1, *shape).contiguous()
            col += width

        # Summed in rank order, so every rank computes the same bits.
        flats = [v[2] for v in views]
        at = 0
        for t in dense:
            t.copy_(_sum_in_order(flats, at, t.numel()).view_as(t))
            at += t.numel()
        for b in buffers:
            b.copy_((_sum_in_order(flats, at, b.numel()) / len(flats)).view_as(b))
            at += b.numel()
        return out_index, out_grads


def _sum_in_order(flats: list[Tensor], at: int, size: int) -> Tensor:
    total = flats[0][at : at + size].clone()
    for flat in flats[1:]:
        total += flat[at : at + size]
    return total


def check_replicas(model: nn.Module, process: Process | None) -> None:
    """Raise ``RuntimeError`` unless every rank holds bitwise the same weights."""
    if process is None:
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digests = gather(digest.hexdigest(), process)
    if len(set(digests)) != 1:
        raise RuntimeError(f"the ranks' weights differ after training: {digests}")


# -- launching on one machine ----------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch_local(command: list[str], nproc: int, *, host: str = "127.0.0.1") -> int:
    """Run ``command`` as ``nproc`` ranks of one process group on this machine.

    Sets the same environment variables as ``torchrun --standalone``. When a
    rank fails, the others are stopped. Returns the first non-zero exit status
    (or 0).
    """
    port = free_port(host)
    procs = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            GROUP_RANK="0",
            MASTER_ADDR=host,
            MASTER_PORT=str(port),
        )
        procs.append(subprocess.Popen(command, env=env))
    try:
        return _wait_all(procs)
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        _stop(procs)
        return 130


def _wait_all(procs: list[subprocess.Popen[bytes]], grace: float = 5.0) -> int:
    status = 0
    while [p.poll() for p in procs].count(None):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed:
            status = status or failed[0]
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.05)
            _stop(procs)
            break
        time.sleep(0.05)
    codes = [p.wait() for p in procs]
    return status or next((c for c in codes if c != 0), 0)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def rank_command(argv: Sequence[str]) -> list[str]:
    """The command line that starts this program again with ``argv``."""
    main = sys.argv[0]
    if main and os.path.isfile(main) and not main.endswith("__main__.py"):
        return [sys.executable, main, *argv]
    return [sys.executable, "-m", "resrec", *argv]

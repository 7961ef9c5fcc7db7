"""Checkpoints: the complete state of a training, written after every epoch.

A checkpoint (``checkpoint.pt`` in a run's staging directory ``<out>.partial/``)
holds what :meth:`resrec.train.trainer.Trainer.state_dict` returns (weights,
optimiser state, the batch-order generator, epoch, step, history, best-epoch
bookkeeping, the seconds of training so far), the state of every other random
generator of every process, the config and the seed of the split. Resuming from
it continues the training exactly: on the CPU with one process, a resumed run's
history and metrics are identical to those of an uninterrupted run.

The file is written with :func:`torch.save` to a temporary name, flushed to
disk and renamed over the previous checkpoint, so a crash at any moment leaves
either the old or the new checkpoint, never a torn one. It is loaded with
``torch.load(weights_only=True)``, which builds only tensors and plain Python
values and never executes code from the file; :func:`save_checkpoint` checks
that nothing else went in.

A torch file detects a truncated archive but not an altered byte inside a
tensor, so the file holds the serialised checkpoint as a byte tensor
(``payload``) beside its sha256; :func:`load_checkpoint` checks the digest
before reading the payload (with ``weights_only=True`` as well).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from resrec.errors import ModelFileError
from resrec.train.trainer import Trainer

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "resrec-checkpoint"
VERSION = 1

RngGather = Callable[[dict[str, Any]], list[dict[str, Any]]]


# -- random generators ---------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The state of this process's global random generators (torch, CUDA, numpy, Python)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # Python's random state is nested tuples; keep it so even if a list comes back.
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


# -- the file ------------------------------------------------------------------


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename).

    Raises
    ------
    ModelFileError
        When the file cannot be written (disk full, no permission); the
        previous checkpoint at ``path``, if any, is left as it was.
    """
    check_plain(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    payload = buffer.getvalue()
    outer = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    write_atomic(path, lambda f: torch.save(outer, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, executing no code from it.

    Raises
    ------
    ModelFileError
        When the file is missing, truncated, altered or not a resrec checkpoint.
    """
    outer = _load_plain(path, path)
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a resrec checkpoint")
    if int(outer.get("version", 0)) > VERSION:
        raise ModelFileError(
            f"checkpoint {path} has format version {outer['version']}; this resrec reads "
            f"version {VERSION} and older",
            hint="resume it with the resrec version that wrote it",
        )
    payload = outer["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise ModelFileError(
            f"checkpoint {path} does not match its recorded sha256: it was altered",
            hint="start the training again with --overwrite",
        )
    data = _load_plain(io.BytesIO(payload), path)
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a resrec checkpoint")
    return data


def _load_plain(source: Path | io.BytesIO, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelFileError(
            f"checkpoint {path} cannot be read: it is damaged or not a resrec checkpoint "
            f"({type(exc).__name__}: {first_line})",
            hint="start the training again with --overwrite",
        ) from None


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` unless ``value`` holds only tensors and plain Python values.

    Those are what ``torch.load(weights_only=True)`` can read back.
    """
    if value is None or isinstance(value, bool | int | float | str | Tensor | torch.dtype):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}, which weights_only loading refuses")


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it.

    The data is fsync'ed before the rename and the directory after it, so after
    a crash or power loss ``path`` holds either the old or the new content.
    An ``OSError`` becomes a :class:`ModelFileError` that says what went wrong.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (renames) to disk where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def storage_error(exc: OSError, path: Path) -> ModelFileError:
    """A :class:`ModelFileError` naming the file and the cause of ``exc`` in words."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what, hint = "the disk is full", "free some space or choose another --out"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, hint = "permission denied", "choose a writable --out"
    else:
        what, hint = exc.strerror or str(exc), None
    return ModelFileError(f"cannot write {path}: {what}", hint=hint)


# -- the per-epoch hook ---------------------------------------------------------


class Checkpointer:
    """Writes ``checkpoint.pt`` into ``directory`` after every epoch.

    Parameters
    ----------
    directory
        The run's staging directory.
    info
        Extra plain values stored with every checkpoint (for example the data
        source and its sha256); the config and the split seed are always stored.
    rank
        Only rank 0 writes; every rank must still call :meth:`save`, because
        the random-generator states of all ranks are gathered.
    gather_rng
        Gathers each rank's :func:`rng_state` (in rank order); ``None`` for a
        single process.
    """

    def __init__(
        self,
        directory: Path,
        *,
        info: dict[str, Any] | None = None,
        rank: int = 0,
        gather_rng: RngGather | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_NAME
        self.info = dict(info or {})
        self.rank = rank
        self.gather_rng = gather_rng
        self.saved_epoch: int | None = None

    def preflight(self, trainer: Trainer, *, margin: float = 3.0) -> None:
        """Refuse to start when the disk cannot hold a checkpoint and the run's files.

        The estimate is ``margin`` times the size of the trainer's state (a new
        checkpoint is written beside the old one before it replaces it, and
        the run adds its weights).
        """
        if self.rank != 0:
            return
        needed = int(margin * state_bytes(trainer.state_dict())) + (1 << 20)
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise ModelFileError(
                f"not enough free disk space in {self.directory}: checkpoints and the run "
                f"need about {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free",
                hint="free some space or choose another --out",
            )

    def save(self, trainer: Trainer) -> None:
        """Write the trainer's state (call after each epoch, on every rank)."""
        local = rng_state()
        states = self.gather_rng(local) if self.gather_rng is not None else [local]
        if self.rank != 0:
            return
        checkpoint = {
            "format": FORMAT,
            "version": VERSION,
            "trainer": trainer.state_dict(),
            "rng": states,
            "world_size": len(states),
            "config": trainer.config.to_dict(),
            "split_seed": trainer.config.seed,
            **self.info,
        }
        save_checkpoint(self.path, checkpoint)
        self.saved_epoch = trainer.epoch
        log.debug("checkpoint of epoch %d written to %s", trainer.epoch, self.path)


def state_bytes(value: Any) -> int:
    """Total bytes of the tensors in a nested state dict."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(state_bytes(v) for v in value)
    return 0


def restore(trainer: Trainer, checkpoint: dict[str, Any], *, rank: int = 0) -> None:
    """Load a checkpoint's trainer state and this rank's random-generator state.

    When the checkpoint was written by a different number of processes, ranks
    beyond its count take the last saved state (only dropout masks depend on it).
    """
    trainer.load_state_dict(checkpoint["trainer"])
    states = checkpoint["rng"]
    if len(states) != trainer.world_size:
        log.warning(
            "checkpoint was written by %d process(es), resuming with %d: dropout masks "
            "will differ from an uninterrupted run",
            len(states),
            trainer.world_size,
        )
    set_rng_state(states[min(rank, len(states) - 1)])

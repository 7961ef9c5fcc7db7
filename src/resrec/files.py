"""The paths resrec reads and writes: one check for inputs, one rule for outputs.

Inputs (``--ratings``, ``--movies``, ``--pairs``, ``--config``, run
directories): :func:`input_problem` says, before anything opens the path,
whether it is missing, a symbolic link loop or a dangling link, a folder
where a file is expected (or the reverse), not a regular file (a named pipe,
a device or a socket, which could block a read forever), or not readable.
:func:`check_input_file` raises it as a :class:`~resrec.errors.DataError`.

Outputs: an existing path that resrec would replace must be a regular file
(for an output file) or a folder of the kind being written (for an output
folder). A symbolic link, device, named pipe, socket or, for a file, a
folder is refused, even with ``--overwrite``: resrec never writes through a
link and never replaces anything but its own kind of output. Files are
written under a new temporary name beside the target (:class:`AtomicFile`)
and renamed over it when complete, so an error leaves the old file or
nothing, never half a file. Folders are staged the same way
(:func:`make_staging_folder`), with the permissions the umask gives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from resrec.errors import ConfigError, DataError, ModelFileError


@dataclass(frozen=True)
class PathProblem:
    """Why a path cannot be used: a message (without the path) and a hint."""

    message: str
    hint: str | None = None
    missing: bool = False  # nothing at the path (a dangling link is not missing)


# --------------------------------------------------------------------------- inputs


def input_problem(path: Path, what: str, *, folder: bool = False) -> PathProblem | None:
    """Why ``path`` cannot be read as ``what`` (e.g. "a ratings file"), or None if it can.

    With ``folder`` the path must be a folder (``what`` e.g. "a run directory"),
    else a regular file. Nothing is opened, so a named pipe cannot block.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        return _stat_problem(path, exc, folder)
    kind = stat.S_IFMT(info.st_mode)
    if folder and kind != stat.S_IFDIR:
        found = "a file" if kind == stat.S_IFREG else special_kind(info.st_mode)
        return PathProblem(f"is {found}, not {what}")
    if not folder and kind == stat.S_IFDIR:
        return PathProblem(f"is a folder, not {what}", hint=f"give the path of {what} in it")
    if not folder and kind != stat.S_IFREG:
        return PathProblem(
            f"is {special_kind(info.st_mode)}, not a regular file; expected {what}",
            hint="resrec reads regular files only: save the data to a file and give its path",
        )
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return PathProblem(
            "permission denied: it cannot be read",
            hint="check its permissions (ls -l), or give a copy you can read",
        )
    return None


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a readable regular file; a :class:`DataError` ``PATH: problem`` if it is not.

    ``what`` names the file expected, with its article: "a ratings file".
    """
    path = Path(path)
    problem = input_problem(path, what)
    if problem is not None:
        raise DataError(problem.message, path=path, hint=problem.hint)
    return path


def special_kind(mode: int) -> str:
    """What a file that is not a regular file or folder is, with its article."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a special file"


def _stat_problem(path: Path, exc: OSError, folder: bool) -> PathProblem:
    if exc.errno == errno.ELOOP:
        return PathProblem(
            "is a symbolic link loop: following it never reaches a file",
            hint="point the link at a real file, or give that file's path",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathProblem(
            "permission denied: a folder on the way to it cannot be entered",
            hint="check the folders' permissions (ls -ld), or give a copy you can read",
        )
    if exc.errno == errno.ENAMETOOLONG:
        return PathProblem("the name is too long for the file system")
    if os.path.islink(path):
        with contextlib.suppress(OSError):
            return PathProblem(
                f"is a symbolic link to {os.readlink(path)}, which does not exist",
                hint="point the link at an existing file, or give that file's path",
            )
    return PathProblem("no such folder" if folder else "no such file", missing=True)


# --------------------------------------------------------------------------- outputs


def output_problem(
    target: Path, *, folder: bool = False, what: str = "output"
) -> PathProblem | None:
    """Why an existing ``target`` must never be replaced, or None if it may be (or is absent).

    A symbolic link and anything that is not a regular file (``folder``
    false) or a folder (``folder`` true) is refused, whatever ``--overwrite``
    says. ``what`` names the output in the message (e.g. "predictions").
    """
    try:
        info = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return None  # absent: whether its folder takes it is checked where it is made
    except OSError as exc:
        return PathProblem(f"cannot be looked at ({exc.strerror or exc})")
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        linked = _link_text(target)
        return PathProblem(
            f"is a symbolic link{linked}; resrec does not write through links",
            hint="give the path it points to, or remove the link",
        )
    if folder and not stat.S_ISDIR(mode):
        found = "a file" if stat.S_ISREG(mode) else special_kind(mode)
        return PathProblem(
            f"exists and is not a folder: it is {found}", hint="choose another --out"
        )
    if not folder and stat.S_ISDIR(mode):
        return PathProblem(
            f"is a folder; expected a file name for the {what}", hint="choose another --out"
        )
    if not folder and not stat.S_ISREG(mode):
        return PathProblem(
            f"is {special_kind(mode)}, not a regular file; resrec never replaces it",
            hint="give the name of a new or regular file for --out",
        )
    return None


def _link_text(link: Path) -> str:
    try:
        return f" (to {os.readlink(link)})"
    except OSError:
        return ""


def check_output_file(target: Path, *, overwrite: bool, what: str) -> None:
    """Refuse an ``--out`` file that must not be replaced, or that cannot be written.

    A symbolic link, a folder, a device, a named pipe or a socket is refused
    even with ``overwrite``; a regular file only without it. Its folder must
    exist and take a new file, so that a command finds out before its work,
    not after it, that it cannot write the ``what`` (e.g. "predictions").
    """
    problem = output_problem(target, what=what)
    if problem is not None:
        raise ConfigError(f"--out {target} {problem.message}", hint=problem.hint)
    if target.exists() and not overwrite:
        raise ConfigError(
            f"--out {target} already exists", hint="choose another --out or pass --overwrite"
        )
    check_writable_folder(target, what)


def check_writable_folder(target: Path, what: str) -> None:
    """Refuse a ``--out`` file whose folder is missing or does not take a new file."""
    folder = target.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(
            f"--out {target}: its folder {folder} {state}; expected an existing folder "
            f"for the {what}",
            hint="create the folder first, or choose another --out",
        )
    try:
        os.unlink(_create_new(folder, f".{target.name}.", ".partial"))
    except OSError as exc:
        raise ConfigError(
            f"--out {target}: cannot write a file in {folder} ({exc.strerror or exc})",
            hint="choose a folder you can write to",
        ) from None


def write_error(exc: OSError, path: Path) -> ModelFileError:
    """A :class:`ModelFileError` naming ``path`` and the cause of ``exc`` in words."""
    from resrec.train.checkpoint import storage_error

    return storage_error(exc, path)


class AtomicFile:
    """A new file beside ``target``, renamed over it by :meth:`commit`.

    The temporary file is created exclusively (it never follows or reuses an
    existing name) with the permissions the umask gives. An ``OSError`` while
    creating, writing or renaming it becomes a :class:`ModelFileError` naming
    ``target`` and the cause, and the temporary file is removed. Used as a
    context manager, it commits when the block ends normally and discards
    otherwise.
    """

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        opened: list[int] = []
        try:
            self.temporary = _new_name(
                self.target.parent,
                f".{self.target.name}.",
                ".partial",
                lambda path: opened.append(_open_new(path)),
            )
        except OSError as exc:
            raise write_error(exc, self.target) from None
        self.file: BinaryIO = os.fdopen(opened[0], "wb")

    @property
    def closed(self) -> bool:
        """Whether the temporary file is closed (file-like objects say so)."""
        return self.file.closed

    def write(self, data: bytes) -> None:
        """Write ``data``; a full disk or another ``OSError`` discards the file and says so."""
        try:
            self.file.write(data)
        except OSError as exc:
            self.discard()
            raise write_error(exc, self.target) from None

    def commit(self) -> Path:
        """Flush the file to disk and rename it to the target (refused if that became special)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            problem = output_problem(self.target)
            if problem is not None:
                raise ConfigError(f"{self.target} {problem.message}", hint=problem.hint)
            os.replace(self.temporary, self.target)
        except OSError as exc:
            self.discard()
            raise write_error(exc, self.target) from None
        except BaseException:
            self.discard()
            raise
        _fsync_folder(self.target.parent)
        return self.target

    def discard(self) -> None:
        """Close and remove the temporary file; the target is left as it was."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_file_atomic(target: Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` through :class:`AtomicFile`; refuses a special ``target``."""
    problem = output_problem(target)
    if problem is not None:
        raise ConfigError(f"{target} {problem.message}", hint=problem.hint)
    with AtomicFile(target) as out:
        out.write(data)
    return target


def make_staging_folder(target: Path) -> Path:
    """A new hidden folder beside ``target`` (``.NAME.partial-XXXXXXXX``) to stage it in.

    Unlike :func:`tempfile.mkdtemp` (always ``drwx------``), the folder gets
    the permissions the umask gives, like any folder the user makes.
    """
    try:
        return _create_new(target.parent, f".{target.name}.partial-", "", folder=True)
    except OSError as exc:
        raise write_error(exc, target) from None


def _create_new(parent: Path, prefix: str, suffix: str, *, folder: bool = False) -> Path:
    """Create a new empty file or folder with a random name in ``parent``; never reuse one.

    Raises ``OSError`` when ``parent`` does not take it.
    """
    if folder:
        return _new_name(parent, prefix, suffix, lambda path: os.mkdir(path, 0o777))
    return _new_name(parent, prefix, suffix, lambda path: os.close(_open_new(path)))


def _open_new(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def _new_name(parent: Path, prefix: str, suffix: str, make: Callable[[Path], object]) -> Path:
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(path)
        except FileExistsError:
            continue
        return path


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

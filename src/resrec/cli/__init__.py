"""The ``resrec`` command line: one module per group of commands.

Commands only parse options, call a plain library function and format its
result; user mistakes end with a one-line error, a hint and exit status 1.
"""

from __future__ import annotations

from resrec.allocator import keep_freed_memory
from resrec.cli import compare as _compare  # noqa: F401
from resrec.cli import data as _data  # noqa: F401  (registers commands)
from resrec.cli import recommend as _recommend  # noqa: F401
from resrec.cli import serve as _serve  # noqa: F401
from resrec.cli import train as _train  # noqa: F401
from resrec.cli.app import app
from resrec.cli.app import main as _run_app

__all__ = ["app", "main"]


def main() -> None:
    """The ``resrec`` command: allocator settings for training, then the commands."""
    keep_freed_memory()
    _run_app()

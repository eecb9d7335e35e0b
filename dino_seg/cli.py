"""One runner for every command's `main`: Ctrl-C and bad input end in one line on stderr, bugs keep their traceback."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import UserError, first_line

# OSErrors that are about the user's files and disk, not about the code: a missing or unreadable input, an
# output path that is taken by a file, a full disk or quota. Any other OSError keeps its traceback.
USER_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                         errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.ENAMETOOLONG})
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
BAD_INPUT = 2  # as argparse exits for bad flags


def error_line(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix (a UserError, or an OSError about a path or the
    disk), None for anything else: a bug, which must keep its traceback."""
    if isinstance(err, UserError):
        return first_line(err)
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        if err.filename is None:
            return first_line(err) if err.strerror is None else err.strerror
        names = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        return f"{names}: {err.strerror}"
    return None


def _launch_rank() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun or SLURM set them, (0, 1) otherwise."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        try:
            rank, size = int(os.environ[rank_key]), int(os.environ[size_key])
        except (KeyError, ValueError):
            continue
        return rank, size
    return 0, 1


def run_command(run: Callable[[], int], *, interrupted: str | Callable[[], str] = "stopped") -> int:
    """`run()`'s exit status, or:

    - 130 after Ctrl-C, with `interrupted: <note>` on stderr (rank 0 only: every process gets the signal);
      `interrupted` says what is kept, and may be a function evaluated at that time;
    - 2 for bad input (UserError) and OSErrors about paths or the disk (USER_ERRNOS), with one line
      `error: <message>` on stderr, prefixed by `[rank N] ` under a multi-process launch.

    Other exceptions propagate with their traceback: they are bugs, not the user's input.
    """
    rank, world_size = _launch_rank()
    try:
        return run()
    except KeyboardInterrupt:
        if rank == 0:
            note = interrupted() if callable(interrupted) else interrupted
            print(f"\ninterrupted: {note}", file=sys.stderr, flush=True)
        return INTERRUPTED
    except (UserError, OSError) as err:
        line = error_line(err)
        if line is None:
            raise
        tag = f"[rank {rank}] " if world_size > 1 else ""
        print(f"{tag}error: {line}", file=sys.stderr, flush=True)
        return BAD_INPUT


def check_output_dir(path: str | Path | None, flag: str = "--output_dir") -> None:
    """Refuse an output folder that is an existing file before any work is done (UserError naming `flag`)."""
    if path is not None and str(path) and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path}: is a file, expected a folder")

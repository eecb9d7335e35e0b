"""The project's base error for bad input: what the command runner and the app report in one line."""

from __future__ import annotations


class UserError(ValueError):
    """Input the user can fix (a path, a flag, a file's content); the message is one line naming it.

    A ValueError, so that callers written against the library's earlier ValueErrors keep working; the
    command runner (dino_seg.cli) catches this type, never every ValueError, so that bugs keep their traceback.
    """


def first_line(err: BaseException) -> str:
    """A one-line message for an error, also when a DataLoader worker re-raised it with its traceback
    appended (the original message is then the last line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return lines[0] if lines else type(err).__name__

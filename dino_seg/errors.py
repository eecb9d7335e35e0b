"""The project's base error for bad input: what the command runner and the app report in one line."""

from __future__ import annotations


class UserError(ValueError):
    """Input the user can fix (a path, a flag, a file's content); the message is one line naming it.

    A ValueError, so that callers written against the library's earlier ValueErrors keep working; the
    command runner (dino_seg.cli) catches this type, never every ValueError, so that bugs keep their traceback.
    """

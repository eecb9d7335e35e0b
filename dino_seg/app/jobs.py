"""The handlers' running jobs, so that shutting down waits for them instead of ending the process under a
model call (which aborts it: "terminate called without an active exception")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

CLOSING = threading.Event()  # set when the app shuts down: no new job starts, long jobs stop between steps
_idle = threading.Condition()
_running = 0


class AppClosing(RuntimeError):
    """The app is shutting down: a job is refused or stopped between two steps."""


def check_open() -> None:
    """Raise AppClosing when the app is shutting down (long jobs call it between steps)."""
    if CLOSING.is_set():
        raise AppClosing("the app is shutting down: try again when it is back")


@contextmanager
def job() -> Iterator[None]:
    """Count a handler's call as running while it runs."""
    global _running
    check_open()
    with _idle:
        _running += 1
    try:
        yield
    finally:
        with _idle:
            _running -= 1
            _idle.notify_all()


def running() -> int:
    return _running


def close(timeout: float) -> bool:
    """Refuse new jobs and wait up to `timeout` seconds for the running ones to end; True when none is left."""
    CLOSING.set()
    deadline = time.monotonic() + timeout
    with _idle:
        while _running and time.monotonic() < deadline:
            _idle.wait(timeout=max(0.0, deadline - time.monotonic()))
        return _running == 0


def reopen() -> None:
    """Take jobs again (a page served again in the same process, as tests do)."""
    CLOSING.clear()

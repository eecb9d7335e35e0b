"""The handlers' error wrapper: the library's errors become one readable line in the page and on the console,
never a trace, and never a server's temporary path."""

from __future__ import annotations

import functools
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from dino_seg.errors import UserError
from dino_seg.files import NoSpaceError

from .jobs import AppClosing, job
from .scratch import SCRATCH

T = TypeVar("T")

# What a person can fix: the project's input errors (images, videos, weights, DAVIS folders, refused paths...)
# and a full disk. Any other ValueError or OSError is a bug: its trace stays on the console.
USER_ERRORS = (UserError, NoSpaceError)
_PATH_END = r"[^\s'\"`,;()\[\]]*"  # a path runs until a space, a quote or a bracket


def temp_roots() -> list[str]:
    """Folders whose paths are the server's business: Gradio's upload cache and the app's scratch folder."""
    roots = {get_upload_folder(), str(SCRATCH.root)}
    roots |= {str(Path(r).resolve()) for r in roots}
    return sorted(roots, key=len, reverse=True)


def scrub_paths(text: str) -> str:
    """`text` with every path under a temporary folder replaced by its file name (uploads sit in Gradio's
    cache under a long hash: the person knows the file by its name)."""
    for root in temp_roots():
        text = re.sub(re.escape(root.rstrip("/")) + r"/" + _PATH_END, lambda m: Path(m.group()).name, text)
    return text


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), at most 500 characters."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


def user_error(where: str, message: str) -> gr.Error:
    """A gr.Error for the page, logged as one line on the console instead of Gradio's traceback."""
    message = scrub_paths(message)
    print(f"{where}: {message}", file=sys.stderr, flush=True)
    err = gr.Error(message, print_exception=False)
    err.logged = True  # a handler that calls another handler passes it on without logging it again
    return err


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Raise gr.Error with a one-line message for any failure of `fn` (the page shows it as a toast)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            with job():  # shutting down waits for it
                return fn(*args, **kwargs)
        except gr.Error as err:
            if getattr(err, "logged", False):
                raise
            raise user_error(fn.__name__, str(err.message)) from None
        except Image.DecompressionBombError as err:
            raise user_error(fn.__name__, f"image too large to decode safely: {one_line(err)}") from None
        except (AppClosing, *USER_ERRORS) as err:
            raise user_error(fn.__name__, one_line(err)) from None
        except Exception as err:  # a bug: the console keeps the trace, the page gets a line and stays alive
            traceback.print_exc()
            message = scrub_paths(f"unexpected error ({type(err).__name__}): {one_line(err)}")
            raise gr.Error(message, print_exception=False) from None

    return wrapper

"""The handlers' error wrapper: the library's errors become one readable line in the page, never a trace."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr
from PIL import Image

from dino_seg import davis
from dino_seg.images import ImageError
from dino_seg.video import VideoError
from dino_seg.weights import WeightsError

T = TypeVar("T")

USER_ERRORS = (ImageError, WeightsError, davis.DavisError, VideoError, ValueError, OSError)


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), at most 500 characters."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Raise gr.Error with a one-line message for any failure of `fn` (the page shows it as a toast)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Image.DecompressionBombError as err:
            raise gr.Error(f"image too large to decode safely: {one_line(err)}") from None
        except USER_ERRORS as err:
            raise gr.Error(one_line(err)) from None
        except Exception as err:  # a bug: the console keeps the trace, the page gets a line and stays alive
            traceback.print_exc()
            raise gr.Error(f"unexpected error ({type(err).__name__}): {one_line(err)}") from None

    return wrapper

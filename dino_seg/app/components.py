"""Gradio components the tabs share, adjusted: API calls (from a fresh session, with any value) get one-line
errors, and image outputs reach Gradio as files (safe when two requests show the same image)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from dino_seg.files import save_png

from .errors import user_error
from .scratch import VIEWS


class UploadImage(gr.Image):
    """gr.Image handing the uploaded file's path to the handler as is: gr.Image's own preprocessing opens
    the file and fails on a non-image with a long internal message; our handler reports it in one line."""

    is_template = True  # the page draws it with gr.Image's front-end

    def preprocess(self, payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


class FrameSlider(gr.Slider):
    """A frame-index slider whose range a handler sets per sequence. gr.Slider checks a value against the
    range the page was built with (not the one set later), so an API call asking for frame 5 of a fresh
    session would fail; the handlers clamp the index themselves."""

    is_template = True  # the page draws it with gr.Slider's front-end

    def preprocess(self, payload: float) -> float:
        return payload


def refused(component: gr.components.Component, err: gr.Error) -> gr.Error:
    """A value a component refuses (only API calls can send one: a slider's out-of-range number, a radio's
    unknown choice) as one console line naming the input, not Gradio's traceback."""
    return user_error("input", f"{component.label}: {err.message}")


# The subclasses below keep their Gradio parent as their only base: Gradio draws a template component with
# the front-end of its direct parent.
class Slider(gr.Slider):
    """gr.Slider whose out-of-range values are one line."""

    is_template = True

    def preprocess(self, payload: float) -> float:
        try:
            return super().preprocess(payload)
        except gr.Error as err:
            raise refused(self, err) from None


class Radio(gr.Radio):
    """gr.Radio whose values outside its choices are one line."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except gr.Error as err:
            raise refused(self, err) from None


class ImageView(gr.Image):
    """An output gr.Image that hands Gradio a PNG file instead of an array. Gradio caches an array by rewriting
    a file named by its content in place, so two requests showing the same image at once (two visitors
    loading the page: the same first DAVIS frame) could truncate it while it is being sent; a file it copies
    atomically. Handlers still return arrays."""

    is_template = True

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            path = VIEWS.new("view") / "image.png"
            save_png(path, value)
            value = str(path)
        return super().postprocess(value)


# Gradio keeps an error toast until it is closed: a run that succeeds closes those of the runs before it.
CLEAR_ERRORS_JS = "() => { document.querySelectorAll('[data-testid=\"toast-close\"]').forEach((b) => b.click()); }"


def clears_errors(event: Any) -> Any:
    """After `event` succeeds, close the page's error toasts in the browser (no request: JavaScript only)."""
    return event.success(None, None, None, js=CLEAR_ERRORS_JS, queue=False, api_visibility="private")

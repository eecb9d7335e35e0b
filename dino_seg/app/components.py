"""Gradio components the tabs share, adjusted so that API calls from a fresh session get our one-line errors."""

from __future__ import annotations

from typing import Any

import gradio as gr


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

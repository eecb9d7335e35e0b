"""What crosses tabs: the page, the weights dropdown, its banner and the tab strip, handed to every tab's builder."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr


@dataclass(frozen=True)
class Shared:
    """Components that more than one tab reads or updates; each tab's `build_tab(cfg, shared)` gets them."""

    demo: gr.Blocks  # for page-load events
    weights: gr.Dropdown  # the weights choice every model-using tab reads
    banner: gr.Markdown  # says what the weights are; tabs that change the weights update it
    tabs: gr.Tabs  # to switch tabs (Training's "Use in the Attention tab")

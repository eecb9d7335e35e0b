"""The Compare tab: one image through two or three backbones side by side (any DINO generation): the mean [CLS]
attention map, the share of [CLS] attention on itself, the registers and the patches per head, and the objects a
discovery method finds."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from dino_seg.discovery import patches_to_pixels
from dino_seg.viz import discovery_panels, heatmap

from .attention import (DEFAULT_METHOD, DISCOVERY_METHODS, ImagePass, discovery_for, discovery_settings,
                        example_images)
from .components import ImageView, Radio, Slider, UploadImage, clears_errors
from .config import AppConfig
from .errors import friendly
from .model_cache import RANDOM_WEIGHTS, licence_line, model_or_error
from .shared import Shared
from .weights_bar import weight_choices

MAX_BACKBONES = 3
NONE = "(none)"  # the third column's "no backbone" choice


@dataclass
class Panel:
    """One backbone's column of the comparison."""

    weights: str  # the choice as given
    description: str  # what the weights are
    attention: np.ndarray  # (H, W, 3) uint8 heat map of the heads' mean [CLS] attention, at the input's pixels
    objects: np.ndarray  # (H, W, 3) uint8 discovered masks and boxes on the input
    shares: np.ndarray  # (heads, 3): the [CLS] row's mass on [CLS] itself, on the registers, on the patches
    num_registers: int
    boxes: list[list[float]]  # [x0, y0, x1, y1] in the input's pixels
    object_scores: list[float]  # 1 - Ncut of each object
    licence: str | None  # DINOv3's licence line
    notes: list[str]


def attention_shares(entry: ImagePass) -> np.ndarray:
    """(heads, 3) shares of the last block's [CLS] attention: on [CLS] itself, on all registers, on the patches
    (each row sums to 1: the softmax runs over every token)."""
    features = entry.features
    prefix = features.prefix_attention  # (heads, P): [CLS], then the registers
    patches = features.cls_attention.reshape(len(prefix), -1).sum(axis=1)  # (heads,)
    return np.stack([prefix[:, 0], prefix[:, 1:].sum(axis=1), patches], axis=1)


def share_table(panel: Panel) -> str:
    """The per-head shares as a Markdown table (with a registers column only where the model has registers)."""
    registers = panel.num_registers > 0
    header = "| head | [CLS] | " + (f"registers ({panel.num_registers}) | " if registers else "") + "patches |"
    lines = [header, "|---:|---:|" + ("---:|" if registers else "") + "---:|"]
    for j, (cls, reg, patches) in enumerate(panel.shares):
        lines.append(f"| {j} | {cls:.3f} | " + (f"{reg:.3f} | " if registers else "") + f"{patches:.3f} |")
    return "\n".join(lines)


def compare_panel(image_path: str, weights: str, image_size: int, method: str, cfg: AppConfig) -> Panel:
    """One backbone's column from the Attention tab's cached pass of (image, weights file version, size): no
    second forward pass when the Attention tab (or an earlier comparison) has run it."""
    settings = discovery_settings(method)
    entry, result, _, description = discovery_for(image_path, weights, image_size, settings, cfg)
    model, _ = model_or_error(weights, cfg)
    pixels, features = entry.attention.image, entry.features
    mean_map = entry.attention.pixel_maps().mean(axis=0)  # (H, W): the heads' mean, at the input's pixels
    objects, _ = discovery_panels(pixels, result.masks, result.boxes,
                                  patches_to_pixels(result.scores[None], features)[0])
    return Panel(weights, description, heatmap(mean_map), objects, attention_shares(entry),
                 int(getattr(model, "num_registers", 0)), result.boxes, list(result.object_scores or []),
                 licence_line(model), entry.notes)


@friendly
def compare(image_path: str | None, weights: list[str | None], image_size: float, method: str,
            cfg: AppConfig) -> list[Panel]:
    """One panel per backbone (two or three different weights choices; "(none)" and empty ones are skipped)."""
    if not image_path:
        raise gr.Error("Pick an example or upload an image first.")
    chosen = list(dict.fromkeys(w.strip() for w in weights if w and w.strip() and w != NONE))
    if not 2 <= len(chosen) <= MAX_BACKBONES:
        raise gr.Error(f"Pick two or three different weights to compare (got {len(chosen)}).")
    discovery_settings(method)  # an unknown method is refused before any backbone runs
    return [compare_panel(image_path, w, int(image_size), method, cfg) for w in chosen]


def panel_markdown(panel: Panel, method: str) -> str:
    """A column's heading, its objects and its share table."""
    h, w = panel.attention.shape[:2]
    boxes = "; ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in panel.boxes) or "none"
    scores = ", ".join(f"{s:.2f}" for s in panel.object_scores)
    lines = [f"**{panel.description}** · input {w}x{h} px",
             f"{method}: {len(panel.boxes)} object(s), boxes {boxes}" + (f", scores {scores} (1 − Ncut)" if scores else ""),
             "", "Share of the last block's [CLS] attention per head:", "", share_table(panel)]
    if panel.licence:
        lines += ["", panel.licence]
    return "\n".join(lines + [f"- note: {n}" for n in panel.notes])


@friendly
def run_compare(image_path: str | None, first: str | None, second: str | None, third: str | None,
                image_size: float, method: str, cfg: AppConfig) -> tuple[Any, ...]:
    """The tab's outputs: (Markdown, attention map, objects) for each of the three columns; unused columns
    are emptied."""
    panels = compare(image_path, [first, second, third], image_size, method, cfg)
    out: list = []
    for i in range(MAX_BACKBONES):
        if i < len(panels):
            out += [panel_markdown(panels[i], method), panels[i].attention, panels[i].objects]
        else:
            out += ["", None, None]
    return tuple(out)


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Compare tab's components and events (endpoint /compare)."""
    choices = weight_choices(cfg)
    values = [v for _, v in choices if v != RANDOM_WEIGHTS]
    with gr.Tab("Compare", id="compare"):
        gr.Markdown("One image through two or three backbones (DINO, DINOv2, DINOv2 with registers, DINOv3): the "
                    "mean [CLS] attention of the last block, how that attention splits between [CLS], the registers "
                    "and the patches, and the objects a discovery method finds. Each backbone runs once per image "
                    "and size (shared with the Attention tab).")
        with gr.Row():
            with gr.Column(scale=2):
                image = UploadImage(label="Image", type="filepath", image_mode=None, height=260,
                                    sources=["upload", "clipboard"], elem_id="compare-image")
                gr.Examples(example_images(), inputs=image, label="Examples", examples_per_page=8)
            with gr.Column(scale=3):
                pickers = [gr.Dropdown(choices if i < 2 else [(NONE, NONE)] + choices,
                                       value=(values[i] if i < 2 and i < len(values) else NONE),
                                       label=f"Backbone {i + 1}", allow_custom_value=True,
                                       elem_id=f"compare-weights-{i + 1}") for i in range(MAX_BACKBONES)]
                image_size = Slider(128, 960, value=480, step=16, label="Image size (short side, px)")
                method = Radio(list(DISCOVERY_METHODS), value=DEFAULT_METHOD, label="Object discovery",
                               info="With the Attention tab's defaults (threshold 0.6 of the mean map, tau as the "
                                    "command line)", elem_id="compare-method")
                run_button = gr.Button("Compare", variant="primary", elem_id="compare-run")
        columns = []
        with gr.Row():
            for i in range(MAX_BACKBONES):
                with gr.Column():
                    columns += [gr.Markdown(elem_id=f"compare-note-{i + 1}"),
                                ImageView(label="Mean attention", interactive=False, height=260, format="png"),
                                ImageView(label="Discovered objects", interactive=False, height=260, format="png")]
    clears_errors(run_button.click(functools.partial(run_compare, cfg=cfg), [image, *pickers, image_size, method],
                                   columns, concurrency_id="model", api_name="compare"))
    return {"image": image, "weights": pickers, "image_size": image_size, "method": method, "run": run_button,
            "outputs": columns}

"""The Attention tab: every head's last-layer attention of an image, thresholded into masks, and the objects
that a discovery method (threshold, LOST, TokenCut, MaskCut) finds, with downloads."""

from __future__ import annotations

import functools
import shutil
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from torch import nn

from dino_seg.attention import AttentionResult, compute_attention
from dino_seg.discovery import DEFAULT_TAU, DiscoveryFeatures, discover, extract_features, patches_to_pixels
from dino_seg.discovery_io import write_discovery
from dino_seg.files import file_digest, save_npy, save_png
from dino_seg.images import ImageError, load_image
from dino_seg.viz import attention_panels, discovery_panels

from .components import ImageView, Radio, Slider, UploadImage
from .config import ASSETS, AppConfig
from .errors import friendly
from .model_cache import model_key, model_or_error
from .paths import check_path
from .scratch import SCRATCH
from .shared import Shared

MAX_IMAGE_SIDE = 2048  # uploads above this are downscaled first: the model resizes to --image_size anyway
ATTENTION_CACHE_SIZE = 16

Gallery = list[tuple[str, str]]  # (PNG file, caption)


def example_images() -> list[str]:
    """The bundled images, then images that ship inside scikit-image (grayscale and RGBA among them)."""
    paths = sorted(str(p) for p in (ASSETS / "images").glob("*.jpg"))
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        paths += [str(data / n) for n in ("chelsea.png", "coffee.png", "astronaut.png", "camera.png", "logo.png")
                  if (data / n).is_file()]
    except ImportError:  # scikit-image is a dependency; examples simply shrink without it
        pass
    return paths


def load_input_image(path: str | Path, max_side: int = MAX_IMAGE_SIDE) -> tuple[Image.Image, list[str]]:
    """An uploaded image as RGB, downscaled to `max_side`; notes say what was converted."""
    path = Path(path)
    notes: list[str] = []
    try:  # the file's own mode, for the note; PIL reads only the header here
        with Image.open(path) as probe:
            mode, size = probe.mode, probe.size
    except Exception:  # noqa: BLE001 - load_image below raises the readable error
        mode, size = "", (0, 0)
    try:
        image = load_image(path)
    except ImageError as err:  # uploads sit in gradio's cache under a long hash: name the file only
        raise ImageError(str(err).replace(str(path), path.name)) from None
    kinds = {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "RGBA (alpha dropped)", "P": "palette",
             "I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer", "F": "float",
             "CMYK": "CMYK", "1": "binary"}
    if mode in kinds:
        notes.append(f"{kinds[mode]} image ({mode}) converted to 8-bit RGB")
    if max(image.size) > max_side:
        before = image.size
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        notes.append(f"image of {before[0]}x{before[1]} downscaled to {image.width}x{image.height} "
                     f"(cap {max_side} px)")
    elif size != (0, 0) and size != image.size:
        notes.append(f"image rotated by its EXIF orientation to {image.width}x{image.height}")
    return image, notes


ATTENTION_CACHE: OrderedDict[tuple, tuple[AttentionResult, list[str]]] = OrderedDict()
_ATTENTION_LOCK = threading.Lock()


def _cached(cache: OrderedDict, image_path: str | Path, weights: str | None, image_size: int, cfg: AppConfig,
            compute: Callable[[nn.Module, Image.Image, list[str]], tuple]) -> tuple[tuple, str]:
    """(`compute(model, image, notes)`, model description), computed once per (weights, device, image content,
    size) and kept in `cache` (least recently used dropped first). The image path is checked against the
    page's allowed folders first: an API call may name any server file, not only uploads."""
    check_path(str(image_path), cfg, "image")
    model, description = model_or_error(weights, cfg)
    key = (model_key(weights, cfg), cfg.device, file_digest(image_path, "sha1"), int(image_size))
    with _ATTENTION_LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key], description
    image, notes = load_input_image(image_path)
    entry = compute(model, image, notes)
    with _ATTENTION_LOCK:
        cache[key] = entry
        while len(cache) > ATTENTION_CACHE_SIZE:
            cache.popitem(last=False)
    return entry, description


def attention_for(image_path: str | Path, weights: str | None, image_size: int,
                  cfg: AppConfig) -> tuple[AttentionResult, list[str], str]:
    """The attention of an image, computed once per (image content, weights, size) and cached, so that
    moving only the threshold slider never runs the model again."""
    (result, notes), description = _cached(
        ATTENTION_CACHE, image_path, weights, image_size, cfg,
        lambda model, image, notes: (compute_attention(model, image, int(image_size)), notes))
    return result, notes, description


def write_attention_downloads(folder: Path, result: AttentionResult, masks: np.ndarray,
                              threshold: float) -> list[str]:
    """masks.npy (heads + mean, H, W bool), attention.npy (heads, h, w float32) and a zip of 0/255 mask PNGs."""
    tag = f"th{threshold:.2f}"
    masks_npy, attn_npy = folder / f"masks_{tag}.npy", folder / "attention.npy"
    save_npy(masks_npy, masks)
    save_npy(attn_npy, result.maps.astype(np.float32))
    png_dir = folder / f"masks_{tag}"
    names = [f"head{j}" for j in range(len(masks) - 1)] + ["mean"]
    for name, mask in zip(names, masks):
        save_png(png_dir / f"mask_{tag}_{name}.png", mask.astype(np.uint8) * 255)
    zip_path = folder / f"masks_{tag}_png.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for png in sorted(png_dir.glob("*.png")):
            zf.write(png, png.name)
    shutil.rmtree(png_dir)
    return [str(zip_path), str(masks_npy), str(attn_npy)]


def gallery_png(path: Path, image: np.ndarray) -> str:
    """A gallery image as a PNG file of the request's folder. Gradio caches a numpy image by rewriting a file
    named by its content in place, so two requests with the same map (the same image at two thresholds)
    could truncate it while it is being sent (seen with 8 concurrent requests); a file it copies atomically."""
    save_png(path, image)
    return str(path)


@friendly
def run_attention(image_path: str | None, weights: str | None, image_size: float, threshold: float,
                  cfg: AppConfig) -> tuple[Gallery, Gallery, list[str], str]:
    """(heat maps, mask overlays (heads then mean), download files, note) for one image."""
    if not image_path:
        raise gr.Error("Pick an example or upload an image first.")
    result, notes, description = attention_for(image_path, weights, int(image_size), cfg)
    masks = result.masks(float(threshold), include_mean=True)  # (heads + 1, H, W)
    tag = " (random weights)" if description.startswith("RANDOM") else ""
    heat_images, overlay_images = attention_panels(result.image, result.pixel_maps(), masks)
    folder = SCRATCH.new("attention")
    heat = [(gallery_png(folder / f"heat_head{j}.png", image), f"head {j}{tag}") for j, image in enumerate(heat_images)]
    overlays = [(gallery_png(folder / f"mask_head{j}.png", image), f"head {j} mask{tag}")
                for j, image in enumerate(overlay_images[:-1])]
    overlays.append((gallery_png(folder / "mask_mean.png", overlay_images[-1]), f"mean-map mask{tag}"))
    files = write_attention_downloads(folder, result, masks, float(threshold))
    h, w = result.image.shape[:2]
    lines = [f"**{description}** · {len(heat)} heads · input {w}x{h} px · masks keep {threshold:.0%} "
             "of each map's attention mass"] + [f"- note: {n}" for n in notes]
    return heat, overlays, files, "\n".join(lines)


@friendly
def refresh_attention(image_path: str | None, weights: str | None, image_size: float, threshold: float,
                      cfg: AppConfig) -> tuple[Any, Any, Any, Any]:
    """Slider moves: recompute the outputs if an image is there (threshold alone re-uses the cache)."""
    if not image_path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return run_attention(image_path, weights, image_size, threshold, cfg)


# The object-discovery selector: the method names shown, and the library's.
DISCOVERY_METHODS = {"threshold": "attention", "LOST": "lost", "TokenCut": "tokencut", "MaskCut": "maskcut"}
FEATURES_CACHE: OrderedDict[tuple, tuple[DiscoveryFeatures, np.ndarray, list[str]]] = OrderedDict()


def features_for(image_path: str | Path, weights: str | None, image_size: int,
                 cfg: AppConfig) -> tuple[DiscoveryFeatures, np.ndarray, list[str], str]:
    """The discovery features of an image (one forward pass: last-block q/k/v and [CLS] attention), cached per
    (image content, weights, size), so that changing the method, tau or threshold never runs the model again."""
    def compute(model: nn.Module, image: Image.Image, notes: list[str]) -> tuple:
        features = extract_features(model, image, resize=int(image_size))
        return features, np.asarray(image), notes + ([features.note] if features.note else [])

    entry, description = _cached(FEATURES_CACHE, image_path, weights, image_size, cfg, compute)
    return (*entry, description)


@friendly
def run_discovery(image_path: str | None, weights: str | None, image_size: float, method: str, tau: float,
                  threshold: float, cfg: AppConfig) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(objects overlay with boxes, score map, download files, note) of one discovery method on one image."""
    if not image_path:
        raise gr.Error("Pick an example or upload an image first.")
    if method not in DISCOVERY_METHODS:
        raise gr.Error(f"Unknown method {method!r}: pick one of {', '.join(DISCOVERY_METHODS)}.")
    features, pixels, notes, description = features_for(image_path, weights, int(image_size), cfg)
    name = DISCOVERY_METHODS[method]
    # The threshold method is DINO-seg on the heads' mean map, with the tab's mass threshold.
    result = discover(features, name, tau=float(tau) if name in DEFAULT_TAU else None, dinoseg_head=None,
                      threshold=float(threshold))
    objects, heat = discovery_panels(pixels, result.masks, result.boxes,
                                     patches_to_pixels(result.scores[None], features)[0])
    files = [str(f) for f in write_discovery(SCRATCH.new("discover"), pixels, features, result)]
    setting = {"attention": f"mean-map mask keeping {threshold:.0%} of the mass, largest component",
               "lost": "seed expanded by the 100 lowest-degree patches", "tokencut": f"tau {tau:.2f}",
               "maskcut": f"tau {tau:.2f}, up to 3 objects"}[name]
    boxes = "; ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in result.boxes) or "none"
    lines = [f"**{method}** ({setting}) · {len(result.boxes)} object(s) · boxes {boxes}"]
    lines += [f"- note: {n}" for n in notes]
    return objects, heat, files, "\n".join(lines)


@friendly
def refresh_discovery(image_path: str | None, weights: str | None, image_size: float, method: str, tau: float,
                      threshold: float, cfg: AppConfig) -> tuple[Any, Any, Any, Any]:
    """Method, tau or threshold changed: redo the discovery from the cached features, if an image is there."""
    if not image_path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return run_discovery(image_path, weights, image_size, method, tau, threshold, cfg)


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Attention tab's components and events (endpoints /attention and /refresh_attention)."""
    with gr.Tab("Attention", id="attention"):
        with gr.Row():
            with gr.Column(scale=2):
                image = UploadImage(label="Image", type="filepath", image_mode=None, height=320,
                                    sources=["upload", "clipboard"], elem_id="attention-image")
                gr.Examples(example_images(), inputs=image, label="Examples", examples_per_page=8,
                            elem_id="attention-examples")
                image_size = Slider(128, 960, value=480, step=16, label="Image size (short side, px)")
                threshold = Slider(0.05, 1.0, value=0.6, step=0.05, label="Mass threshold",
                                      info="Share of each map's attention mass the mask keeps (paper: 0.6)",
                                      elem_id="attention-threshold")
                method = Radio(list(DISCOVERY_METHODS), value="TokenCut", label="Object discovery",
                                  info="threshold: DINO's 60%-mass mask; LOST, TokenCut, MaskCut on the last keys",
                                  elem_id="discover-method")
                tau = Slider(0.05, 0.95, value=0.2, step=0.05, label="tau (TokenCut / MaskCut graph threshold)",
                                elem_id="discover-tau")
                run_button = gr.Button("Compute attention", variant="primary", elem_id="attention-run")
            with gr.Column(scale=3):
                note = gr.Markdown(elem_id="attention-note")
                heat_gallery = gr.Gallery(label="Attention heat map of each head", columns=3, height=330,
                                          format="png", elem_id="heat-gallery")
                mask_gallery = gr.Gallery(label="Mask of each head and of the mean map (with contours)",
                                          columns=4, height=330, format="png", elem_id="mask-gallery")
                downloads = gr.File(label="Download masks (PNG zip, .npy) and attention (.npy)",
                                    file_count="multiple", elem_id="attention-downloads")
                discover_note = gr.Markdown(elem_id="discover-note")
                with gr.Row():
                    objects_image = ImageView(label="Discovered objects (masks and boxes)", interactive=False,
                                             height=300, format="png", elem_id="discover-objects")
                    scores_image = ImageView(label="Score map", interactive=False, height=300, format="png",
                                            elem_id="discover-scores")
                discover_files = gr.File(label="Download objects (masks/patches/scores .npy, boxes.json, PNGs)",
                                         file_count="multiple", elem_id="discover-downloads")

    inputs = [image, shared.weights, image_size, threshold]
    outputs = [heat_gallery, mask_gallery, downloads, note]
    # Discovery shares one cached forward pass per image and size: the method, tau and threshold re-use it.
    # It runs after the attention succeeded (`.success`), so a bad upload says so once, not once per output.
    d_inputs = [image, shared.weights, image_size, method, tau, threshold]
    d_outputs = [objects_image, scores_image, discover_files, discover_note]
    d_refresh = functools.partial(refresh_discovery, cfg=cfg)
    run_button.click(functools.partial(run_attention, cfg=cfg), inputs, outputs, concurrency_id="model",
                     api_name="attention").success(
        functools.partial(run_discovery, cfg=cfg), d_inputs, d_outputs, concurrency_id="model", api_name="discover")
    # The threshold re-uses the cached attention, so every change (drag or typed value) may refresh;
    # a new image size needs a forward pass, so only the end of a drag (or the button) recomputes.
    refresh = functools.partial(refresh_attention, cfg=cfg)
    threshold.change(refresh, inputs, outputs, concurrency_id="model", trigger_mode="always_last",
                     api_name="refresh_attention").success(
        d_refresh, d_inputs, d_outputs, concurrency_id="model", api_name="refresh_discover_threshold",
        api_visibility="private")
    image_size.release(refresh, inputs, outputs, concurrency_id="model", api_name="refresh_attention_size",
                       api_visibility="private").success(  # the same endpoint as /refresh_attention
        d_refresh, d_inputs, d_outputs, concurrency_id="model", api_name="refresh_discover_size",
        api_visibility="private")
    for name, control in (("method", method), ("tau", tau)):
        control.change(d_refresh, d_inputs, d_outputs, concurrency_id="model", trigger_mode="always_last",
                       api_name=f"refresh_discover_{name}", api_visibility="private")
    return {"image": image, "image_size": image_size, "threshold": threshold, "run": run_button, "note": note,
            "heat_gallery": heat_gallery, "mask_gallery": mask_gallery, "downloads": downloads, "method": method,
            "tau": tau, "objects": objects_image, "scores": scores_image, "discover_files": discover_files,
            "discover_note": discover_note}

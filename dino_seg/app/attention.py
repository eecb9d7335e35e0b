"""The Attention tab: every head's last-layer attention of an image, thresholded into masks, and the objects
that a discovery method (threshold, LOST, TokenCut, MaskCut) finds, with downloads."""

from __future__ import annotations

import functools
import math
import shutil
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from torchvision import transforms

from dino_seg.attention import AttentionResult, resized_size
from dino_seg.discovery import (DEFAULT_TAU, MAX_PATCHES, DiscoveryFeatures, DiscoveryResult, discover,
                                extract_features, patches_to_pixels)
from dino_seg.discovery_io import write_discovery, write_objects, write_refinement
from dino_seg.files import file_digest, save_npy, save_png
from dino_seg.images import ImageError, load_image
from dino_seg.refine import RefinedObjects, refine_objects
from dino_seg.viz import attention_panels, discovery_panels

from .components import ImageView, Radio, Slider, UploadImage, clears_errors
from .config import ASSETS, AppConfig
from .errors import friendly
from .model_cache import model_or_error, weights_identity
from .paths import check_path
from .scratch import SCRATCH
from .shared import Shared

MAX_IMAGE_SIDE = 2048  # uploads above this are downscaled first: the model resizes to --image_size anyway
CACHE_SIZE = 16  # image passes kept, and discovery results

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


@dataclass
class ImagePass:
    """What the one forward pass of an image gives both halves of the tab."""

    attention: AttentionResult  # per-head [CLS] attention (heads, h, w) and the image it was computed on
    features: DiscoveryFeatures  # the same pass's keys (the only features the tab's methods use) and attention
    notes: list[str]  # what was converted or downscaled


PASS_CACHE: OrderedDict[tuple, ImagePass] = OrderedDict()
DISCOVERY_CACHE: OrderedDict[tuple, DiscoveryResult] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _lookup(cache: OrderedDict, key: tuple) -> Any:
    with _CACHE_LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    return None


def _store(cache: OrderedDict, key: tuple, value: Any) -> None:
    with _CACHE_LOCK:
        cache[key] = value
        while len(cache) > CACHE_SIZE:  # least recently used first
            cache.popitem(last=False)


def model_input(image: Image.Image, image_size: int, patch_size: int) -> tuple[Image.Image, list[str]]:
    """The image as the model sees it: the short side resized to `image_size` (visualize_attention.py's rule)
    and cropped to whole patches, as dino_seg.attention.preprocess does, downscaled further when it would have
    more than discovery's patch cap. Cropping instead of discovery's zero padding lets one pass serve the
    attention maps and every discovery method, on the same pixels."""
    h, w = resized_size(image.size, int(image_size))
    notes = []
    if (h // patch_size) * (w // patch_size) > MAX_PATCHES:
        factor = math.sqrt(MAX_PATCHES * patch_size ** 2 / (h * w))
        notes.append(f"a {w}x{h} input has over {MAX_PATCHES} patches: processed at "
                     f"{int(w * factor)}x{int(h * factor)}")
        h, w = int(h * factor), int(w * factor)
    if min(h, w) < patch_size:
        raise ImageError(f"image of {image.width}x{image.height} is smaller than one {patch_size}-pixel patch "
                         f"at a {image_size}-pixel short side")
    resized = transforms.Resize((h, w))(image)
    return resized.crop((0, 0, w - w % patch_size, h - h % patch_size)), notes


def image_pass(image_path: str | Path, weights: str | None, image_size: int,
               cfg: AppConfig) -> tuple[ImagePass, str, tuple]:
    """(the pass, model description, cache key) of an image: one forward pass per (image content, weights
    file version, device, size), cached (least recently used dropped first), so that the threshold, the method
    and tau never run the model again. The image path is checked against the page's allowed folders first:
    an API call may name any server file, not only uploads."""
    check_path(str(image_path or ""), cfg, "image")
    model, description = model_or_error(weights, cfg)
    key = (weights_identity(weights, cfg), file_digest(image_path, "sha1"), int(image_size))
    cached = _lookup(PASS_CACHE, key)
    if cached is not None:
        return cached, description, key
    image, notes = load_input_image(image_path)
    shown, size_notes = model_input(image, int(image_size), model.patch_size)
    features = extract_features(model, shown)  # whole patches: no padding, no resize
    features = replace(features, feats={"k": features.feats["k"]})  # q and v: no method of the tab uses them
    prefix = features.prefix_attention  # (heads, 1 + registers): the [CLS] row's mass on [CLS], then each register
    shares = prefix[:, 1:].sum(axis=1) if prefix is not None and prefix.shape[1] > 1 else None  # (heads,)
    attention = AttentionResult(maps=features.cls_attention, image=np.asarray(shown), patch_size=model.patch_size,
                                register_share=shares)
    entry = ImagePass(attention, features, notes + size_notes + ([features.note] if features.note else []))
    _store(PASS_CACHE, key, entry)
    return entry, description, key


def attention_for(image_path: str | Path, weights: str | None, image_size: int,
                  cfg: AppConfig) -> tuple[AttentionResult, list[str], str]:
    """The attention of an image (from its cached pass), its notes and the model's description."""
    entry, description, _ = image_pass(image_path, weights, image_size, cfg)
    return entry.attention, entry.notes, description


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
    if result.register_share is not None:  # the registers paper's point: how much [CLS] attention they take
        lines.append("- registers' share of the [CLS] attention: " +
                     ", ".join(f"head {j} {share:.1%}" for j, share in enumerate(result.register_share)) +
                     f" (mean {result.register_share.mean():.1%})")
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
DEFAULT_METHOD = "TokenCut"
DEFAULT_THRESHOLD = 0.6  # the paper's share of the attention mass


def default_tau(method: str) -> float | None:
    """The command line's tau of a method shown on the page (TokenCut 0.2, MaskCut 0.15); None: it has none."""
    return DEFAULT_TAU.get(DISCOVERY_METHODS.get(method, ""))


def discovery_settings(method: str, tau: float | None = None,
                       threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """discover()'s arguments for a method shown on the page, in both tabs: the threshold method on the heads'
    mean map (the map whose mask the Attention tab shows), tau only for the graph methods (their command-line
    default when not given)."""
    if method not in DISCOVERY_METHODS:
        raise gr.Error(f"Unknown method {method!r}: pick one of {', '.join(DISCOVERY_METHODS)}.")
    name = DISCOVERY_METHODS[method]
    tau = (default_tau(method) if tau is None else float(tau)) if name in DEFAULT_TAU else None
    return {"method": name, "tau": tau, "dinoseg_head": None, "threshold": float(threshold)}


def discovery_for(image_path: str | Path, weights: str | None, image_size: int, settings: dict[str, Any],
                  cfg: AppConfig, refine: bool = False
                  ) -> tuple[ImagePass, DiscoveryResult, RefinedObjects | None, str]:
    """The objects a method finds in an image (with their scores, and with `refine` their bilateral-solver
    refinement as eval.discover --refine), cached per pass and per the settings the method reads (the
    threshold only for the threshold method, tau only for TokenCut and MaskCut): moving the threshold never
    runs TokenCut or MaskCut again."""
    entry, description, key = image_pass(image_path, weights, image_size, cfg)
    reads = ("tau",) if settings["tau"] is not None else ("threshold",) if settings["method"] == "attention" else ()
    result_key = (key, settings["method"], *(settings[name] for name in reads))
    result = _lookup(DISCOVERY_CACHE, result_key)
    if result is None:
        result = discover(entry.features, score_objects=True, **settings)
        _store(DISCOVERY_CACHE, result_key, result)
    refined = None
    if refine:
        refined = _lookup(DISCOVERY_CACHE, (*result_key, "refined"))
        if refined is None:
            refined = refine_objects(entry.attention.image, result.masks)
            _store(DISCOVERY_CACHE, (*result_key, "refined"), refined)
    return entry, result, refined, description


@friendly
def run_discovery(image_path: str | None, weights: str | None, image_size: float, method: str, tau: float,
                  threshold: float, cfg: AppConfig, refine: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(objects overlay with boxes, score map, download files, note) of one discovery method on one image, on
    the pixels the attention maps show (boxes in their coordinates). With `refine` the overlay shows the
    refined masks and their boxes (eval.discover --refine); the note gives each object's score either way."""
    if not image_path:
        raise gr.Error("Pick an example or upload an image first.")
    settings = discovery_settings(method, tau, threshold)
    entry, result, refined, _ = discovery_for(image_path, weights, int(image_size), settings, cfg, bool(refine))
    pixels, features = entry.attention.image, entry.features
    shown_masks, shown_boxes = (result.masks, result.boxes) if refined is None else (refined.masks, refined.boxes)
    objects, heat = discovery_panels(pixels, shown_masks, shown_boxes,
                                     patches_to_pixels(result.scores[None], features)[0])
    folder = SCRATCH.new("discover")
    files = [str(f) for f in write_discovery(folder, pixels, features, result)]
    files.append(str(write_objects(folder, result, refined)))
    if refined is not None:
        files += [str(f) for f in write_refinement(folder, refined)]
    name, tau = settings["method"], settings["tau"]
    setting = {"attention": f"mean-map mask keeping {threshold:.0%} of the mass, largest component",
               "lost": "seed expanded by the 100 lowest-degree patches"}.get(name) or (
        f"tau {tau:.2f}" + (", up to 3 objects" if name == "maskcut" else ""))
    boxes = "; ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in result.boxes) or "none"
    h, w = pixels.shape[:2]
    lines = [f"**{method}** ({setting}) · {len(result.boxes)} object(s) · boxes {boxes} (pixels of the {w}x{h} "
             "input)"]
    for i, score in enumerate(result.object_scores or []):
        line = f"- object {i + 1}: score {score:.2f} (1 − Ncut)"
        if refined is not None:
            line += (f", refined (IoU {refined.ious[i]:.2f} with the patch mask)" if refined.accepted[i] else
                     f", refinement refused (IoU {refined.ious[i]:.2f} < 0.5): patch mask kept")
        lines.append(line)
    lines += [f"- note: {n}" for n in entry.notes]
    return objects, heat, files, "\n".join(lines)


@friendly
def refresh_discovery(image_path: str | None, weights: str | None, image_size: float, method: str, tau: float,
                      threshold: float, cfg: AppConfig, refine: bool = False) -> tuple[Any, Any, Any, Any]:
    """Method, tau, threshold or refinement changed: redo the discovery from the cached pass, if an image is there."""
    if not image_path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return run_discovery(image_path, weights, image_size, method, tau, threshold, cfg, refine)


def method_changed(method: str) -> dict:
    """A new method sets tau to that method's command-line default (MaskCut 0.15, TokenCut 0.2)."""
    tau = default_tau(method)
    return gr.update() if tau is None else gr.update(value=tau)


def _controls() -> dict[str, Any]:
    """The image (examples below it), its size, the mass threshold, the method, tau, refinement and the button."""
    c: dict[str, Any] = {}
    c["image"] = UploadImage(label="Image", type="filepath", image_mode=None, height=320,
                             sources=["upload", "clipboard"], elem_id="attention-image")
    gr.Examples(example_images(), inputs=c["image"], label="Examples", examples_per_page=8,
                elem_id="attention-examples")
    c["image_size"] = Slider(128, 960, value=480, step=16, label="Image size (short side, px)")
    c["threshold"] = Slider(0.05, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Mass threshold",
                            info="Share of each map's attention mass the mask keeps (paper: 0.6)",
                            elem_id="attention-threshold")
    c["method"] = Radio(list(DISCOVERY_METHODS), value=DEFAULT_METHOD, label="Object discovery",
                        info="threshold: DINO's 60%-mass mask; LOST, TokenCut, MaskCut on the last keys",
                        elem_id="discover-method")
    c["tau"] = Slider(0.05, 0.95, value=default_tau(DEFAULT_METHOD), step=0.05,
                      label="tau (TokenCut / MaskCut graph threshold)",
                      info="A new method starts from its command-line default (TokenCut 0.2, MaskCut 0.15)",
                      elem_id="discover-tau")
    c["refine"] = gr.Checkbox(False, label="Refine the object masks (TokenCut's bilateral solver, as "
                              "eval.discover --refine)", elem_id="discover-refine")
    c["run"] = gr.Button("Compute attention", variant="primary", elem_id="attention-run")
    return c


def _outputs() -> dict[str, Any]:
    """The heat maps, masks and downloads of the attention, then the discovered objects, score map and downloads."""
    c: dict[str, Any] = {}
    c["note"] = gr.Markdown(elem_id="attention-note")
    c["heat_gallery"] = gr.Gallery(label="Attention heat map of each head", columns=3, height=330, format="png",
                                   elem_id="heat-gallery")
    c["mask_gallery"] = gr.Gallery(label="Mask of each head and of the mean map (with contours)", columns=4,
                                   height=330, format="png", elem_id="mask-gallery")
    c["downloads"] = gr.File(label="Download masks (PNG zip, .npy) and attention (.npy)", file_count="multiple",
                             elem_id="attention-downloads")
    c["discover_note"] = gr.Markdown(elem_id="discover-note")
    with gr.Row():
        c["objects"] = ImageView(label="Discovered objects (masks and boxes)", interactive=False, height=300,
                                 format="png", elem_id="discover-objects")
        c["scores"] = ImageView(label="Score map", interactive=False, height=300, format="png",
                                elem_id="discover-scores")
    c["discover_files"] = gr.File(label="Download objects (masks/patches/scores .npy, boxes.json, objects.json with "
                                        "scores, PNGs; refined.npy/png when refined)",
                                  file_count="multiple", elem_id="discover-downloads")
    return c


def _wire(c: dict[str, Any], cfg: AppConfig, shared: Shared) -> None:
    """The tab's events on its components `c`."""
    inputs = [c["image"], shared.weights, c["image_size"], c["threshold"]]
    outputs = [c["heat_gallery"], c["mask_gallery"], c["downloads"], c["note"]]
    # Discovery shares one cached forward pass per image and size: the method, tau and threshold re-use it.
    # It runs after the attention succeeded (`.success`), so a bad upload says so once, not once per output.
    d_inputs = [c["image"], shared.weights, c["image_size"], c["method"], c["tau"], c["threshold"], c["refine"]]
    d_outputs = [c["objects"], c["scores"], c["discover_files"], c["discover_note"]]

    def d_run(image_path, weights, image_size, method, tau, threshold, refine):
        return run_discovery(image_path, weights, image_size, method, tau, threshold, cfg, refine)

    def d_refresh(image_path, weights, image_size, method, tau, threshold, refine):
        return refresh_discovery(image_path, weights, image_size, method, tau, threshold, cfg, refine)

    clears_errors(c["run"].click(functools.partial(run_attention, cfg=cfg), inputs, outputs, concurrency_id="model",
                                 api_name="attention").success(
        d_run, d_inputs, d_outputs, concurrency_id="model", api_name="discover"))
    # The threshold re-uses the cached attention, so every change (drag or typed value) may refresh;
    # a new image size needs a forward pass, so only the end of a drag (or the button) recomputes.
    refresh = functools.partial(refresh_attention, cfg=cfg)
    c["threshold"].change(refresh, inputs, outputs, concurrency_id="model", trigger_mode="always_last",
                          api_name="refresh_attention").success(
        d_refresh, d_inputs, d_outputs, concurrency_id="model", api_name="refresh_discover_threshold",
        api_visibility="private")
    c["image_size"].release(refresh, inputs, outputs, concurrency_id="model", api_name="refresh_attention_size",
                            api_visibility="private").success(  # the same endpoint as /refresh_attention
        d_refresh, d_inputs, d_outputs, concurrency_id="model", api_name="refresh_discover_size",
        api_visibility="private")
    # A new method first takes its default tau; only a person's own tau moves (`input`) refresh on their own,
    # so that the method's tau update does not run the discovery a second time.
    c["method"].change(method_changed, c["method"], c["tau"], api_name="method_tau", api_visibility="private").then(
        d_refresh, d_inputs, d_outputs, concurrency_id="model", trigger_mode="always_last",
        api_name="refresh_discover_method", api_visibility="private")
    c["tau"].input(d_refresh, d_inputs, d_outputs, concurrency_id="model", trigger_mode="always_last",
                   api_name="refresh_discover_tau", api_visibility="private")
    c["refine"].change(d_refresh, d_inputs, d_outputs, concurrency_id="model", trigger_mode="always_last",
                       api_name="refresh_discover_refine", api_visibility="private")


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Attention tab's components and events (endpoints /attention, /refresh_attention and /discover)."""
    with gr.Tab("Attention", id="attention"):
        with gr.Row():
            with gr.Column(scale=2):
                c = _controls()
            with gr.Column(scale=3):
                c |= _outputs()
    _wire(c, cfg, shared)
    return c

"""Gradio app: DINO attention masks, DAVIS label propagation, evaluation results and training runs on one page.

    python app.py                                      # 127.0.0.1:7860, official dino_vits16 (or a banner)
    python app.py --pretrained_weights runs/tiny/checkpoint.pth --davis_root DAVIS --results_dir out \
        --train_dir runs/tiny

Every handler is a module-level function that only calls the `dino_seg` library, so tests import and
call them directly; `build_demo` wires them into the page and `main` launches it.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import shutil
import signal
import sys
import tempfile
import threading
import traceback
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from dino_seg import davis, metrics, runs
from dino_seg.attention import AttentionResult, compute_attention
from dino_seg.device import pick_device
from dino_seg.files import save_npy, save_png
from dino_seg.images import ImageError, load_image, load_mask
from dino_seg.models import ARCHS, is_vit, model_name
from dino_seg.propagation import segment_sequence
from dino_seg.video import VideoError, read_video_frames, write_video
from dino_seg.viz import attention_panels, label_color, overlay_labels
from dino_seg.weights import PRESETS, WeightsError, WeightsUnavailable, load_model

APP_DIR = Path(__file__).resolve().parent
ASSETS = APP_DIR / "assets"
BUNDLED_DAVIS = ASSETS / "davis"
RANDOM_WEIGHTS = "random weights (pipeline check only)"
VIT_PRESETS = [name for name, preset in PRESETS.items() if preset.arch.startswith("vit")]

MAX_IMAGE_SIDE = 2048  # uploads above this are downscaled first: the model resizes to --image_size anyway
MAX_VIDEO_FRAMES = 60  # ViT-S/16 at a 480 short side takes about 3 s a frame on a 2-core CPU
VIDEO_SHORT_SIDES = (240, 360, 480)  # 480 is the reference; smaller is faster on CPU
ATTENTION_CACHE_SIZE = 16
SCRATCH_KEEP = 24  # request folders kept in the app's temporary folder (older ones are deleted)

# Plain system font stacks: the page must not fetch web fonts (the app often runs offline).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = """
#weights-banner {border-left: 4px solid #d97706; padding-left: 12px;}
#weights-banner:empty {display: none;}
"""

T = TypeVar("T")


@dataclass(frozen=True)
class AppConfig:
    """What the command line sets: default weights, the model flags and the folders the tabs open."""

    weights: str = "dino_vits16"
    arch: str | None = None
    patch_size: int | None = None
    davis_root: str = str(BUNDLED_DAVIS)
    results_dir: str = ""
    train_dir: str = ""
    device: str = "cpu"


# ----------------------------------------------------------------------------------------------------------------
# Errors: every handler turns the library's errors into one readable line in the page, never a stack trace.

_USER_ERRORS = (ImageError, WeightsError, davis.DavisError, VideoError, ValueError, OSError)


def _one_line(err: BaseException) -> str:
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
            raise gr.Error(f"image too large to decode safely: {_one_line(err)}") from None
        except _USER_ERRORS as err:
            raise gr.Error(_one_line(err)) from None
        except Exception as err:  # a bug: the console keeps the trace, the page gets a line and stays alive
            traceback.print_exc()
            raise gr.Error(f"unexpected error ({type(err).__name__}): {_one_line(err)}") from None

    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# Scratch space: one temporary folder for the app's lifetime, with a bounded number of request folders.

class Scratch:
    """Per-request folders inside one app-level temporary folder; only the newest `keep` are kept."""

    def __init__(self, keep: int = SCRATCH_KEEP) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dino-seg-app-"))
        self.keep = keep
        self._folders: list[Path] = []
        self._lock = threading.Lock()
        self._count = 0
        atexit.register(self.cleanup)

    def new(self, kind: str) -> Path:
        with self._lock:
            self._count += 1
            folder = self.root / f"{self._count:06d}-{kind}"
            folder.mkdir(parents=True)
            self._folders.append(folder)
            while len(self._folders) > self.keep:
                shutil.rmtree(self._folders.pop(0), ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


SCRATCH = Scratch()


# ----------------------------------------------------------------------------------------------------------------
# Weights and models: loaded once per (source, arch, patch size, device) and cached.

_MODEL_LOCK = threading.Lock()


def model_key(choice: str | None, cfg: AppConfig) -> tuple[str, str | None, int | None]:
    """(source, arch, patch_size) of a weights choice. --arch/--patch_size apply to random weights and
    are checked against the start-up weights; other files and presets say what they are."""
    choice = (choice or "").strip() or cfg.weights
    if choice == RANDOM_WEIGHTS or choice == "random":
        default = PRESETS.get(cfg.weights)
        arch = cfg.arch or (default.arch if default and default.arch.startswith("vit") else "vit_small")
        return RANDOM_WEIGHTS, arch, cfg.patch_size or (default.patch_size if default else None) or 16
    if choice == cfg.weights:
        return choice, cfg.arch, cfg.patch_size
    return choice, None, None


@functools.lru_cache(maxsize=4)
def _load(source: str, arch: str | None, patch_size: int | None, device: str) -> nn.Module:
    if source == RANDOM_WEIGHTS:
        # Seeded so that every session sees the same random model, without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return load_model(None, arch=arch, patch_size=patch_size, device=device)
    return load_model(source, arch=arch, patch_size=patch_size, device=device)


def get_model(choice: str | None, cfg: AppConfig) -> tuple[nn.Module, str]:
    """The cached model of a weights choice and a description that says what its weights are."""
    source, arch, patch = model_key(choice, cfg)
    with _MODEL_LOCK:  # two sessions asking at once load it once
        model = _load(source, arch, patch, cfg.device)
    return model, describe_model(model, source)


def describe_model(model: nn.Module, source: str) -> str:
    arch = model_name(model)
    if source == RANDOM_WEIGHTS:
        return f"RANDOM weights, {arch} (pipeline check only: not DINO, the maps are meaningless)"
    if source in PRESETS:
        return f"official DINO weights {source} ({arch})"
    return f"{Path(source).name} ({arch})"


def weight_choices(cfg: AppConfig, extra: list[str] | None = None) -> list[str]:
    choices = [cfg.weights] + [p for p in VIT_PRESETS if p != cfg.weights] + [RANDOM_WEIGHTS]
    for path in extra or []:
        if path not in choices:
            choices.insert(1, path)
    return choices


@friendly
def check_weights(choice: str | None, cfg: AppConfig) -> str:
    """The banner (Markdown) for a weights choice: what is loaded, or what is missing and how to get it."""
    source, _, _ = model_key(choice, cfg)
    try:
        model, description = get_model(choice, cfg)
    except WeightsUnavailable as err:
        name = Path(err.cache_path).name
        return (f"### Weights not available: `{source}`\n"
                f"The file **{name}** is not in the local cache and cannot be downloaded from {err.url} "
                "(no internet?). To use DINO's weights:\n"
                f"- download it on another machine and put it at `{err.cache_path}`, then pick `{source}` again;\n"
                "- or start the app with `python app.py --pretrained_weights PATH` (a preset name or a .pth file);\n"
                "- or upload a checkpoint file below, or pick **random weights (pipeline check only)** "
                "to try the page (its maps are meaningless).")
    except WeightsError as err:
        return (f"### Weights cannot be used: `{source}`\n{_one_line(err)}\n\n"
                "Upload another checkpoint below or pick **random weights (pipeline check only)**.")
    if source == RANDOM_WEIGHTS:
        return (f"### {description}\nThese untrained weights only check the pipeline; pick DINO weights or "
                "upload a checkpoint to see what DINO learned.")
    note = "" if is_vit(model) else " — ResNet-50 has no attention or patch features: pick a ViT."
    return f"Weights: **{description}** on {cfg.device}{note}"


@friendly
def add_uploaded_weights(file: str | None, cfg: AppConfig) -> tuple[dict, str]:
    """An uploaded checkpoint becomes a weights choice (and is checked at once)."""
    if not file:
        return gr.update(), ""
    return gr.update(choices=weight_choices(cfg, [file]), value=file), check_weights(file, cfg)


def _model_or_error(choice: str | None, cfg: AppConfig) -> tuple[nn.Module, str]:
    try:
        model, description = get_model(choice, cfg)
    except WeightsUnavailable as err:
        raise gr.Error(f"weights {model_key(choice, cfg)[0]!r} are not available: put the file at "
                       f"{err.cache_path}, pass --pretrained_weights PATH, upload a checkpoint, or pick "
                       f"'{RANDOM_WEIGHTS}'") from None
    if not is_vit(model):
        raise gr.Error("ResNet-50 weights have no self-attention or patch features: pick a ViT")
    return model, description


# ----------------------------------------------------------------------------------------------------------------
# Attention tab

class UploadImage(gr.Image):
    """gr.Image handing the uploaded file's path to the handler as is: gr.Image's own preprocessing opens
    the file and fails on a non-image with a long internal message; our handler reports it in one line."""

    is_template = True  # the page draws it with gr.Image's front-end

    def preprocess(self, payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


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


_ATTENTION_CACHE: OrderedDict[tuple, tuple[AttentionResult, list[str]]] = OrderedDict()
_ATTENTION_LOCK = threading.Lock()


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def attention_for(image_path: str | Path, weights: str | None, image_size: int,
                  cfg: AppConfig) -> tuple[AttentionResult, list[str], str]:
    """The attention of an image, computed once per (image content, weights, size) and cached, so that
    moving only the threshold slider never runs the model again."""
    model, description = _model_or_error(weights, cfg)
    key = (model_key(weights, cfg), cfg.device, _file_digest(image_path), int(image_size))
    with _ATTENTION_LOCK:
        if key in _ATTENTION_CACHE:
            _ATTENTION_CACHE.move_to_end(key)
            result, notes = _ATTENTION_CACHE[key]
            return result, notes, description
    image, notes = load_input_image(image_path)
    result = compute_attention(model, image, int(image_size))
    with _ATTENTION_LOCK:
        _ATTENTION_CACHE[key] = (result, notes)
        while len(_ATTENTION_CACHE) > ATTENTION_CACHE_SIZE:
            _ATTENTION_CACHE.popitem(last=False)
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


Gallery = list[tuple[np.ndarray, str]]


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
    heat = [(image, f"head {j}{tag}") for j, image in enumerate(heat_images)]
    overlays = [(image, f"head {j} mask{tag}") for j, image in enumerate(overlay_images[:-1])]
    overlays.append((overlay_images[-1], f"mean-map mask{tag}"))
    files = write_attention_downloads(SCRATCH.new("attention"), result, masks, float(threshold))
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


# ----------------------------------------------------------------------------------------------------------------
# Video tab

DAVIS_SOURCE = "DAVIS sequence"
UPLOAD_SOURCE = "Uploaded video"


@friendly
def list_davis(root: str | None) -> dict:
    """Sequence choices of a DAVIS root (the first one selected)."""
    root = (root or "").strip() or str(BUNDLED_DAVIS)
    names = davis.list_sequences(root)
    return gr.update(choices=names, value=names[0])


@friendly
def davis_first_frame(root: str | None, sequence: str | None) -> np.ndarray | None:
    """The first frame of a sequence with its first annotation overlaid (what propagation starts from)."""
    if not sequence:
        return None
    root = (root or "").strip() or str(BUNDLED_DAVIS)
    frames = davis.frame_paths(root, sequence)
    image = np.asarray(load_image(frames[0]))
    gt = davis.annotation_dir(root, sequence) / f"{frames[0].stem}.png"
    if gt.is_file():
        return overlay_labels(image, davis.read_annotation(gt))
    return image


@friendly
def video_first_frame(video_path: str | None) -> tuple[np.ndarray | None, str]:
    """The first frame of an uploaded video, to draw the first-frame mask on, and what to do next."""
    if not video_path:
        return None, ""
    paths, _, notes = read_video_frames(video_path, SCRATCH.new("first-frame"), max_frames=1)
    frame = np.asarray(load_image(paths[0]))
    hint = (f"First frame loaded ({frame.shape[1]}x{frame.shape[0]}): paint the object on it with the brush, "
            "or upload its mask.")
    return frame, " ".join([hint] + [f"Note: {n}." for n in notes if "downscaled" in n])


def _fit_mask(labels: np.ndarray, frame_hw: tuple[int, int], what: str) -> tuple[np.ndarray, list[str]]:
    """Resize a label map to the frame by nearest neighbour when only the scale differs; refuse other shapes."""
    if labels.shape == frame_hw:
        return labels, []
    (mh, mw), (fh, fw) = labels.shape, frame_hw
    if abs(mw / mh - fw / fh) > 0.02 * fw / fh:
        raise gr.Error(f"{what} is {mw}x{mh} but the first frame is {fw}x{fh}: a mask of the same shape is needed")
    resized = np.asarray(Image.fromarray(labels).resize((fw, fh), Image.Resampling.NEAREST))
    return resized, [f"{what} of {mw}x{mh} resized to the frame's {fw}x{fh} (nearest neighbour)"]


def mask_from_file(path: str | Path) -> np.ndarray:
    """Object indices (H, W) uint8 of an uploaded mask: palette/grayscale PNGs as DAVIS reads them,
    any other image as a single object (non-zero pixels)."""
    try:
        labels = davis.read_annotation(path)
    except davis.DavisError:
        fg, _ = load_mask(path)
        return fg.astype(np.uint8)
    objects = [v for v in np.unique(labels) if v not in (0, davis.VOID_LABEL)]
    if objects and max(objects) > 32:
        # Grayscale masks with values like 128: number the objects 1..K instead of propagating 129 channels.
        remap = np.zeros(256, np.uint8)
        remap[davis.VOID_LABEL] = davis.VOID_LABEL
        for k, v in enumerate(objects, start=1):
            remap[v] = k
        labels = remap[labels]
    return labels


def mask_from_drawing(editor: dict | None) -> np.ndarray | None:
    """Object 1 wherever the person painted on the first frame in the image editor (any layer)."""
    if not editor or not editor.get("layers"):
        return None
    painted = None
    for layer in editor["layers"]:
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[2] == 4:
            drawn = arr[..., 3] > 0
            painted = drawn if painted is None else painted | drawn
    return None if painted is None else painted.astype(np.uint8)


def run_scores(results_dir: Path, root: str | Path, sequence: str,
               frames: list[Path]) -> metrics.DavisScores | None:
    """J&F of the propagated frames with davis2017-evaluation's rules, as if the sequence ended with them;
    None when fewer than 3 frames were run or the ground truth does not hold exactly these frames first."""
    gts = davis.annotation_paths(root, sequence)[:len(frames)]
    if len(frames) < 3 or [p.stem for p in gts] != [f.stem for f in frames]:
        return None
    return metrics.summarise([metrics.score_sequence(results_dir, root, sequence, frames=len(frames))])


@friendly
def run_video(source: str, root: str | None, sequence: str | None, video_path: str | None,
              mask_path: str | None, drawing: dict | None, weights: str | None, max_frames: float,
              short_side: float, cfg: AppConfig,
              progress: gr.Progress = gr.Progress()) -> tuple[str | None, list[str], dict, np.ndarray | str, str]:
    """Propagate the first frame's labels through the frames: (video file, overlaid frame files,
    frame slider update, first overlaid frame (or the GIF when no video codec), summary Markdown with J&F
    when ground truth exists)."""
    max_frames = max(2, min(int(max_frames), MAX_VIDEO_FRAMES))
    short_side = int(short_side)
    work = SCRATCH.new("video")
    notes: list[str] = []
    fps = 10.0
    if source == UPLOAD_SOURCE:
        if not video_path:
            raise gr.Error("Upload a video file first (or pick a DAVIS sequence).")
        frames, fps, notes = read_video_frames(video_path, work / "frames", max_frames)
        name = Path(video_path).stem
        fh, fw = davis.image_size(frames[0])
        if mask_path:
            labels = mask_from_file(mask_path)
            what = "uploaded mask"
        else:
            labels = mask_from_drawing(drawing)
            what = "drawn mask"
            if labels is None:
                raise gr.Error("Give the first frame's mask: upload a mask image or draw on the first frame.")
        labels, fit_notes = _fit_mask(labels, (fh, fw), what)
        notes += fit_notes
        root_for_scores = None
    else:
        root = (root or "").strip() or str(BUNDLED_DAVIS)
        if not sequence:
            raise gr.Error("Pick a DAVIS sequence.")
        all_frames = davis.frame_paths(root, sequence)
        frames = all_frames[:max_frames]
        if len(all_frames) > len(frames):
            notes.append(f"only the first {len(frames)} of {len(all_frames)} frames are used (cap {max_frames})")
        first_gt = davis.annotation_dir(root, sequence) / f"{frames[0].stem}.png"
        labels = davis.read_annotation(first_gt)
        name = sequence
        root_for_scores = root
    if davis.num_objects(labels) == 0:
        raise gr.Error("The first-frame mask is empty: it must mark at least one object.")
    if len(frames) < 2:
        raise gr.Error("The video has a single frame: propagation needs at least two.")

    model, description = _model_or_error(None if not weights else weights, cfg)
    progress(0, desc="computing features")
    masks = [labels.astype(np.uint8)]
    steps = segment_sequence(model, frames, labels, device=cfg.device, short_side=short_side)
    for _, mask in progress.tqdm(steps, total=len(frames) - 1, desc="propagating", unit="frame"):
        masks.append(mask)

    results = work / "results" / name
    overlaid: list[np.ndarray] = []
    paths: list[str] = []
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        davis.write_indexed_png(results / f"{frame.stem}.png", np.where(mask == davis.VOID_LABEL, 0, mask))
        image = overlay_labels(np.asarray(load_image(frame)), mask)
        overlaid.append(image)
        path = work / "overlay" / f"{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path, quality=92)
        paths.append(str(path))
    video = write_video(overlaid, work / f"{name}_propagated", fps)

    lines = [f"**{description}** · {len(frames)} frames · short side {short_side} px · "
             f"{davis.num_objects(labels)} object(s)"]
    scores = run_scores(work / "results", root_for_scores, name, frames) if root_for_scores else None
    if scores is not None:
        g = scores.global_scores
        lines.append(f"\n**J&F {g['J&F-Mean']:.3f}** (J {g['J-Mean']:.3f}, F {g['F-Mean']:.3f}) over frames "
                     f"1–{len(frames) - 2} (first and last excluded, as DAVIS scores)")
    elif root_for_scores:
        lines.append("\nno J&F: the ground truth of these frames is incomplete (or fewer than 3 frames)")
    if short_side != 480:
        lines.append(f"- note: frames resized to a {short_side}-pixel short side (the reference uses 480): "
                     "faster, but scores differ from the paper's")
    lines += [f"- note: {n}" for n in notes]
    slider = gr.update(minimum=0, maximum=len(paths) - 1, value=0, step=1, interactive=True)
    if video.suffix == ".gif":
        # A video player cannot show a GIF, an image can: it animates in the frame view until the slider moves.
        lines.append("- note: this OpenCV build writes no browser-playable video codec: the animated GIF is "
                     "in the frame view")
        return None, paths, slider, str(video), "\n".join(lines)
    return str(video), paths, slider, overlaid[0], "\n".join(lines)


def show_frame(paths: list[str] | None, index: float) -> str | None:
    """The overlaid frame at the slider's position."""
    if not paths:
        return None
    return paths[max(0, min(int(index), len(paths) - 1))]


def switch_video_source(source: str) -> tuple[dict, dict]:
    """Show the DAVIS controls or the upload controls."""
    return gr.update(visible=source == DAVIS_SOURCE), gr.update(visible=source == UPLOAD_SOURCE)


# ----------------------------------------------------------------------------------------------------------------
# Results tab

def _results_subset(folder: Path) -> str:
    for subset in ("val", "train"):
        if all(p.is_file() for p in metrics.csv_paths(folder, subset)):
            return subset
    raise gr.Error(f"{folder}: no global_results-val.csv / per-sequence_results-val.csv: score it with "
                   f"`python -m eval.davis --results_path {folder} --data_path DAVIS` first")


def jf_chart(per_sequence: pd.DataFrame) -> Figure:
    """Horizontal bars of J&F per sequence object, with J and F beside them."""
    names = list(per_sequence["Sequence"])
    j = per_sequence["J-Mean"].to_numpy(float)
    f = per_sequence["F-Mean"].to_numpy(float)
    y = np.arange(len(names))
    fig = Figure(figsize=(7, max(2.5, 0.32 * len(names) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(y - 0.27, (j + f) / 2, height=0.27, label="J&F", color="#4c72b0")
    ax.barh(y, j, height=0.27, label="J (region)", color="#dd8452")
    ax.barh(y + 0.27, f, height=0.27, label="F (boundary)", color="#55a868")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("J&F, J and F per sequence object")
    ax.grid(axis="x", alpha=0.3)
    return fig


@friendly
def open_results(results_dir: str | None) -> tuple[str, pd.DataFrame, Figure, dict]:
    """(global scores Markdown, per-sequence table with J&F, chart, sequence choices) of an eval.davis folder."""
    folder = Path((results_dir or "").strip())
    if not str(folder) or str(folder) == "." or not folder.is_dir():
        raise gr.Error(f"results folder not found: {results_dir!r} (an --output_dir of python -m eval.davis)")
    subset = _results_subset(folder)
    scores = metrics.read_csvs(folder, subset)
    global_csv, seq_csv = metrics.csv_paths(folder, subset)
    if not scores.per_object:
        raise gr.Error(f"{seq_csv}: no sequences listed")
    per_sequence = pd.DataFrame(scores.per_object, columns=list(metrics.SEQUENCE_COLUMNS))
    per_sequence.insert(1, "J&F", ((per_sequence["J-Mean"] + per_sequence["F-Mean"]) / 2).round(3))
    row = scores.global_scores
    text = (f"**J&F-Mean {row['J&F-Mean']:.3f}** · J-Mean {row['J-Mean']:.3f} (recall {row['J-Recall']:.3f}, "
            f"decay {row['J-Decay']:.3f}) · F-Mean {row['F-Mean']:.3f} (recall {row['F-Recall']:.3f}, decay "
            f"{row['F-Decay']:.3f}) · {len(per_sequence)} object(s) · `{global_csv.name}`")
    sequences = list(dict.fromkeys(str(s).rsplit("_", 1)[0] for s in per_sequence["Sequence"]))
    return text, per_sequence, jf_chart(per_sequence), gr.update(choices=sequences, value=sequences[0])


def per_frame_chart(scores: metrics.SequenceScores) -> Figure:
    """J (and F, dashed) of each object over the scored frames."""
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(1, scores.j.shape[1] + 1)  # frame 0 (given) is not scored
    for k in range(scores.j.shape[0]):
        color = np.asarray(label_color(k + 1)) / 255
        ax.plot(x, scores.j[k], "-o", ms=3, color=color, label=f"object {k + 1} J")
        ax.plot(x, scores.f[k], "--", color=color, alpha=0.6, label=f"object {k + 1} F")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("frame")
    ax.set_ylabel("score")
    ax.set_title(f"{scores.name}: per-frame J (solid) and F (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return fig


@friendly
def sequence_scores(results_dir: str | None, root: str | None, sequence: str | None) -> tuple[Figure | None, dict]:
    """Per-frame J and F of one sequence, and the frame slider's range."""
    if not sequence:
        return None, gr.update()
    root = (root or "").strip() or str(BUNDLED_DAVIS)
    scores = metrics.score_sequence(Path((results_dir or "").strip()), root, sequence)
    n = len(davis.frame_paths(root, sequence))
    return per_frame_chart(scores), gr.update(minimum=0, maximum=n - 1, value=min(1, n - 1), step=1)


@friendly
def compare_frame(results_dir: str | None, root: str | None, sequence: str | None,
                  index: float) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Ground truth and prediction of one frame, each overlaid on the frame."""
    if not sequence:
        return None, None, ""
    root = (root or "").strip() or str(BUNDLED_DAVIS)
    frames = davis.frame_paths(root, sequence)
    frame = frames[max(0, min(int(index), len(frames) - 1))]
    image = np.asarray(load_image(frame))
    gt_path = davis.annotation_dir(root, sequence) / f"{frame.stem}.png"
    pred_path = Path((results_dir or "").strip()) / sequence / f"{frame.stem}.png"
    gt = overlay_labels(image, davis.read_annotation(gt_path)) if gt_path.is_file() else None
    pred = overlay_labels(image, davis.read_annotation(pred_path)) if pred_path.is_file() else None
    missing = [what for what, arr in (("ground truth", gt), ("prediction", pred)) if arr is None]
    note = f"{sequence} frame {frame.stem}" + (f" — no {' and no '.join(missing)} for this frame" if missing else "")
    return gt, pred, note


# ----------------------------------------------------------------------------------------------------------------
# Training tab

CURVES = (("loss", "loss"), ("lr", "learning rate"), ("wd", "weight decay"), ("momentum", "teacher momentum"),
          ("teacher_temp", "teacher temperature"), ("teacher_entropy", "teacher entropy (collapse: → 0)"),
          ("kl", "KL(teacher ‖ student) (collapse: → 0)"))


def training_curves(records: list[dict], epochs: list[dict]) -> Figure:
    """One panel per logged quantity over iterations, and the per-epoch mean loss."""
    fig = Figure(figsize=(12, 5.4), layout="constrained")
    axes = fig.subplots(2, 4)
    for ax, (key, title) in zip(axes.flat, CURVES):
        xs, ys = runs.series(records, key)
        if xs:
            ax.plot(xs, ys, lw=1)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("iteration", fontsize="small")
        ax.grid(alpha=0.3)
    ax = axes.flat[-1]
    xs, ys = runs.series(epochs, "train_loss", x="epoch")
    if xs:
        ax.plot(xs, ys, "-o", ms=3)
    else:
        ax.text(0.5, 0.5, "no finished epoch", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_title("mean loss per epoch (log.txt)", fontsize="medium")
    ax.set_xlabel("epoch", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


@friendly
def open_training_run(train_dir: str | None) -> tuple[str, Figure, pd.DataFrame, dict]:
    """(summary Markdown, curves, checkpoint table, checkpoint choices) of a `python -m train` folder."""
    folder = Path((train_dir or "").strip())
    if not str(folder) or str(folder) == "." or not folder.is_dir():
        raise gr.Error(f"training folder not found: {train_dir!r} (an --output_dir of python -m train)")
    try:
        records = runs.read_metrics(folder)
        epochs = runs.read_epoch_log(folder)
    except ValueError as err:
        raise gr.Error(_one_line(err)) from None
    checkpoints = runs.list_checkpoints(folder)
    if not records and not epochs and not checkpoints:
        raise gr.Error(f"{folder}: no {runs.METRICS_LOG}, {runs.EPOCH_LOG} or checkpoints: not a training folder")
    table = pd.DataFrame([{"file": c.path.name, "epoch": "latest" if c.is_latest else c.epoch,
                           "size (MB)": round(c.size_bytes / 2**20, 1),
                           "saved": pd.Timestamp(c.modified, unit="s").strftime("%Y-%m-%d %H:%M")}
                          for c in checkpoints], columns=["file", "epoch", "size (MB)", "saved"])
    last = records[-1] if records else {}
    parts = [f"{len(records)} iteration(s), {len(epochs)} finished epoch(s), {len(checkpoints)} checkpoint(s)"]
    for key in ("loss", "teacher_entropy", "kl"):
        if isinstance(last.get(key), (int, float)):
            parts.append(f"last {key} {last[key]:.4g}")
    choices = [str(c.path) for c in checkpoints]
    return (" · ".join(parts), training_curves(records, epochs), table,
            gr.update(choices=choices, value=choices[-1] if choices else None))


@friendly
def use_checkpoint(path: str | None, cfg: AppConfig) -> tuple[dict, dict, str]:
    """Make a run's checkpoint (its teacher) the weights of the page and go to the Attention tab."""
    if not path:
        raise gr.Error("Open a training folder and pick a checkpoint first.")
    banner = check_weights(path, cfg)
    return gr.update(choices=weight_choices(cfg, [path]), value=path), gr.Tabs(selected="attention"), banner


# ----------------------------------------------------------------------------------------------------------------
# The page

def build_demo(cfg: AppConfig | None = None) -> gr.Blocks:
    """The four-tab page; handlers are the module-level functions above, bound to `cfg`."""
    cfg = cfg or AppConfig()
    bind = functools.partial
    examples = example_images()
    with gr.Blocks(title="DINO: attention, video segmentation, results, training", analytics_enabled=False,
                   delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# DINO self-supervised ViTs\nSee what DINO learned: the self-attention of the last block, "
                    "video object segmentation by label propagation, DAVIS results and training runs.")
        banner = gr.Markdown(elem_id="weights-banner")
        with gr.Row(equal_height=True):
            weights = gr.Dropdown(weight_choices(cfg), value=cfg.weights, label="Weights", allow_custom_value=True,
                                  info="A preset, a .pth path, or random weights (pipeline check only)", scale=3,
                                  elem_id="weights-dropdown")
            upload_weights = gr.File(label="Upload a checkpoint (.pth)", file_types=[".pth", ".pt", ".ckpt"],
                                     scale=2, height=110)
        with gr.Tabs() as tabs:
            with gr.Tab("Attention", id="attention"):
                with gr.Row():
                    with gr.Column(scale=2):
                        image = UploadImage(label="Image", type="filepath", image_mode=None, height=320,
                                         sources=["upload", "clipboard"], elem_id="attention-image")
                        gr.Examples(examples, inputs=image, label="Examples", examples_per_page=8, elem_id="attention-examples")
                        image_size = gr.Slider(128, 960, value=480, step=16, label="Image size (short side, px)")
                        threshold = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Mass threshold",
                                              info="Share of each map's attention mass the mask keeps (paper: 0.6)",
                                              elem_id="attention-threshold")
                        run_button = gr.Button("Compute attention", variant="primary", elem_id="attention-run")
                    with gr.Column(scale=3):
                        attention_note = gr.Markdown(elem_id="attention-note")
                        heat_gallery = gr.Gallery(label="Attention heat map of each head", columns=3, height=330,
                                                  format="png", elem_id="heat-gallery")
                        mask_gallery = gr.Gallery(label="Mask of each head and of the mean map (with contours)",
                                                  columns=4, height=330, format="png", elem_id="mask-gallery")
                        downloads = gr.File(label="Download masks (PNG zip, .npy) and attention (.npy)",
                                            file_count="multiple", elem_id="attention-downloads")
            with gr.Tab("Video", id="video"):
                with gr.Row():
                    with gr.Column(scale=2):
                        source = gr.Radio([DAVIS_SOURCE, UPLOAD_SOURCE], value=DAVIS_SOURCE, label="Frames")
                        with gr.Group(visible=True) as davis_group:
                            root = gr.Textbox(cfg.davis_root, label="DAVIS root",
                                              info="JPEGImages/480p and Annotations/480p (bundled: 12 frames "
                                                   "of blackswan)")
                            sequence = gr.Dropdown(label="Sequence", elem_id="video-sequence")
                            first = gr.Image(label="First frame and its annotation", interactive=False, height=240,
                                             elem_id="video-first")
                        with gr.Group(visible=False) as upload_group:
                            video_in = gr.Video(label="Video file", sources=["upload"], height=240, elem_id="video-in")
                            mask_in = gr.File(label="First-frame mask (PNG; palette or black/white)",
                                              file_types=["image"], elem_id="video-mask")
                            draw_hint = gr.Markdown(elem_id="video-draw-hint")
                            drawing = gr.ImageEditor(label="…or draw the object on the first frame", type="numpy",
                                                     sources=[], height=300, layers=False,
                                                     brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"),
                                                     elem_id="video-draw")
                        max_frames = gr.Slider(2, MAX_VIDEO_FRAMES, value=12, step=1, label="Frames to propagate",
                                               info=f"Capped at {MAX_VIDEO_FRAMES}: a few seconds a frame on a CPU at 480 px",
                                               elem_id="video-frames")
                        short_side = gr.Radio(list(VIDEO_SHORT_SIDES), value=480, label="Short side (px)",
                                              info="480 as the reference; smaller is faster", elem_id="video-short-side")
                        video_button = gr.Button("Propagate", variant="primary", elem_id="video-run")
                    with gr.Column(scale=3):
                        video_note = gr.Markdown(elem_id="video-note")
                        video_out = gr.Video(label="Propagated labels", autoplay=True, loop=True, interactive=False,
                                             height=360, elem_id="video-out")
                        frame_index = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False)
                        frame_view = gr.Image(label="Frame", interactive=False, height=360, elem_id="video-frame")
                        frame_paths = gr.State([])
            with gr.Tab("Results", id="results"):
                with gr.Row():
                    results_dir = gr.Textbox(cfg.results_dir, label="eval.davis output folder", scale=3)
                    results_root = gr.Textbox(cfg.davis_root, label="DAVIS root (ground truth)", scale=3)
                    results_button = gr.Button("Open", variant="primary", scale=1, elem_id="results-open")
                results_summary = gr.Markdown(elem_id="results-summary")
                with gr.Row():
                    results_table = gr.Dataframe(label="Per-sequence results", interactive=False, max_height=420)
                    results_chart = gr.Plot(label="J&F per sequence", show_label=False)
                with gr.Row():
                    results_sequence = gr.Dropdown(label="Sequence", scale=1)
                    results_frame = gr.Slider(0, 1, value=1, step=1, label="Frame", scale=3)
                frame_chart = gr.Plot(label="Per-frame scores", show_label=False)
                compare_note = gr.Markdown()
                with gr.Row():
                    gt_view = gr.Image(label="Ground truth", interactive=False, elem_id="results-gt")
                    pred_view = gr.Image(label="Prediction", interactive=False, elem_id="results-pred")
            with gr.Tab("Training", id="training"):
                with gr.Row():
                    train_dir = gr.Textbox(cfg.train_dir, label="python -m train output folder", scale=4)
                    train_button = gr.Button("Open", variant="primary", scale=1, elem_id="training-open")
                train_summary = gr.Markdown(elem_id="training-summary")
                curves = gr.Plot(label="Training curves", show_label=False)
                with gr.Row():
                    checkpoint_table = gr.Dataframe(label="Checkpoints", interactive=False, scale=3)
                    with gr.Column(scale=2):
                        checkpoint = gr.Dropdown(label="Checkpoint")
                        use_button = gr.Button("Use in the Attention tab", elem_id="use-checkpoint")

        demo.load(bind(check_weights, cfg=cfg), weights, banner)
        weights.change(bind(check_weights, cfg=cfg), weights, banner)
        upload_weights.upload(bind(add_uploaded_weights, cfg=cfg), upload_weights, [weights, banner])

        attention_inputs = [image, weights, image_size, threshold]
        attention_outputs = [heat_gallery, mask_gallery, downloads, attention_note]
        run_button.click(bind(run_attention, cfg=cfg), attention_inputs, attention_outputs,
                         concurrency_id="model")
        # The threshold re-uses the cached attention, so every change (drag or typed value) may refresh;
        # a new image size needs a forward pass, so only the end of a drag (or the button) recomputes.
        threshold.change(bind(refresh_attention, cfg=cfg), attention_inputs, attention_outputs,
                         concurrency_id="model", trigger_mode="always_last")
        image_size.release(bind(refresh_attention, cfg=cfg), attention_inputs, attention_outputs,
                           concurrency_id="model")

        demo.load(list_davis, root, sequence)
        root.submit(list_davis, root, sequence)
        sequence.change(davis_first_frame, [root, sequence], first)
        source.change(switch_video_source, source, [davis_group, upload_group])
        video_in.change(video_first_frame, video_in, [drawing, draw_hint])
        # Propagation is the slow job: one at a time, in its own queue, so attention requests still run.
        video_button.click(bind(run_video, cfg=cfg),
                           [source, root, sequence, video_in, mask_in, drawing, weights, max_frames, short_side],
                           [video_out, frame_paths, frame_index, frame_view, video_note],
                           concurrency_limit=1, concurrency_id="video")
        frame_index.change(show_frame, [frame_paths, frame_index], frame_view)

        results_button.click(open_results, results_dir,
                             [results_summary, results_table, results_chart, results_sequence])
        compare_inputs = [results_dir, results_root, results_sequence, results_frame]
        # .then: the frame slider may keep its value for a new sequence, and then fires no change event.
        results_sequence.change(sequence_scores, [results_dir, results_root, results_sequence],
                                [frame_chart, results_frame]).then(compare_frame, compare_inputs,
                                                                   [gt_view, pred_view, compare_note])
        results_frame.release(compare_frame, compare_inputs, [gt_view, pred_view, compare_note])

        train_button.click(open_training_run, train_dir, [train_summary, curves, checkpoint_table, checkpoint])
        use_button.click(bind(use_checkpoint, cfg=cfg), checkpoint, [weights, tabs, banner])
    return demo


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python app.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pretrained_weights", default="dino_vits16",
                        help=f"Preset ({', '.join(PRESETS)}), path to a DINO file or `python -m train` checkpoint, "
                             "or 'random' (pipeline check only). Unavailable weights show a banner, not an error.")
    parser.add_argument("--arch", default=None, choices=ARCHS,
                        help="Architecture of random weights; checked against --pretrained_weights when given.")
    parser.add_argument("--patch_size", default=None, type=int, help="Patch size, as --arch.")
    parser.add_argument("--davis_root", default=str(BUNDLED_DAVIS),
                        help="DAVIS root for the Video and Results tabs; the default is the bundled 12-frame example.")
    parser.add_argument("--results_dir", default="", help="A `python -m eval.davis` output folder to open in the Results tab.")
    parser.add_argument("--train_dir", default="", help="A `python -m train` output folder to open in the Training tab.")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0 for every interface).")
    parser.add_argument("--port", default=7860, type=int, help="Port to serve on.")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link (needs internet).")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # gradio closes its server on it, and atexit then removes the scratch folder


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    weights = RANDOM_WEIGHTS if args.pretrained_weights == "random" else args.pretrained_weights
    cfg = AppConfig(weights=weights, arch=args.arch, patch_size=args.patch_size, davis_root=args.davis_root,
                    results_dir=args.results_dir, train_dir=args.train_dir, device=str(device))
    try:  # load once at start-up so the first request is fast; a failure only shows in the banner
        print(f"weights: {get_model(weights, cfg)[1]} on {device}")
    except WeightsError as err:
        print(f"warning: {_one_line(err)} (the page shows how to fix this)", file=sys.stderr)
    demo = build_demo(cfg)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the app as Ctrl-C does, leaving no temporary files
    allowed = [str(ASSETS)] + [p for p in example_images() if not p.startswith(str(ASSETS))]
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=args.host, server_port=args.port, share=args.share, show_error=True, ssr_mode=False,
        allowed_paths=allowed, theme=THEME, css=CSS, footer_links=["gradio", "settings"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

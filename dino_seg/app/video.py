"""The Video tab: label propagation of a first-frame mask (given, or discovered), or the attention video
(video_generation.py), of a DAVIS sequence or an uploaded video."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
from PIL import Image
from torch import nn

from dino_seg import davis, metrics
from dino_seg.groundtruth import load_mask
from dino_seg.images import load_image
from dino_seg.pairing import discovered_labels
from dino_seg.propagation import segment_sequence
from dino_seg.propagation_v3 import TrackingConfig, segment_sequence_v3
from dino_seg.video import DEFAULT_FPS, read_video_frames, video_info, write_video
from dino_seg.video_attention import MASK_MODES, folder_frames, make_attention_video, video_frames
from dino_seg.viz import overlay_labels

from .components import FrameSlider, ImageView, Radio, Slider, clears_errors
from .config import BUNDLED_DAVIS, AppConfig
from .errors import friendly
from .attention import DEFAULT_METHOD, DEFAULT_THRESHOLD, DISCOVERY_METHODS, discovery_settings
from .jobs import check_open
from .model_cache import model_or_error
from .paths import check_path, check_sequence
from .scratch import SCRATCH
from .shared import Shared

MAX_VIDEO_FRAMES = 60  # ViT-S/16 at a 480 short side takes about 3 s a frame on a 2-core CPU
VIDEO_SHORT_SIDES = (240, 360, 480, 720, 960)  # 480 is DINO's reference, 960 DINOv3's; smaller is faster on CPU
# eval.davis --protocol: dino (the reference's propagation, any backbone) or dinov3 (DINOv3's segmentation_tracking
# notebook), each with the short side it is published at.
PROTOCOLS = {"dino": 480, "dinov3": 960}
DAVIS_SOURCE = "DAVIS sequence"
UPLOAD_SOURCE = "Uploaded video"
PROPAGATION_MODE = "Propagated labels"
ATTENTION_MODE = "Attention video"
GIVEN, DISCOVERED = "given", "discovered"  # where the first-frame mask comes from


def davis_root(root: str | None, cfg: AppConfig) -> str:
    """The DAVIS root a person typed (the bundled example when empty), if the page may open it."""
    return check_path((root or "").strip() or str(BUNDLED_DAVIS), cfg, "DAVIS root")


@friendly
def list_davis(root: str | None, cfg: AppConfig) -> dict:
    """Sequence choices of a DAVIS root (the first one selected)."""
    names = davis.list_sequences(davis_root(root, cfg))
    return gr.update(choices=names, value=names[0])


@friendly
def davis_first_frame(root: str | None, sequence: str | None, cfg: AppConfig) -> np.ndarray | None:
    """The first frame of a sequence with its first annotation overlaid (what propagation starts from)."""
    if not sequence:
        return None
    root = davis_root(root, cfg)
    sequence = check_sequence(root, sequence, cfg)
    frames = davis.frame_paths(root, sequence)
    image = np.asarray(load_image(frames[0]))
    gt = davis.annotation_dir(root, sequence) / f"{frames[0].stem}.png"
    if gt.is_file():
        return overlay_labels(image, davis.read_annotation(gt))
    return image


@friendly
def video_first_frame(video_path: str | None, cfg: AppConfig) -> tuple[np.ndarray | None, str]:
    """The first frame of an uploaded video, to draw the first-frame mask on, and what to do next."""
    if not video_path:
        return None, ""
    check_path(video_path, cfg, "video")  # an API call may name any server file, not only uploads
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


def _truncation_notes(video_path: str | Path, frames: list[Path], max_frames: int, notes: list[str]) -> list[str]:
    """The reader's notes, saying how many frames could be read when a file ends before the frame count its
    header announces (a truncated upload): the reader's "only the first N of M frames (cap C)" would blame the
    cap for frames that do not exist."""
    if len(frames) >= max_frames:
        return notes
    capture = cv2.VideoCapture(str(video_path))
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    capture.release()
    if announced <= len(frames):
        return notes
    return [n for n in notes if not n.startswith("only the first")] + [
        f"only {len(frames)} of the {announced} frames its header announces could be read: the file "
        f"{Path(video_path).name} is truncated or damaged"]


def run_scores(results_dir: Path, root: str | Path, sequence: str,
               frames: list[Path]) -> metrics.DavisScores | None:
    """J&F of the propagated frames with davis2017-evaluation's rules, as if the sequence ended with them;
    None when fewer than 3 frames were run or the ground truth does not hold exactly these frames first."""
    gts = davis.annotation_paths(root, sequence)[:len(frames)]
    if len(frames) < 3 or [p.stem for p in gts] != [f.stem for f in frames]:
        return None
    return metrics.summarise([metrics.score_sequence(results_dir, root, sequence, frames=len(frames))])


@dataclass
class Clip:
    """The frames a propagation runs on and where its first-frame labels come from."""

    name: str  # the sequence's or the upload's name: the results folder and the video's file name
    frames: list[Path]
    labels: np.ndarray | None  # (H, W) object ids of the first frame; None: discovered
    fps: float
    notes: list[str]
    scores_root: str | None = None  # the DAVIS root whose ground truth scores the run; None for uploads


def _upload_clip(video_path: str | None, mask_path: str | None, drawing: dict | None, work: Path,
                 max_frames: int, discovered: bool, cfg: AppConfig) -> Clip:
    """An uploaded video's frames (decoded into `work`) and its first-frame mask: uploaded, drawn or discovered."""
    if not video_path:
        raise gr.Error("Upload a video file first (or pick a DAVIS sequence).")
    check_path(video_path, cfg, "video")  # API calls may name any server file
    if mask_path:
        check_path(mask_path, cfg, "mask")
    frames, fps, notes = read_video_frames(video_path, work / "frames", max_frames)
    notes = _truncation_notes(video_path, frames, max_frames, notes)
    if discovered:
        return Clip(Path(video_path).stem, frames, None, fps, notes)
    if mask_path:
        labels, what = mask_from_file(mask_path), "uploaded mask"
    else:
        labels, what = mask_from_drawing(drawing), "drawn mask"
        if labels is None:
            raise gr.Error("Give the first frame's mask: upload a mask image or draw on the first frame.")
    labels, fit_notes = _fit_mask(labels, davis.image_size(frames[0]), what)
    return Clip(Path(video_path).stem, frames, labels, fps, notes + fit_notes)


def _davis_clip(root: str | None, sequence: str | None, max_frames: int, cfg: AppConfig) -> Clip:
    """A DAVIS sequence's first `max_frames` frames and its first annotation (which scores the run)."""
    root = davis_root(root, cfg)
    if not sequence:
        raise gr.Error("Pick a DAVIS sequence.")
    sequence = check_sequence(root, sequence, cfg)
    all_frames = davis.frame_paths(root, sequence)
    frames = all_frames[:max_frames]
    notes = []
    if len(all_frames) > len(frames):
        notes.append(f"only the first {len(frames)} of {len(all_frames)} frames are used (cap {max_frames})")
    labels = davis.read_annotation(davis.annotation_dir(root, sequence) / f"{frames[0].stem}.png")
    return Clip(sequence, frames, labels, DEFAULT_FPS, notes, scores_root=root)


def discover_first_frame(model: nn.Module, clip: Clip, method: str, short_side: int) -> tuple[np.ndarray, str]:
    """The first frame's objects found by `method` with the Attention tab's settings (its defaults: the mean
    map, a 0.6 mass share, the command line's tau), at the propagation's short side; on DAVIS paired with the
    annotated objects by IoU so that J&F can be scored. (labels, note)."""
    settings = discovery_settings(method)
    labels = discovered_labels(model, load_image(clip.frames[0]), clip.labels, resize=short_side, **settings)
    tau = f"tau {settings['tau']:.2f}, " if settings["tau"] is not None else ""
    note = (f"first-frame objects discovered by {method} ({tau}at a {short_side}-pixel short side)" +
            (", paired with the annotated ones by IoU for J&F" if clip.scores_root else ""))
    return labels, note


def write_overlays(work: Path, clip: Clip, masks: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """Each frame's labels as a DAVIS palette PNG (work/results/<name>, as eval.davis saves them) and overlaid
    on the frame as a JPEG for the frame slider: (overlaid frames, JPEG paths)."""
    results = work / "results" / clip.name
    (work / "overlay").mkdir(exist_ok=True)
    overlaid, paths = [], []
    for i, (frame, mask) in enumerate(zip(clip.frames, masks)):
        davis.write_indexed_png(results / f"{frame.stem}.png", np.where(mask == davis.VOID_LABEL, 0, mask))
        image = overlay_labels(np.asarray(load_image(frame)), mask)
        overlaid.append(image)
        path = work / "overlay" / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=92)
        paths.append(str(path))
    return overlaid, paths


def propagation_summary(work: Path, clip: Clip, description: str, labels: np.ndarray, short_side: int,
                        protocol: str = "dino") -> list[str]:
    """The summary's lines: what ran, J&F when the ground truth covers the frames, and the notes."""
    lines = [f"**{description}** · protocol {protocol} · {len(clip.frames)} frames · short side {short_side} px · "
             f"{davis.num_objects(labels)} object(s)"]
    scores = run_scores(work / "results", clip.scores_root, clip.name, clip.frames) if clip.scores_root else None
    if scores is not None:
        g = scores.global_scores
        lines.append(f"\n**J&F {g['J&F-Mean']:.3f}** (J {g['J-Mean']:.3f}, F {g['F-Mean']:.3f}) over frames "
                     f"1–{len(clip.frames) - 2} (first and last excluded, as DAVIS scores)")
    elif clip.scores_root:
        lines.append("\nno J&F: the ground truth of these frames is incomplete (or fewer than 3 frames)")
    if short_side != PROTOCOLS[protocol]:
        lines.append(f"- note: frames resized to a {short_side}-pixel short side (the {protocol} protocol uses "
                     f"{PROTOCOLS[protocol]}): scores differ from the published ones")
    return lines + [f"- note: {n}" for n in clip.notes]


def propagate_labels(model: nn.Module, frames: list[Path], labels: np.ndarray, protocol: str, short_side: int,
                     device: str) -> Any:
    """(frame index, labels) of frames 1.. under `protocol`, called exactly as eval.davis calls the library with
    its default settings (first frame + 7 previous frames, top-5, 12-patch neighbourhood)."""
    if protocol == "dinov3":
        return segment_sequence_v3(model, frames, labels, TrackingConfig(short_side=short_side))
    return segment_sequence(model, frames, labels, device=device, short_side=short_side)


@friendly
def run_video(source: str, root: str | None, sequence: str | None, video_path: str | None,
              mask_path: str | None, drawing: dict | None, weights: str | None, max_frames: float,
              short_side: float, cfg: AppConfig, first_mask: str = GIVEN, first_method: str = DEFAULT_METHOD,
              progress: gr.Progress = gr.Progress(), protocol: str = "dino"
              ) -> tuple[str | None, list[str], dict, np.ndarray | str, str]:
    """Propagate the first frame's labels through the frames: (video file, overlaid frame files,
    frame slider update, first overlaid frame (or the GIF when no video codec), summary Markdown with J&F
    when ground truth exists). With `first_mask` "discovered", `first_method` finds the first-frame objects
    (no mask needed; on DAVIS the annotation only pairs them with the annotated objects for J&F). `protocol` is
    eval.davis --protocol: dino (the reference's propagation) or dinov3 (DINOv3's tracking notebook)."""
    if protocol not in PROTOCOLS:
        raise gr.Error(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    discovered = first_mask == DISCOVERED
    max_frames = max(2, min(int(max_frames), MAX_VIDEO_FRAMES))
    short_side = int(short_side)
    if discovered:
        discovery_settings(first_method)  # an unknown method is refused before any work
    with SCRATCH.job("video") as work:  # never deleted while the frames are propagated
        if source == UPLOAD_SOURCE:
            clip = _upload_clip(video_path, mask_path, drawing, work, max_frames, discovered, cfg)
        else:
            clip = _davis_clip(root, sequence, max_frames, cfg)
        if len(clip.frames) < 2:
            raise gr.Error("The video has a single frame: propagation needs at least two.")
        model, description = model_or_error(None if not weights else weights, cfg)
        labels = clip.labels
        if discovered:
            labels, note = discover_first_frame(model, clip, first_method, short_side)
            clip.notes.append(note)
        if davis.num_objects(labels) == 0:
            raise gr.Error("The first-frame mask is empty: it must mark at least one object." +
                           (" Discovery found no object (paired with the annotation)." if discovered else ""))
        progress(0, desc="computing features")
        masks = [labels.astype(np.uint8)]
        steps = propagate_labels(model, clip.frames, labels, protocol, short_side, cfg.device)
        for _, mask in progress.tqdm(steps, total=len(clip.frames) - 1, desc="propagating", unit="frame"):
            masks.append(mask)
            check_open()  # a shutdown stops the job between two frames
        overlaid, paths = write_overlays(work, clip, masks)
        video = write_video(overlaid, work / f"{clip.name}_propagated", clip.fps)
        lines = propagation_summary(work, clip, description, labels, short_side, protocol)
    slider = gr.update(minimum=0, maximum=len(paths) - 1, value=0, step=1, interactive=True)
    if video.suffix == ".gif":
        # A video player cannot show a GIF, an image can: it animates in the frame view until the slider moves.
        lines.append("- note: this OpenCV build writes no browser-playable video codec: the animated GIF is "
                     "in the frame view")
        return None, paths, slider, str(video), "\n".join(lines)
    return str(video), paths, slider, overlaid[0], "\n".join(lines)


NO_MASKS = "none"
MASK_CHOICES = [("no masks", NO_MASKS), ("mask of the mean map", "mean"), ("one mask per head", "heads")]


@friendly
def run_attention_video(source: str, root: str | None, sequence: str | None, video_path: str | None,
                        weights: str | None, max_frames: float, short_side: float, masks: str | None,
                        threshold: float, cfg: AppConfig,
                        progress: gr.Progress = gr.Progress()) -> tuple[str | None, str | None, str]:
    """The mean [CLS] attention of each frame as a video, as video_generation.py makes it (frames resized to
    `short_side`), and with `masks` ("mean" or "heads") the masks keeping `threshold` of the attention mass
    over the frames: (attention video, masks video or None, summary Markdown)."""
    cap = max(1, min(int(max_frames), MAX_VIDEO_FRAMES))
    short_side = int(short_side)
    masks = None if masks in (None, "", NO_MASKS) else masks
    if masks is not None and masks not in MASK_MODES:
        raise gr.Error(f"masks: expected one of {NO_MASKS}, {', '.join(MASK_MODES)}; got {masks!r}")
    notes: list[str] = []
    if source == UPLOAD_SOURCE:
        if not video_path:
            raise gr.Error("Upload a video file first (or pick a DAVIS sequence).")
        check_path(video_path, cfg, "video")  # an API call may name any server file, not only uploads
        name = Path(video_path).stem
        fps, total = video_info(video_path, name=Path(video_path).name)  # uploads live under long server paths
        frames = video_frames(video_path, max_frames=cap, name=Path(video_path).name)
        expected = min(cap, total) if total else cap
    elif source == DAVIS_SOURCE:
        root = davis_root(root, cfg)
        if not sequence:
            raise gr.Error("Pick a DAVIS sequence.")
        sequence = check_sequence(root, sequence, cfg)
        paths = davis.frame_paths(root, sequence)
        if len(paths) > cap:
            notes.append(f"only the first {cap} of {len(paths)} frames are used (cap {cap})")
        frames, fps, name, total = folder_frames(paths[:cap]), DEFAULT_FPS, sequence, 0
        expected = min(cap, len(paths))
    else:
        raise gr.Error(f"source: expected {DAVIS_SOURCE!r} or {UPLOAD_SOURCE!r}, got {source!r}")

    model, description = model_or_error(None if not weights else weights, cfg)
    progress((0, expected), desc="attention", unit="frame")
    done = [0]

    def tick(_frame) -> None:
        done[0] += 1
        progress((done[0], expected), desc="attention", unit="frame")
        check_open()  # a shutdown stops the job between two frames

    with SCRATCH.job("attention-video") as work:  # never deleted while the frames are written
        result = make_attention_video(model, frames, work / f"{name}_attention", fps, resize=[short_side],
                                      batch_size=4, masks=masks, threshold=float(threshold),
                                      masks_stem=work / f"{name}_attention_masks", on_frame=tick)
    if source == UPLOAD_SOURCE:
        if total > cap:
            notes.append(f"only the first {cap} of {total} frames are used (cap {cap})")
        elif result.frames < expected:
            notes.append(f"only {result.frames} of the {total} frames its header announces could be decoded")
    lines = [f"**{description}** · {result.frames} frames · short side {short_side} px · "
             f"mean [CLS] attention of the heads, inferno colour map (video_generation.py's)"]
    if masks is not None:
        lines.append(f"- masks: {'the mean map' if masks == 'mean' else 'one per head, in palette colours'}, "
                     f"keeping {float(threshold):g} of the attention mass")
    lines += [f"- note: {n}" for n in notes]
    if result.fourcc == "GIF":
        lines.append("- note: this OpenCV build writes no browser-playable video codec (only an animated GIF), "
                     "so there is no video to show")
        return None, None, "\n".join(lines)
    return str(result.video), (str(result.masks_video) if result.masks_video else None), "\n".join(lines)


@friendly
def show_frame(paths: list[str] | None, index: float) -> str | None:
    """The overlaid frame at the slider's position (its folder counts as used, so it is kept while a person
    browses the frames)."""
    if not paths:
        return None
    path = paths[max(0, min(int(index), len(paths) - 1))]
    if not SCRATCH.touch(path) or not Path(path).is_file():
        raise gr.Error("The frames of this propagation were removed (unused for a long time): propagate again.")
    return path


def protocol_short_side(protocol: str) -> dict:
    """A new propagation protocol sets the short side to the one it is published at."""
    return gr.update(value=PROTOCOLS[protocol]) if protocol in PROTOCOLS else gr.update()


def switch_video_source(source: str) -> tuple[dict, dict]:
    """Show the DAVIS controls or the upload controls."""
    return gr.update(visible=source == DAVIS_SOURCE), gr.update(visible=source == UPLOAD_SOURCE)


def switch_video_mode(mode: str) -> tuple[dict, ...]:
    """Show propagation's inputs, button and outputs, or the attention video's: (first-frame mask inputs,
    first-frame mask choice (given or discovered), Propagate button, propagation outputs, attention options,
    attention button, attention outputs)."""
    labels = mode != ATTENTION_MODE
    return tuple(gr.update(visible=v) for v in (labels,) * 4 + (not labels,) * 3)


def _source_inputs(cfg: AppConfig) -> dict[str, Any]:
    """Where the frames come from: a DAVIS root and sequence (with the first frame's preview), or an uploaded
    video with its first-frame mask (uploaded or drawn)."""
    c: dict[str, Any] = {}
    c["mode"] = Radio([PROPAGATION_MODE, ATTENTION_MODE], value=PROPAGATION_MODE, label="Make",
                      elem_id="video-mode")
    c["source"] = Radio([DAVIS_SOURCE, UPLOAD_SOURCE], value=DAVIS_SOURCE, label="Frames")
    with gr.Group(visible=True) as c["davis_group"]:
        c["root"] = gr.Textbox(cfg.davis_root, label="DAVIS root",
                               info="JPEGImages/480p and Annotations/480p (bundled: 12 frames of blackswan)")
        # Any name is accepted: the choices are set per root in a session, and an API call that names a
        # sequence must not depend on /list_davis having run first.
        c["sequence"] = gr.Dropdown(label="Sequence", allow_custom_value=True, elem_id="video-sequence")
        c["first"] = ImageView(label="First frame and its annotation", interactive=False, height=240,
                               elem_id="video-first")
    with gr.Group(visible=False) as c["upload_group"]:
        c["video_in"] = gr.Video(label="Video file", sources=["upload"], height=240, elem_id="video-in")
        with gr.Column(visible=True) as c["mask_inputs"]:
            c["mask_in"] = gr.File(label="First-frame mask (PNG; palette or black/white)", file_types=["image"],
                                   elem_id="video-mask")
            c["draw_hint"] = gr.Markdown(elem_id="video-draw-hint")
            c["drawing"] = gr.ImageEditor(label="…or draw the object on the first frame", type="numpy", sources=[],
                                          height=300, layers=False,
                                          brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"),
                                          elem_id="video-draw")
    return c


def _run_options() -> dict[str, Any]:
    """The frame cap and size, the attention video's masks, the first-frame mask's origin, and the two buttons."""
    c: dict[str, Any] = {}
    c["max_frames"] = Slider(2, MAX_VIDEO_FRAMES, value=12, step=1, label="Frames",
                             info=f"Capped at {MAX_VIDEO_FRAMES}: a few seconds a frame on a CPU at 480 px",
                             elem_id="video-frames")
    c["short_side"] = Radio(list(VIDEO_SHORT_SIDES), value=480, label="Short side (px)",
                            info="480 as DINO's reference, 960 as DINOv3's; smaller is faster",
                            elem_id="video-short-side")
    with gr.Column(visible=False) as c["attention_options"]:
        c["attention_masks"] = Radio(MASK_CHOICES, value="mean", label="Masks video",
                                     info="The masks keeping a share of the attention mass, with contours",
                                     elem_id="video-attention-masks-mode")
        c["threshold"] = Slider(0.05, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Share of the attention mass",
                                info="0.6 as the paper", elem_id="video-attention-threshold")
    with gr.Column(visible=True) as c["first_mask_options"]:  # propagation only: the protocol, the first mask
        c["protocol"] = Radio(list(PROTOCOLS), value="dino", label="Propagation protocol",
                              info="dino: the reference's (any backbone, 480 px); dinov3: DINOv3's tracking notebook "
                                   "(960 px, both sides rounded up to the patch), as eval.davis --protocol",
                              elem_id="video-protocol")
        with gr.Row():
            c["first_mask"] = Radio([GIVEN, DISCOVERED], value=GIVEN, label="First-frame mask",
                                    info="given: the annotation, uploaded or drawn; discovered: found by a method "
                                         "with the Attention tab's default settings", elem_id="video-first-mask")
            c["first_method"] = gr.Dropdown(list(DISCOVERY_METHODS), value=DEFAULT_METHOD, label="Discovery method",
                                            elem_id="video-first-method")
    c["run"] = gr.Button("Propagate", variant="primary", elem_id="video-run")
    c["attention_run"] = gr.Button("Make the attention video", variant="primary", visible=False,
                                   elem_id="video-attention-run")
    return c


def _outputs() -> dict[str, Any]:
    """Propagation's video, frame slider and frame view, or the attention and masks videos."""
    c: dict[str, Any] = {}
    with gr.Column(visible=True) as c["propagation_outputs"]:
        c["note"] = gr.Markdown(elem_id="video-note")
        c["video_out"] = gr.Video(label="Propagated labels", autoplay=True, loop=True, interactive=False, height=360,
                                  elem_id="video-out")
        c["frame_index"] = FrameSlider(0, 1, value=0, step=1, label="Frame", interactive=False)
        c["frame_view"] = ImageView(label="Frame", interactive=False, height=360, elem_id="video-frame")
        c["frame_paths"] = gr.State([])
    with gr.Column(visible=False) as c["attention_outputs"]:
        c["attention_note"] = gr.Markdown(elem_id="video-attention-note")
        c["attention_out"] = gr.Video(label="Attention (mean of the heads' [CLS] attention)", autoplay=True,
                                      loop=True, interactive=False, height=360, elem_id="video-attention-out")
        c["attention_masks_out"] = gr.Video(label="Masks", autoplay=True, loop=True, interactive=False, height=360,
                                            elem_id="video-attention-masks")
    return c


def _wire(c: dict[str, Any], cfg: AppConfig, shared: Shared) -> None:
    """The tab's events on its components `c`."""
    listing = functools.partial(list_davis, cfg=cfg)
    shared.demo.load(listing, c["root"], c["sequence"], api_name="load_davis",
                     api_visibility="private")  # = /list_davis
    first_frame = functools.partial(davis_first_frame, cfg=cfg)
    # A new root whose first sequence has the old one's name leaves the dropdown's value as it was, so no change
    # event would follow: the preview is redrawn after every listing.
    c["root"].submit(listing, c["root"], c["sequence"], api_name="list_davis").success(
        first_frame, [c["root"], c["sequence"]], c["first"], api_name="root_first_frame", api_visibility="private")
    c["sequence"].change(first_frame, [c["root"], c["sequence"]], c["first"], api_name="davis_first_frame")
    c["source"].change(switch_video_source, c["source"], [c["davis_group"], c["upload_group"]],
                       api_name="switch_video_source")
    c["mode"].change(switch_video_mode, c["mode"],
                     [c[k] for k in ("mask_inputs", "first_mask_options", "run", "propagation_outputs",
                                     "attention_options", "attention_run", "attention_outputs")],
                     api_name="switch_video_mode")
    c["video_in"].change(functools.partial(video_first_frame, cfg=cfg), c["video_in"], [c["drawing"], c["draw_hint"]],
                         api_name="video_first_frame")

    def propagate(source, root, sequence, video_in, mask_in, drawing, weights, max_frames, short_side, first_mask,
                  first_method, protocol, progress=gr.Progress()):
        return run_video(source, root, sequence, video_in, mask_in, drawing, weights, max_frames, short_side, cfg,
                         first_mask, first_method, progress, protocol)

    # A protocol starts from its own short side (dino 480, dinov3 960); the person may then pick another.
    c["protocol"].change(protocol_short_side, c["protocol"], c["short_side"], api_name="protocol_short_side",
                         api_visibility="private")

    # Propagation is the slow job: one at a time, in its own queue, so attention requests still run.
    clears_errors(c["run"].click(
        propagate, [c["source"], c["root"], c["sequence"], c["video_in"], c["mask_in"], c["drawing"], shared.weights,
                    c["max_frames"], c["short_side"], c["first_mask"], c["first_method"], c["protocol"]],
        [c["video_out"], c["frame_paths"], c["frame_index"], c["frame_view"], c["note"]],
        concurrency_limit=1, concurrency_id="video", api_name="propagate"))
    # The attention video shares propagation's queue: both are the tab's slow jobs.
    clears_errors(c["attention_run"].click(
        functools.partial(run_attention_video, cfg=cfg),
        [c["source"], c["root"], c["sequence"], c["video_in"], shared.weights, c["max_frames"], c["short_side"],
         c["attention_masks"], c["threshold"]],
        [c["attention_out"], c["attention_masks_out"], c["attention_note"]],
        concurrency_limit=1, concurrency_id="video", api_name="attention_video"))
    c["frame_index"].change(show_frame, [c["frame_paths"], c["frame_index"]], c["frame_view"], api_name="show_frame")


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Video tab's components and events (endpoints /list_davis, /davis_first_frame, /video_first_frame,
    /propagate, /attention_video, /show_frame, /switch_video_source, /switch_video_mode)."""
    with gr.Tab("Video", id="video"):
        with gr.Row():
            with gr.Column(scale=2):
                c = _source_inputs(cfg) | _run_options()
            with gr.Column(scale=3):
                c |= _outputs()
    _wire(c, cfg, shared)
    hidden = ("davis_group", "upload_group", "mask_inputs", "draw_hint", "attention_options", "first_mask_options",
              "propagation_outputs", "attention_outputs")
    return {name: component for name, component in c.items() if name not in hidden}

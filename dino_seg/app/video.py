"""The Video tab: label propagation of a first-frame mask (given, or discovered) through a DAVIS sequence or an
uploaded video."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from dino_seg import davis, metrics
from dino_seg.discovery import discovered_labels
from dino_seg.images import load_image, load_mask
from dino_seg.propagation import segment_sequence
from dino_seg.video import read_video_frames, write_video
from dino_seg.viz import overlay_labels

from .components import FrameSlider
from .config import BUNDLED_DAVIS, AppConfig
from .errors import friendly
from .attention import DISCOVERY_METHODS
from .model_cache import model_or_error
from .scratch import SCRATCH
from .shared import Shared

MAX_VIDEO_FRAMES = 60  # ViT-S/16 at a 480 short side takes about 3 s a frame on a 2-core CPU
VIDEO_SHORT_SIDES = (240, 360, 480)  # 480 is the reference; smaller is faster on CPU
DAVIS_SOURCE = "DAVIS sequence"
UPLOAD_SOURCE = "Uploaded video"
GIVEN, DISCOVERED = "given", "discovered"  # where the first-frame mask comes from


def _davis_root(root: str | None) -> str:
    return (root or "").strip() or str(BUNDLED_DAVIS)


@friendly
def list_davis(root: str | None) -> dict:
    """Sequence choices of a DAVIS root (the first one selected)."""
    names = davis.list_sequences(_davis_root(root))
    return gr.update(choices=names, value=names[0])


@friendly
def davis_first_frame(root: str | None, sequence: str | None) -> np.ndarray | None:
    """The first frame of a sequence with its first annotation overlaid (what propagation starts from)."""
    if not sequence:
        return None
    root = _davis_root(root)
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
              short_side: float, cfg: AppConfig, first_mask: str = "given", first_method: str = "TokenCut",
              progress: gr.Progress = gr.Progress()) -> tuple[str | None, list[str], dict, np.ndarray | str, str]:
    """Propagate the first frame's labels through the frames: (video file, overlaid frame files,
    frame slider update, first overlaid frame (or the GIF when no video codec), summary Markdown with J&F
    when ground truth exists). With `first_mask` "discovered", `first_method` finds the first-frame objects
    (no mask needed; on DAVIS the annotation only pairs them with the annotated objects for J&F)."""
    discovered = first_mask == DISCOVERED
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
        if discovered:
            labels, what = None, "discovered mask"
        elif mask_path:
            labels = mask_from_file(mask_path)
            what = "uploaded mask"
        else:
            labels = mask_from_drawing(drawing)
            what = "drawn mask"
            if labels is None:
                raise gr.Error("Give the first frame's mask: upload a mask image or draw on the first frame.")
        if labels is not None:
            labels, fit_notes = _fit_mask(labels, (fh, fw), what)
            notes += fit_notes
        root_for_scores = None
    else:
        root = _davis_root(root)
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
    if len(frames) < 2:
        raise gr.Error("The video has a single frame: propagation needs at least two.")
    model, description = model_or_error(None if not weights else weights, cfg)
    if discovered:
        if first_method not in DISCOVERY_METHODS:
            raise gr.Error(f"Unknown method {first_method!r}: pick one of {', '.join(DISCOVERY_METHODS)}.")
        labels = discovered_labels(model, load_image(frames[0]), labels, DISCOVERY_METHODS[first_method])
        notes.append(f"first-frame objects discovered by {first_method}" +
                     (", paired with the annotated ones by IoU for J&F" if root_for_scores else ""))
    if davis.num_objects(labels) == 0:
        raise gr.Error("The first-frame mask is empty: it must mark at least one object." +
                       (" Discovery found no object (paired with the annotation)." if discovered else ""))
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


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Video tab's components and events (endpoints /list_davis, /davis_first_frame, /video_first_frame,
    /propagate, /show_frame, /switch_video_source)."""
    with gr.Tab("Video", id="video"):
        with gr.Row():
            with gr.Column(scale=2):
                source = gr.Radio([DAVIS_SOURCE, UPLOAD_SOURCE], value=DAVIS_SOURCE, label="Frames")
                with gr.Group(visible=True) as davis_group:
                    root = gr.Textbox(cfg.davis_root, label="DAVIS root",
                                      info="JPEGImages/480p and Annotations/480p (bundled: 12 frames of blackswan)")
                    # Any name is accepted: the choices are set per root in a session, and an API call
                    # that names a sequence must not depend on /list_davis having run first.
                    sequence = gr.Dropdown(label="Sequence", allow_custom_value=True, elem_id="video-sequence")
                    first = gr.Image(label="First frame and its annotation", interactive=False, height=240,
                                     elem_id="video-first")
                with gr.Group(visible=False) as upload_group:
                    video_in = gr.Video(label="Video file", sources=["upload"], height=240, elem_id="video-in")
                    mask_in = gr.File(label="First-frame mask (PNG; palette or black/white)", file_types=["image"],
                                      elem_id="video-mask")
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
                with gr.Row():
                    first_mask = gr.Radio([GIVEN, DISCOVERED], value=GIVEN, label="First-frame mask",
                                          info="given: the annotation, uploaded or drawn; discovered: found by a method",
                                          elem_id="video-first-mask")
                    first_method = gr.Dropdown(list(DISCOVERY_METHODS), value="TokenCut", label="Discovery method",
                                               elem_id="video-first-method")
                run_button = gr.Button("Propagate", variant="primary", elem_id="video-run")
            with gr.Column(scale=3):
                note = gr.Markdown(elem_id="video-note")
                video_out = gr.Video(label="Propagated labels", autoplay=True, loop=True, interactive=False,
                                     height=360, elem_id="video-out")
                frame_index = FrameSlider(0, 1, value=0, step=1, label="Frame", interactive=False)
                frame_view = gr.Image(label="Frame", interactive=False, height=360, elem_id="video-frame")
                frame_paths = gr.State([])

    shared.demo.load(list_davis, root, sequence, api_name="load_davis", api_visibility="private")  # = /list_davis
    root.submit(list_davis, root, sequence, api_name="list_davis")
    sequence.change(davis_first_frame, [root, sequence], first, api_name="davis_first_frame")
    source.change(switch_video_source, source, [davis_group, upload_group], api_name="switch_video_source")
    video_in.change(video_first_frame, video_in, [drawing, draw_hint], api_name="video_first_frame")
    # Propagation is the slow job: one at a time, in its own queue, so attention requests still run.
    def propagate(source, root, sequence, video_in, mask_in, drawing, weights, max_frames, short_side, first_mask,
                  first_method, progress=gr.Progress()):
        return run_video(source, root, sequence, video_in, mask_in, drawing, weights, max_frames, short_side, cfg,
                         first_mask, first_method, progress)

    run_button.click(propagate,
                     [source, root, sequence, video_in, mask_in, drawing, shared.weights, max_frames, short_side,
                      first_mask, first_method],
                     [video_out, frame_paths, frame_index, frame_view, note],
                     concurrency_limit=1, concurrency_id="video", api_name="propagate")
    frame_index.change(show_frame, [frame_paths, frame_index], frame_view, api_name="show_frame")
    return {"source": source, "root": root, "sequence": sequence, "first": first, "video_in": video_in,
            "mask_in": mask_in, "drawing": drawing, "max_frames": max_frames, "short_side": short_side,
            "first_mask": first_mask, "first_method": first_method, "run": run_button, "note": note, "video_out": video_out, "frame_index": frame_index,
            "frame_view": frame_view, "frame_paths": frame_paths}

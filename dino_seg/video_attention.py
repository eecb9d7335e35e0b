"""Attention videos (the reference's video_generation.py): every frame's mean [CLS] attention, colour-mapped,
and its thresholded masks, computed in batches on frames streamed from a video file or a folder of JPEGs."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
from matplotlib import cm
from matplotlib import image as mpl_image
from PIL import Image
from torch import nn
from torchvision import transforms

from .attention import cls_attention, threshold_masks, upsample_masks
from .errors import UserError
from .files import atomic_path
from .images import IMAGENET_MEAN, IMAGENET_STD, check_sizes, load_image
from .models import is_vit
from .sharding import check_all_ranks, gather_to_main
from .video import VideoError, VideoWriter, iter_video
from .viz import label_color, overlay_mask

JPEG_SUFFIXES = (".jpg", ".jpeg")
CMAP = "inferno"  # video_generation.py's colour map
MASK_MODES = ("mean", "heads")


@dataclass
class Frame:
    """One input frame: the name its outputs take (attn-<name>.jpg) and its RGB pixels (H, W, 3) uint8."""

    name: str
    rgb: np.ndarray


def jpeg_frames(folder: str | Path) -> list[Path]:
    """The JPEG frames of a folder in name order, as the reference globs `*.jpg`; raises VideoError when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    frames = [p for p in files if p.suffix.lower() in JPEG_SUFFIXES]
    if not frames:
        others = f" (it holds {len(files)} other file(s), e.g. {files[0].name})" if files else ""
        raise VideoError(f"{folder}: no .jpg frames in this folder{others}; expected a video file or a folder "
                         f"of JPEG frames")
    return frames


def folder_frames(paths: Iterable[Path]) -> Iterator[Frame]:
    """Frames read one at a time from image files (ImageError names an unreadable one)."""
    for path in paths:
        yield Frame(Path(path).stem, np.asarray(load_image(path)))


def video_frames(video_path: str | Path, max_frames: int | None = None, name: str | None = None) -> Iterator[Frame]:
    """Frames decoded one at a time from a video file, named frame-NNNN as the reference extracts them."""
    for index, rgb in enumerate(iter_video(video_path, max_frames=max_frames, name=name)):
        yield Frame(f"frame-{index:04d}", rgb)


def saved_frames(frames: Iterable[Frame], folder: Path) -> Iterator[Frame]:
    """`frames`, each written to folder/<name>.jpg as it passes: the reference's frames/ folder of a video (the
    model sees the decoded pixels, not their JPEG copies as in the reference)."""
    for frame in frames:
        save_frame(folder / f"{frame.name}.jpg", frame.rgb)
        yield frame


def video_batches(video_path: str | Path, batch_size: int, frames_dir: Path | None = None) -> Iterator[list[Frame]]:
    """A video's frames decoded in order and cut into batches (consecutive frames of one size, at most
    `batch_size`), each frame also written to `frames_dir` when given. A stream decodes only sequentially, so
    every process of a split run decodes it whole to cut the same batches."""
    frames = video_frames(video_path)
    return _same_size_batches(saved_frames(frames, frames_dir) if frames_dir is not None else frames, batch_size)


def check_resize(resize: Sequence[int], patch_size: int) -> list[int]:
    """--resize as a list of one or two sizes, each at least one patch; UserError otherwise."""
    return check_sizes(resize, "--resize", patch_size)


def preprocess_frames(frames: Sequence[np.ndarray], resize: Sequence[int] | None, patch_size: int,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of one size as the reference prepares them: ToTensor, Resize when asked (one size: the short
    side; two: H W), ImageNet normalisation, crop to whole patches. Returns the normalised batch
    (B, 3, H, W) and the same pixels before normalisation, in [0, 1], to draw on."""
    # ToTensor is uint8 / 255 in float32: done on the device, so only bytes cross to it.
    x = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2).float().div(255)  # (B, 3, H0, W0)
    if resize:
        size = check_resize(resize, patch_size)
        # The reference resizes the tensor (after ToTensor), not the PIL image: bilinear with antialiasing.
        x = transforms.Resize(size if len(size) == 2 else size[0])(x)
    h, w = x.shape[-2] - x.shape[-2] % patch_size, x.shape[-1] - x.shape[-1] % patch_size
    if h == 0 or w == 0:
        raise UserError(f"frames of {frames[0].shape[1]}x{frames[0].shape[0]} are smaller than one "
                         f"{patch_size}-pixel patch")
    x = x[..., :h, :w]
    return transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x), x


def mean_of_heads(maps: np.ndarray) -> np.ndarray:
    """The heads' mean exactly as video_generation.py sums it: sum(attentions[i] * 1 / nh), in float32."""
    heads = maps.shape[0]
    mean = maps[0] * 1 / heads
    for head in maps[1:]:
        mean = mean + head * 1 / heads
    return mean


def colorize(values: np.ndarray, patch_size: int = 1) -> np.ndarray:
    """RGBA uint8 (h*p, w*p, 4) of a map (h, w) upsampled by nearest neighbour, coloured as
    plt.imsave(cmap="inferno") colours it: min-max scaled by matplotlib's own colour mapping. Mapping is
    per pixel, so colouring at patch resolution and then repeating pixels gives the same image, cheaper."""
    rgba = cm.ScalarMappable(cmap=CMAP).to_rgba(np.asarray(values), bytes=True)  # (h, w, 4)
    return np.repeat(np.repeat(rgba, patch_size, axis=0), patch_size, axis=1)


def save_attention_image(path: str | Path, rgba: np.ndarray) -> None:
    """Write a colour-mapped attention image as the reference does (plt.imsave, JPEG), atomically."""
    with atomic_path(path) as tmp:
        mpl_image.imsave(tmp, rgba, format="jpg")


@dataclass
class AttentionFrame:
    """The attention of one frame at patch resolution, and the frame as the model saw it."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8: resized and cropped (H = h * patch)
    maps: np.ndarray  # (heads, h, w) float32 [CLS] -> patch attention
    patch_size: int

    @functools.cached_property
    def mean(self) -> np.ndarray:
        """(h, w) float32: the mean of the heads, as the reference computes it (once: the attention image and
        the mean map's mask both use it)."""
        return mean_of_heads(self.maps)

    def attention_rgba(self) -> np.ndarray:
        """(H, W, 4) uint8: the reference's attention image (before JPEG)."""
        return colorize(self.mean, self.patch_size)

    def mask_overlay(self, threshold: float, mode: str = "mean") -> np.ndarray:
        """(H, W, 3) uint8: the masks keeping `threshold` of the attention mass (the reference's rule) over the
        frame with contours: of the mean map ("mean") or one per head in palette colours ("heads")."""
        if mode not in MASK_MODES:
            raise UserError(f"--masks: expected one of {', '.join(MASK_MODES)}, got {mode!r}")
        maps = torch.from_numpy(self.mean[None] if mode == "mean" else self.maps)  # (maps, h, w)
        masks = upsample_masks(threshold_masks(maps, threshold), self.patch_size).bool().numpy()
        out = self.image
        for j, mask in enumerate(masks):
            out = overlay_mask(out, mask, label_color(j + 1))
        return out


def _same_size_batches(frames: Iterable[Frame], batch_size: int) -> Iterator[list[Frame]]:
    # Consecutive frames of one size, at most batch_size: a folder may mix sizes, a batch cannot.
    batch: list[Frame] = []
    for frame in frames:
        if batch and frame.rgb.shape != batch[0].rgb.shape:
            yield batch
            batch = []
        batch.append(frame)
        if len(batch) == batch_size:  # go now: a full batch never waits for the next frame's decoding
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def attention_frames(model: nn.Module, frames: Iterable[Frame], resize: Sequence[int] | None = None,
                     batch_size: int = 8) -> Iterator[AttentionFrame]:
    """The [CLS] attention of each frame, computed `batch_size` frames at a time as frames arrive: at most one
    batch is in memory, whatever the clip's length."""
    if not is_vit(model):
        raise UserError("attention videos need a ViT backbone; ResNet-50 has no attention")
    if batch_size < 1:
        raise UserError(f"--batch_size: expected at least 1, got {batch_size}")
    device = next(model.parameters()).device
    for batch in _same_size_batches(frames, batch_size):
        x, shown = preprocess_frames([f.rgb for f in batch], resize, model.patch_size, device)
        maps = cls_attention(model, x).float().cpu().numpy()  # (B, heads, h, w)
        images = (shown * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
        for frame, frame_maps, image in zip(batch, maps, images):
            yield AttentionFrame(frame.name, image, frame_maps, model.patch_size)


@dataclass
class AttentionVideo:
    """What make_attention_video wrote."""

    video: Path
    fourcc: str  # the codec of both videos ("GIF" for the fallback)
    frames: int
    masks_video: Path | None = None


BatchSource = Union[list[Frame], Callable[[], list[Frame]]]  # frames, or a function that decodes them


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(H, W) of an image as load_image decodes it (EXIF rotation included), from its header alone; None when
    the header cannot be read (the error comes when the file is decoded)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees on load
                w, h = h, w
    except Exception:  # noqa: BLE001 -- any unreadable header: decoding the file reports it properly
        return None
    return h, w


def _decoded(paths: list[Path]) -> list[Frame]:
    return list(folder_frames(paths))


def folder_batches(paths: Sequence[Path], batch_size: int) -> Iterator[Callable[[], list[Frame]]]:
    """A folder's frames cut into batches from the files' headers, before any frame is decoded: consecutive frames
    of one size, at most `batch_size` (as _same_size_batches cuts decoded frames). Each batch decodes its frames
    when called, so a process of a split run decodes only the frames of its own batches. A file whose header
    cannot be read is a batch of its own."""
    if batch_size < 1:
        raise UserError(f"--batch_size: expected at least 1, got {batch_size}")
    batch: list[Path] = []
    size: tuple[int, int] | None = None
    for path in paths:
        this = header_size(path)
        if batch and (this is None or this != size or len(batch) == batch_size):
            yield functools.partial(_decoded, batch)
            batch = []
        batch.append(path)
        size = this
        if this is None:  # alone: its size is unknown
            yield functools.partial(_decoded, batch)
            batch = []
    if batch:
        yield functools.partial(_decoded, batch)


def sharded_attention_batches(model: nn.Module, batches: Iterable[BatchSource], resize: Sequence[int] | None = None,
                              rank: int = 0, world_size: int = 1) -> Iterator[tuple[AttentionFrame, int, int]]:
    """The attention of `batches` (lists of frames of one size, or functions decoding them) split over the
    processes of a group: every rank gets the same batches, and batch b is computed by rank b % world_size (only
    that rank decodes a batch given as a function). In rounds of world_size batches, the ranks' results are gathered
    on rank 0, which yields (frame, batch index, rank that computed it) in frame order; the other ranks yield
    nothing. Memory stays at one round of batches. A collective: every rank must exhaust it; a failure on any rank
    ends every rank's iteration with an error at the same round (sharding.check_all_ranks)."""
    if not is_vit(model):
        raise UserError("attention videos need a ViT backbone; ResNet-50 has no attention")
    batches = iter(batches)
    first = 0  # index of the round's first batch
    while True:
        round_batches: list[BatchSource] = []
        results: list[AttentionFrame] = []
        error = None
        try:
            # Every rank sees the same batches, so all agree on when the stream ends and on the number of rounds.
            round_batches = list(itertools.islice(batches, world_size))
            mine = round_batches[rank] if rank < len(round_batches) else []
            mine = mine() if callable(mine) else mine
            # A batch is of one size as cut; a header that misstated a frame's size splits it here, alike in
            # any number of processes.
            results = list(attention_frames(model, mine, resize, len(mine))) if mine else []
        except Exception as err:  # noqa: BLE001 -- every rank learns of it below, then each raises
            error = err
        check_all_ranks(error, rank, world_size)
        if not round_batches:
            return
        parts = gather_to_main(results, rank, world_size)
        if parts is not None:
            for part_rank, part in enumerate(parts):
                for result in part:
                    yield result, first + part_rank, part_rank
        first += len(round_batches)


def sharded_attention_frames(model: nn.Module, frames: Iterable[Frame], resize: Sequence[int] | None = None,
                             batch_size: int = 8, rank: int = 0,
                             world_size: int = 1) -> Iterator[tuple[AttentionFrame, int, int]]:
    """attention_frames split over the processes of a group: every rank reads the same frame stream and cuts it
    into the same batches as one process does (so every frame's maps are computed exactly as there); batch b is
    computed by rank b % world_size (see sharded_attention_batches). A collective: every rank must exhaust it."""
    if batch_size < 1:
        raise UserError(f"--batch_size: expected at least 1, got {batch_size}")
    return sharded_attention_batches(model, _same_size_batches(frames, batch_size), resize, rank, world_size)


def write_attention_video(results: Iterable[AttentionFrame], out_stem: str | Path, fps: float, *,
                          codecs: tuple[tuple[str, str], ...] | None = None,
                          attention_dir: str | Path | None = None, masks: str | None = None,
                          threshold: float = 0.6, masks_stem: str | Path | None = None,
                          on_frame: Callable[[AttentionFrame], None] | None = None) -> AttentionVideo:
    """Write the attention video `out_stem`.<suffix> of computed frames `results` (codec as VideoWriter picks
    it; `codecs` overrides), writing attn-<name>.jpg into `attention_dir` when given and, with `masks`
    ("mean" or "heads"), the mask overlays into `masks_stem` (default: out_stem's folder / "masks").
    Videos take their final names only when complete; `on_frame` is called after each frame (progress)."""
    if masks is not None and masks not in MASK_MODES:
        raise UserError(f"--masks: expected one of {', '.join(MASK_MODES)}, got {masks!r}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold: expected a share of the attention mass in [0, 1], got {threshold}")
    out_stem = Path(out_stem)
    attention_dir = Path(attention_dir) if attention_dir is not None else None
    masks_writer = None
    try:
        with VideoWriter(out_stem, fps, codecs) as writer:
            if masks is not None:
                masks_writer = VideoWriter(Path(masks_stem) if masks_stem else out_stem.with_name("masks"), fps,
                                           codecs)
            for result in results:
                rgba = result.attention_rgba()
                if attention_dir is not None:
                    save_attention_image(attention_dir / f"attn-{result.name}.jpg", rgba)
                writer.write(rgba[..., :3])
                if masks_writer is not None:
                    masks_writer.write(result.mask_overlay(threshold, masks))
                if on_frame is not None:
                    on_frame(result)
            if writer.count == 0:
                raise VideoError(f"{out_stem.name}: no frames to write")
        masks_path = masks_writer.close() if masks_writer is not None else None
    except BaseException:
        # Whatever failed, the frames, the main video's close (a full disk) or the masks video's own: the
        # masks writer is released and its temporary file removed (discard after close is harmless).
        if masks_writer is not None:
            masks_writer.discard()
        raise
    return AttentionVideo(writer.path, writer.fourcc, writer.count, masks_path)


def make_attention_video(model: nn.Module, frames: Iterable[Frame], out_stem: str | Path, fps: float, *,
                         resize: Sequence[int] | None = None, batch_size: int = 8,
                         codecs: tuple[tuple[str, str], ...] | None = None,
                         attention_dir: str | Path | None = None, masks: str | None = None,
                         threshold: float = 0.6, masks_stem: str | Path | None = None,
                         on_frame: Callable[[AttentionFrame], None] | None = None) -> AttentionVideo:
    """Stream `frames` through the model into the attention video `out_stem` (see write_attention_video for
    the outputs), `batch_size` frames per forward pass."""
    # The flags are checked before the first frame is decoded or computed.
    if masks is not None and masks not in MASK_MODES:
        raise UserError(f"--masks: expected one of {', '.join(MASK_MODES)}, got {masks!r}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold: expected a share of the attention mass in [0, 1], got {threshold}")
    return write_attention_video(attention_frames(model, frames, resize, batch_size), out_stem, fps, codecs=codecs,
                                 attention_dir=attention_dir, masks=masks, threshold=threshold,
                                 masks_stem=masks_stem, on_frame=on_frame)


def save_frame(path: str | Path, rgb: np.ndarray) -> None:
    """A decoded frame as JPEG, as the reference extracts them (OpenCV's default quality 95), atomically."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")

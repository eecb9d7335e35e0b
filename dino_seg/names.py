"""The names the command-line flags choose from, without importing torch: `--help` stays fast.

The registries (dino_seg.models.ARCHS, dino_seg.discovery.METHODS, dino_seg.precision.PRECISIONS,
dino_seg.davis.RESOLUTIONS, dino_seg.preprocess.PREPROCESS, dino_seg.video.DEFAULT_FPS) are these values; the
weight presets, the discovery benchmarks and the video mask modes are checked equal to theirs in tests."""

from __future__ import annotations

ARCHS = ("vit_tiny", "vit_small", "vit_base", "resnet50")
DISCOVERY_METHODS = ("attention", "lost", "tokencut", "maskcut")
PRECISIONS = ("fp32", "bf16", "fp16")
DAVIS_RESOLUTIONS = ("480p", "Full-Resolution")
PREPROCESS_MODES = ("pad", "resize")
# dino_seg.discovery_data.BENCHMARKS's keys, in its order.
DISCOVERY_BENCHMARKS = ("ecssd", "duts-te", "dut-omron", "voc07", "voc12", "coco20k")
# dino_seg.video_attention.MASK_MODES.
VIDEO_MASK_MODES = ("mean", "heads")
# video_generation.py's --fps default: the rate of videos made from folders of frames, and of a file whose
# container gives no frame rate or one above 120 (a broken header).
DEFAULT_FPS = 30.0
# dino_seg.weights.PRESETS's keys, in its order (it builds URLs and file names from them).
PRESET_NAMES = (
    "dino_vits16", "dino_vits8", "dino_vits8_300ep", "dino_vitb16", "dino_vitb8", "dino_resnet50",
    "dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitb14", "dinov2_vitb14_reg", "dinov2_vitl14", "dinov2_vitl14_reg",
    "dinov2_vitg14", "dinov2_vitg14_reg",
    "dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus", "dinov3_vit7b16",
)

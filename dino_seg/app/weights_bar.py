"""The weights chooser above the tabs: the dropdown, the checkpoint upload and the banner that says what is loaded."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from dino_seg.backbones import DINOV3_LICENCE
from dino_seg.families import PresetUnavailable
from dino_seg.models import is_vit
from dino_seg.weights import PRESETS, WeightsError, WeightsUnavailable

from .config import AppConfig
from .errors import friendly, one_line, scrub_paths
from .model_cache import PRESET_GROUP, PRESET_GROUPS, RANDOM_WEIGHTS, VIT_PRESETS, get_model, licence_line, model_key


def weight_choices(cfg: AppConfig, extra: list[str] | None = None) -> list[tuple[str, str]]:
    """(label, value) of the start-up weights, added files, the ViT presets grouped by generation (DINO, DINOv2,
    DINOv2 with registers, DINOv3: "DINOv2 · dinov2_vits14") and random weights, each once. An uploaded file is
    labelled by its name (its value is its path in the server's temporary folders)."""
    values = [cfg.weights] + [p for p in extra or [] if p] + VIT_PRESETS + [RANDOM_WEIGHTS]
    if cfg.weights == "random":
        values[0] = RANDOM_WEIGHTS
    return [(_label(v), v) for v in dict.fromkeys(values)]


def _label(value: str) -> str:
    if value in PRESET_GROUP:
        return f"{PRESET_GROUP[value]} · {value}"
    shown = scrub_paths(value)
    return value if shown == value else f"{shown} (uploaded)"


WEIGHTS_LABEL = "Weights"
UPLOAD_LABEL = "Upload a checkpoint (.pth)"


def _other_presets(source: str) -> str:
    """The dropdown's presets other than `source`, grouped by generation as the dropdown lists them:
    "DINO: `dino_vits16`, ...; DINOv2: ...; DINOv2 with registers: ...; DINOv3: ..."."""
    groups = [(group, [f"`{name}`" for name in names if name != source]) for group, names in PRESET_GROUPS.items()]
    return "; ".join(f"{group}: {', '.join(names)}" for group, names in groups if names)


@friendly
def check_weights(choice: str | None, cfg: AppConfig) -> str:
    """The banner (Markdown) for a weights choice: what is loaded, or what is missing and how to get it, in the
    page's own words (the **Weights** dropdown, **Upload a checkpoint (.pth)**) and naming the dropdown's presets."""
    source, _, _ = model_key(choice, cfg)
    try:
        model, description = get_model(choice, cfg)
    except PresetUnavailable as err:
        if not PRESETS[source].gated:
            return _unavailable(source, err)
        # DINOv3: never downloaded; the library's one line says where to request the file and where to put it.
        return (f"### Weights not available: `{source}`\n{one_line(err)}.\n\nThen pick `{source}` in "
                f"**{WEIGHTS_LABEL}** again, or pick another preset ({_other_presets(source)}).\n\n{DINOV3_LICENCE}")
    except WeightsUnavailable as err:
        return _unavailable(source, err)
    except WeightsError as err:
        return scrub_paths(f"### Weights cannot be used: `{source}`\n{one_line(err)}\n\n"
                           f"Use **{UPLOAD_LABEL}** below for another file, or pick a preset or "
                           f"**{RANDOM_WEIGHTS}** in **{WEIGHTS_LABEL}**.")
    if source == RANDOM_WEIGHTS:
        return (f"### {description}\nThese untrained weights only check the pipeline: pick a preset in "
                f"**{WEIGHTS_LABEL}** ({_other_presets(source)}) or use **{UPLOAD_LABEL}** to see what DINO "
                "learned.")
    note = "" if is_vit(model) else " — ResNet-50 has no attention or patch features: pick a ViT."
    licence = licence_line(model)
    return f"Weights: **{description}** on {cfg.device}{note}" + (f"\n\n{licence}" if licence else "")


def _unavailable(source: str, err: WeightsUnavailable) -> str:
    """The banner of a downloadable preset that is neither cached nor downloadable (offline)."""
    name = Path(err.cache_path).name
    return (f"### Weights not available: `{source}`\n"
            f"The file **{name}** is not in the local cache and cannot be downloaded from {err.url} "
            "(no internet?). To see what DINO learned:\n"
            f"- download it on another machine, put it at `{err.cache_path}`, then pick `{source}` in "
            f"**{WEIGHTS_LABEL}** again;\n"
            f"- or pick another preset in **{WEIGHTS_LABEL}** ({_other_presets(source)}) whose file is in the "
            "cache;\n"
            f"- or use **{UPLOAD_LABEL}** below, or type the path of a .pth file in **{WEIGHTS_LABEL}**;\n"
            f"- or pick **{RANDOM_WEIGHTS}** in **{WEIGHTS_LABEL}** to try the page (its maps are meaningless).")


@friendly
def add_uploaded_weights(file: str | None, cfg: AppConfig) -> tuple[dict, str]:
    """An uploaded checkpoint becomes a weights choice (and is checked at once)."""
    if not file:
        return gr.update(), ""
    return gr.update(choices=weight_choices(cfg, [file]), value=file), check_weights(file, cfg)


def build_weights_bar(cfg: AppConfig, demo: gr.Blocks) -> tuple[gr.Dropdown, gr.Markdown]:
    """The banner and the weights row (dropdown and checkpoint upload) with their events: (dropdown, banner)."""
    banner = gr.Markdown(elem_id="weights-banner")
    choices = weight_choices(cfg)
    with gr.Row(equal_height=True):
        weights = gr.Dropdown(choices, value=choices[0][1], label=WEIGHTS_LABEL, allow_custom_value=True, scale=3,
                              info=f"A preset, the path of a .pth file, or {RANDOM_WEIGHTS}",
                              elem_id="weights-dropdown")
        upload = gr.File(label=UPLOAD_LABEL, file_types=[".pth", ".pt", ".ckpt"], scale=2,
                         height=110)
    check = functools.partial(check_weights, cfg=cfg)
    demo.load(check, weights, banner, api_name="load_weights", api_visibility="private")  # = /check_weights
    weights.change(check, weights, banner, api_name="check_weights")
    upload.upload(functools.partial(add_uploaded_weights, cfg=cfg), upload, [weights, banner],
                  api_name="upload_weights")
    return weights, banner

"""The app with every DINO generation, called directly with tiny random weights in each release's key format:
presets grouped by generation, the DINOv3 licence line, and the DINOv3 preset without its file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app_fixtures import SIZE, SWAN, cfg, fresh_cache  # noqa: F401 - fixtures
from dino_seg.app import model_cache, weights_bar
from dino_seg.app.config import AppConfig
from dino_seg.backbones import DINOV3_LICENCE
from dino_seg.families import DINOV3_DOWNLOADS
from reference_dinov23 import dinov2_state_dict, dinov3_state_dict


@pytest.fixture(scope="module")
def family_weights(tmp_path_factory, tiny_vit_weights: Path) -> dict[str, str]:
    """A tiny file of each generation, in the released key format: DINO (vit_tiny/16), DINOv2 (2 heads),
    DINOv2 with 4 registers, DINOv3 (RoPE, 4 storage tokens, 3 heads)."""
    folder = tmp_path_factory.mktemp("families")
    files = {"dino": str(tiny_vit_weights)}
    for family, sd in (("dinov2", dinov2_state_dict(dim=128)), ("dinov2_reg", dinov2_state_dict(dim=128, registers=4)),
                       ("dinov3", dinov3_state_dict(dim=48, heads=3))):
        path = folder / f"{family}_tiny_pretrain.pth"
        torch.save(sd, path)
        files[family] = str(path)
    return files


def test_presets_are_grouped_by_generation_in_the_dropdown_and_the_banner(cfg):
    choices = weights_bar.weight_choices(cfg)
    presets = [(label, value) for label, value in choices if value in model_cache.PRESETS]
    assert presets[0] == ("DINO · dino_vits16", "dino_vits16")
    assert ("DINOv2 · dinov2_vits14", "dinov2_vits14") in presets
    assert ("DINOv2 with registers · dinov2_vits14_reg", "dinov2_vits14_reg") in presets
    assert ("DINOv3 · dinov3_vits16", "dinov3_vits16") in presets
    groups = [label.split(" · ")[0] for label, _ in presets]
    # Each generation once, in order: DINO, DINOv2, DINOv2 with registers, DINOv3 (no ResNet: no attention).
    assert list(dict.fromkeys(groups)) == ["DINO", "DINOv2", "DINOv2 with registers", "DINOv3"]
    assert groups == sorted(groups, key=["DINO", "DINOv2", "DINOv2 with registers", "DINOv3"].index)
    assert "dino_resnet50" not in [value for _, value in presets]
    banner = weights_bar.check_weights(model_cache.RANDOM_WEIGHTS, cfg)
    listed = re.search(r"pick a preset in \*\*Weights\*\* \(([^)]*)\)", banner).group(1)
    assert listed.startswith("DINO: `dino_vits16`, `dino_vits8`") and "; DINOv2 with registers: `dinov2_vits14_reg`" in listed
    flat = [n.strip("`") for part in listed.split("; ") for n in part.split(": ")[1].split(", ")]
    assert flat == [value for _, value in presets]


def test_the_dinov3_licence_line_shows_whenever_dinov3_weights_are_in_use(family_weights):
    for family, path in family_weights.items():
        cfg = AppConfig(weights=path, device="cpu", allowed_roots=None)
        banner = weights_bar.check_weights(path, cfg)
        assert banner.startswith("Weights: **"), banner
        assert (DINOV3_LICENCE in banner) == (family == "dinov3"), family
    banner = weights_bar.check_weights(family_weights["dinov3"], AppConfig(weights=family_weights["dino"],
                                                                          device="cpu", allowed_roots=None))
    assert "dinov3_vits16" not in banner and banner.endswith(DINOV3_LICENCE)


def test_the_attention_tab_reports_the_registers_share_of_each_head(cfg, family_weights, fresh_cache):
    """With registers, the note gives each head's [CLS] attention mass on the registers: the library's value on
    the same input; without registers, no such line."""
    from dino_seg.app import attention as attention_tab
    from dino_seg.backbones import as_backbone
    from dino_seg.discovery import MAX_PATCHES, preprocess

    note = attention_tab.run_attention(str(SWAN), family_weights["dinov2_reg"], SIZE, 0.6, cfg)[-1]
    line = next(line for line in note.splitlines() if "registers' share" in line)
    shown = [float(v) / 100 for v in re.findall(r"head \d+ ([\d.]+)%", line)]
    model, _ = model_cache.get_model(family_weights["dinov2_reg"], cfg)
    entry = attention_tab.image_pass(SWAN, family_weights["dinov2_reg"], SIZE, cfg)[0]
    x = preprocess(Image.fromarray(entry.attention.image), model.patch_size, None, MAX_PATCHES, "pad")[0]
    with torch.no_grad():
        expected = as_backbone(model).last_attention_cls(x).register_share[0].numpy()
    assert len(shown) == len(expected) == 2
    np.testing.assert_allclose(shown, expected, atol=0.0006)  # the note rounds to 0.1%
    note = attention_tab.run_attention(str(SWAN), family_weights["dinov2"], SIZE, 0.6, cfg)[-1]
    assert "registers' share" not in note


def test_a_dinov3_preset_without_its_file_says_where_to_request_it_and_where_to_put_it(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    banner = weights_bar.check_weights("dinov3_vits16", cfg)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    line = banner.splitlines()[1]
    assert banner.startswith("### Weights not available: `dinov3_vits16`")
    assert DINOV3_DOWNLOADS in line and str(path) in line  # one line: request at URL, put the file at PATH
    assert "no internet" not in banner and DINOV3_LICENCE in banner
    with pytest.raises(Exception, match="licence-gated"):
        model_cache.model_or_error("dinov3_vits16", cfg)


def _jf(note: str) -> float:
    match = re.search(r"\*\*J&F (\d\.\d{3})\*\*", note)
    assert match, note
    return float(match.group(1))


def test_the_video_tab_propagates_with_the_chosen_protocol_as_eval_davis_does(family_weights, tmp_path):
    """J&F of the Video tab equals eval.davis's with the same protocol and short side, on a tiny synthetic
    sequence; the two protocols give different propagations."""
    from eval import davis as davis_cli
    from davis_data import make_davis

    from dino_seg.app import video as video_tab

    root = make_davis(tmp_path / "davis", {"shapes": 5}, n_objects=2)
    weights = family_weights["dinov3"]
    cfg = AppConfig(weights=weights, device="cpu", allowed_roots=None)
    scores = {}
    for protocol in ("dino", "dinov3"):
        note = video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, weights, 5, 64, cfg,
                                   protocol=protocol)[-1]
        assert f"protocol {protocol}" in note and "5 frames" in note
        out = tmp_path / f"out_{protocol}"
        code = davis_cli.main(["--pretrained_weights", weights, "--data_path", str(root), "--output_dir", str(out),
                               "--protocol", protocol, "--short_side", "64", "--device", "cpu"])
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert _jf(note) == round(summary["scores"]["J&F-Mean"], 3), (note, summary["scores"])
        scores[protocol] = summary["scores"]["J&F-Mean"]
    assert scores["dino"] != scores["dinov3"]
    assert video_tab.protocol_short_side("dinov3")["value"] == 960
    assert video_tab.protocol_short_side("dino")["value"] == 480
    with pytest.raises(Exception, match="protocol: expected one of dino, dinov3"):
        video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, weights, 5, 64, cfg,
                            protocol="dinov2")


def test_compare_gives_one_panel_per_backbone_from_one_pass_each(cfg, family_weights, fresh_cache):
    from dino_seg.app import attention as attention_tab
    from dino_seg.app import compare as compare_tab
    from dino_seg.backbones import as_backbone
    from dino_seg.discovery import MAX_PATCHES, preprocess

    chosen = [family_weights["dino"], family_weights["dinov2_reg"], family_weights["dinov3"]]
    panels = compare_tab.compare(str(SWAN), chosen, SIZE, "TokenCut", cfg)
    assert [p.weights for p in panels] == chosen
    assert len(attention_tab.PASS_CACHE) == 3  # one backbone pass per (image, weights, size)
    for panel, registers in zip(panels, (0, 4, 4)):
        model, _ = model_cache.get_model(panel.weights, cfg)
        entry = attention_tab.image_pass(SWAN, panel.weights, SIZE, cfg)[0]
        assert panel.num_registers == registers
        assert panel.attention.shape == entry.attention.image.shape  # the mean map at the input's pixels
        assert panel.objects.shape == entry.attention.image.shape and len(panel.boxes) >= 1
        # [CLS] + registers + patches = 1 per head, and the register share is the library's on the same input.
        np.testing.assert_allclose(panel.shares.sum(axis=1), 1.0, atol=1e-5)
        x = preprocess(Image.fromarray(entry.attention.image), model.patch_size, None, MAX_PATCHES, "pad")[0]
        with torch.no_grad():
            reference = as_backbone(model).last_attention_cls(x)
        np.testing.assert_allclose(panel.shares[:, 1], reference.register_share[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(panel.shares[:, 0], reference.cls_share[0].numpy(), atol=1e-5)
        assert (panel.shares[:, 1] > 1e-4).all() if registers else (panel.shares[:, 1] == 0).all()
        assert (panel.licence == DINOV3_LICENCE) == (panel is panels[2])
    # The same comparison again (and the Attention tab on one of them) re-uses the three passes.
    again = compare_tab.compare(str(SWAN), chosen, SIZE, "LOST", cfg)
    assert len(attention_tab.PASS_CACHE) == 3 and len(again) == 3
    attention_tab.run_attention(str(SWAN), chosen[1], SIZE, 0.6, cfg)
    assert len(attention_tab.PASS_CACHE) == 3

    out = compare_tab.run_compare(str(SWAN), chosen[0], chosen[2], compare_tab.NONE, SIZE, "TokenCut", cfg)
    assert len(out) == 9 and out[6:] == ("", None, None)
    assert "| head | [CLS] | patches |" in out[0] and out[0].count("\n| ") == 3 + 1  # 3 heads of vit_tiny
    assert "| head | [CLS] | registers (4) | patches |" in out[3] and DINOV3_LICENCE in out[3]
    with pytest.raises(Exception, match="two or three different weights"):
        compare_tab.run_compare(str(SWAN), chosen[0], chosen[0], compare_tab.NONE, SIZE, "TokenCut", cfg)

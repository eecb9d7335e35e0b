"""Every DINO generation behind one Backbone: each family against a plain transcription of its official forward
pass (tests/reference_dinov23.py) on small random weights in the released key format."""

from __future__ import annotations

import pytest
import torch

from dino_seg import families
from dino_seg.attention import cls_attention, threshold_masks
from dino_seg.backbones import DinoV1Backbone, PatchSizeError, as_backbone
from dino_seg.families import FAMILY_PRESETS, FamilyError, PresetUnavailable, build_backbone, recognise
from dino_seg.linear_probe import intermediate_layers
from dino_seg.models import DinoVisionTransformer, patch_features
from reference_dinov23 import (dinov2_forward, dinov2_state_dict, dinov3_forward, dinov3_rope,
                               dinov3_state_dict)

HEADS, DEPTH = 3, 2
# (H, W): the stored grid itself (no interpolation), another square grid, and two non-square ones.
DINOV2_SIZES = [(70, 70), (84, 84), (56, 98), (98, 42)]


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("swiglu", [False, True])
def test_dinov2_tokens_and_cls_attention_match_the_official_forward(registers, swiglu):
    sd = dinov2_state_dict(registers=registers, swiglu=swiglu)
    backbone = build_backbone(sd, "t", num_heads=HEADS)
    assert (backbone.family, backbone.num_prefix_tokens, backbone.patch_size) == (
        "dinov2_reg" if registers else "dinov2", 1 + registers, 14)
    p = 1 + registers
    for h, w in DINOV2_SIZES:
        x = _image(h, w)
        with torch.no_grad():
            ref = dinov2_forward(sd, x, HEADS, DEPTH)  # (B, 1 + R + N, D)
            ref_attn = dinov2_forward(sd, x, HEADS, DEPTH, last_attention=True)[:, :, 0]  # (B, heads, T)
            out = backbone.forward_features(x)
            cls = backbone.last_attention_cls(x)
        assert out.grid == (h // 14, w // 14)
        torch.testing.assert_close(out.cls, ref[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.registers, ref[:, 1:p], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.patch_tokens, ref[:, p:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls.maps, ref_attn[..., p:].reshape(2, HEADS, h // 14, w // 14),
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cls.register_share, ref_attn[..., 1:p].sum(-1), atol=1e-6, rtol=1e-5)
        total = cls.maps.sum((-2, -1)) + cls.register_share + cls.cls_share
        torch.testing.assert_close(total, torch.ones(2, HEADS))
    if registers:
        assert cls.register_share.min() > 0.01  # random registers do take a visible share
    else:
        assert torch.equal(cls.register_share, torch.zeros(2, HEADS))


def test_dinov2_without_registers_needs_the_official_interpolation():
    """timm's own resampling (size-based, antialiased) is measurably off the official scale-factor rule."""
    sd = dinov2_state_dict()
    backbone = build_backbone(sd, "t", num_heads=HEADS)
    x = _image(56, 98)
    with torch.no_grad():
        ref = dinov2_forward(sd, x, HEADS, DEPTH)
        ours = backbone.tokens(x)[0]
        timm_default = backbone.model.forward_features(x)
    assert (ours - ref).abs().max() < 1e-5
    assert (timm_default - ref).abs().max() > 1e-3


def test_dinov3_tokens_keys_and_cls_attention_match_the_official_forward():
    sd = dinov3_state_dict()
    backbone = build_backbone(sd, "t")
    assert (backbone.family, backbone.num_heads, backbone.num_prefix_tokens, backbone.patch_size) == (
        "dinov3", 3, 5, 16)
    assert backbone.licence and "DINOv3 License" in backbone.licence
    for h, w in [(64, 64), (48, 80), (80, 32)]:
        x = _image(h, w)
        with torch.no_grad():
            ref = dinov3_forward(sd, x, HEADS, DEPTH)
            ref_attn = dinov3_forward(sd, x, HEADS, DEPTH, last="attention")[:, :, 0]
            q_ref, k_ref, k_raw_ref = dinov3_forward(sd, x, HEADS, DEPTH, last="qk")
            out = backbone.forward_features(x)
            qkv = backbone.last_qkv(x)
            cls = backbone.last_attention_cls(x)
        torch.testing.assert_close(out.cls, ref[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.registers, ref[:, 1:5], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.patch_tokens, ref[:, 5:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qkv.q, q_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qkv.k, k_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qkv.k_unrotated, k_raw_ref, atol=1e-5, rtol=1e-5)
        assert (qkv.k - qkv.k_unrotated)[:, :, 5:].abs().max() > 1e-2  # RoPE does rotate the patches' keys
        torch.testing.assert_close(qkv.k[:, :, :5], qkv.k_unrotated[:, :, :5])  # and never the prefix tokens'
        torch.testing.assert_close(cls.maps, ref_attn[..., 5:].reshape(2, HEADS, h // 16, w // 16),
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cls.register_share, ref_attn[..., 1:5].sum(-1), atol=1e-6, rtol=1e-5)
        # Without RoPE the [CLS] row differs: the attention cannot be recomputed from unrotated keys.
        plain = ((qkv.q[:, :, :1] @ qkv.k_unrotated.transpose(-2, -1)) * qkv.scale).softmax(-1)[:, :, 0]
        assert (plain[..., 5:] - ref_attn[..., 5:]).abs().max() > 1e-4


def test_dinov3_uses_the_files_rope_periods():
    """The released periods are bfloat16-rounded; the official model computes with them, timm recomputes them."""
    sd = dinov3_state_dict()
    backbone = build_backbone(sd, "t")
    torch.testing.assert_close(backbone.model.rope.periods, sd["rope_embed.periods"].float(), atol=0, rtol=0)
    exact = 100.0 ** (2 * torch.arange(4, dtype=torch.float32) / 8)
    assert not torch.equal(exact, sd["rope_embed.periods"].float())
    sin_ref, _ = dinov3_rope(sd["rope_embed.periods"], 3, 5)
    sin_exact, _ = dinov3_rope(exact, 3, 5)
    assert (sin_ref - sin_exact).abs().max() > 1e-4


def test_masks_from_the_cls_attention_match_the_official_attention():
    sd = dinov2_state_dict(registers=4)
    backbone = build_backbone(sd, "t", num_heads=HEADS)
    x = _image(84, 98)
    with torch.no_grad():
        ref_row = dinov2_forward(sd, x, HEADS, DEPTH, last_attention=True)[0, :, 0, 5:].reshape(HEADS, 6, 7)
        maps = backbone.last_attention_cls(x).maps[0]
    ours, ref = threshold_masks(maps, 0.6), threshold_masks(ref_row, 0.6)
    assert torch.equal(ours, ref)
    assert 0 < ours.sum() < ours.numel()


def test_intermediate_layers_match_the_official_ones():
    sd = dinov2_state_dict()
    backbone = build_backbone(sd, "t", num_heads=HEADS)
    x = _image(70, 56)
    with torch.no_grad():
        ref = dinov2_forward(sd, x, HEADS, DEPTH, n_last=2)
        ours = backbone.intermediate_layers(x, 2)
    assert len(ours) == 2
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="--n_last_blocks"):
        backbone.intermediate_layers(x, 3)


def test_dino_v1_through_the_interface_is_bit_for_bit_todays_code():
    torch.manual_seed(0)
    model = DinoVisionTransformer(48, 3, patch_size=16).eval()
    backbone = as_backbone(model)
    assert isinstance(backbone, DinoV1Backbone) and backbone.num_prefix_tokens == 1
    x = torch.randn(1, 3, 70, 90)  # not whole patches: cropped as today
    with torch.no_grad():
        assert torch.equal(backbone.last_attention_cls(x).maps, cls_attention(model, x))
        assert torch.equal(backbone.patch_features(x), patch_features(model, x))
        assert torch.equal(backbone(x), model(x))
        for a, b in zip(backbone.intermediate_layers(x, 2), intermediate_layers(model, x, 2)):
            assert torch.equal(a, b)
        assert torch.equal(backbone.last_attention_cls(x).register_share, torch.zeros(1, 3))


def test_recognise_released_families_and_names():
    assert recognise(dinov2_state_dict(dim=384, depth=1, grid=2)).name == "dinov2_vits14"
    spec = recognise(dinov2_state_dict(dim=384, depth=1, grid=2, registers=4))
    assert (spec.family, spec.name, spec.num_registers, spec.num_heads, spec.layout) == (
        "dinov2_reg", "dinov2_vits14_reg", 4, 6, "official")
    spec = recognise(dinov3_state_dict(dim=384, depth=1, heads=6))
    assert (spec.family, spec.name, spec.num_registers, spec.num_heads, spec.patch_size) == (
        "dinov3", "dinov3_vits16", 4, 6, 16)
    model = DinoVisionTransformer(192, 3, patch_size=8)
    assert recognise(model.state_dict()).name == "vit_tiny/8"


@pytest.mark.parametrize("make", [lambda: dinov2_state_dict(registers=4), lambda: dinov2_state_dict(),
                                  dinov3_state_dict])
def test_timm_format_files_load_too(make):
    sd = make()
    backbone = build_backbone(sd, "t", num_heads=HEADS)
    timm_sd = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    spec = recognise(timm_sd, "t", num_heads=HEADS)
    assert (spec.family, spec.layout, spec.num_registers) == (backbone.family, "timm", backbone.num_registers)
    again = build_backbone(timm_sd, "t", num_heads=HEADS)
    if backbone.family == "dinov3":  # a timm file holds no RoPE periods: timm's float32 ones are used
        again.model.rope.periods.copy_(backbone.model.rope.periods)
    x = _image(64, 48) if backbone.family == "dinov3" else _image(56, 70)
    with torch.no_grad():
        assert torch.equal(again.tokens(x)[0], backbone.tokens(x)[0])


def test_bad_input_gets_one_line():
    with pytest.raises(FamilyError) as err:
        recognise({"conv.weight": torch.zeros(3)}, "mystery.pth")
    assert "mystery.pth" in str(err.value) and "\n" not in str(err.value)
    backbone = build_backbone(dinov3_state_dict(), "t")
    with pytest.raises(PatchSizeError, match="smaller than one 16-pixel patch"):
        backbone.last_attention_cls(torch.zeros(1, 3, 15, 64))
    sd = dinov3_state_dict()
    sd["blocks.0.attn.qkv.bias_mask"] = torch.ones_like(sd["blocks.0.attn.qkv.bias_mask"])
    with pytest.raises(FamilyError, match="bias_mask"):
        build_backbone(sd, "t")


def test_dinov3_preset_resolves_only_to_a_cached_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("DINOv3 weights must never be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(PresetUnavailable) as err:
        families.fetch_family_preset("dinov3_vits16")
    message = str(err.value)
    expected = tmp_path / "checkpoints" / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    assert families.DINOV3_DOWNLOADS in message and str(expected) in message and "\n" not in message
    expected.parent.mkdir(parents=True)
    torch.save(dinov3_state_dict(), expected)
    assert families.fetch_family_preset("dinov3_vits16") == expected
    assert {p.name for p in FAMILY_PRESETS.values() if p.gated} == {
        "dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus", "dinov3_vit7b16"}


def test_dinov2_preset_download_is_checked_by_structure(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    served = {}

    def fake_download(url, dst, progress=True):
        served["url"] = url
        torch.save(served["sd"], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    served["sd"] = dinov2_state_dict(dim=384, depth=1, grid=2)  # no registers: not dinov2_vits14_reg
    with pytest.raises(FamilyError, match="dinov2_vits14"):
        families.fetch_family_preset("dinov2_vits14_reg")
    assert served["url"] == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
    assert not list((tmp_path / "checkpoints").iterdir())
    served["sd"] = dinov2_state_dict(dim=384, depth=1, grid=2, registers=4)
    path = families.fetch_family_preset("dinov2_vits14_reg")
    assert path.name == "dinov2_vits14_reg4_pretrain.pth" and path.is_file()

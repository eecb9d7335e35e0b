"""Backbones: official key names, reference-exact features at any input size, ResNet-50."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dino_seg.models import build_backbone, is_vit, model_name, patch_features
from reference_vit import reference_forward


def _expected_vit_keys(depth: int = 12) -> set[str]:
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    return keys


@pytest.mark.parametrize("arch,dim", [("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)])
@pytest.mark.parametrize("patch", [8, 16])
def test_vit_state_dict_has_the_official_keys_and_shapes(arch, dim, patch):
    with torch.device("meta"):  # shapes and names only: skip the cost of initialising 85M weights
        sd = build_backbone(arch, patch).state_dict()
    assert set(sd) == _expected_vit_keys()
    assert sd["pos_embed"].shape == (1, (224 // patch) ** 2 + 1, dim)
    assert sd["patch_embed.proj.weight"].shape == (dim, 3, patch, patch)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * dim, dim)


@pytest.fixture(scope="module")
def tiny16():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", 16).eval()
    with torch.no_grad():  # a non-smooth positional grid makes interpolation differences visible
        model.pos_embed.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("hw", [(224, 224), (240, 320), (96, 160), (64, 64), (232, 232), (250, 170)])
def test_features_match_the_reference_at_any_size(tiny16, hw):
    torch.manual_seed(1)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        ours = tiny16.forward_features(x)
        ref = reference_forward(tiny16.state_dict(), x, heads=3)
    assert ours.shape == (1, 1 + (hw[0] // 16) * (hw[1] // 16), 192)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(tiny16(x), ref[:, 0], atol=1e-4, rtol=0)


def test_pos_embed_interpolation_keeps_the_reference_plus_point_one(tiny16):
    # Without the +0.1 scale factor (a plain size= resize) the embeddings differ: the offset matters.
    ours = tiny16.interpolate_pos_encoding(30, 40, square_input=False)[:, 1:]
    grid = tiny16.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(30, 40), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 1200, -1)
    by_scale = F.interpolate(grid, scale_factor=(30.1 / 14, 40.1 / 14), mode="bicubic")
    torch.testing.assert_close(ours, by_scale.permute(0, 2, 3, 1).reshape(1, 1200, -1))
    assert (ours - by_size).abs().max() > 1e-2


def test_square_224_input_uses_the_stored_embedding_unchanged(tiny16):
    assert tiny16.interpolate_pos_encoding(14, 14, square_input=True) is tiny16.pos_embed


def test_patch_features_drop_cls_and_lay_out_the_grid(tiny16):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = patch_features(tiny16, x)
        tokens = tiny16.forward_features(x)
    assert feats.shape == (1, 4, 6, 192)
    torch.testing.assert_close(feats[0, 1, 2], tokens[0, 1 + 1 * 6 + 2])


def test_resnet50_backbone_outputs_2048_features_and_no_classifier():
    model = build_backbone("resnet50").eval()
    assert not is_vit(model)
    assert not any(k.startswith("fc.") for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    with pytest.raises(ValueError, match="patch"):
        patch_features(model, torch.randn(1, 3, 64, 64))


def test_drop_path_applies_in_training_only():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", 16, drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("arch,patch,match", [("vit_huge", 16, "--arch"), ("vit_small", 14, "--patch_size")])
def test_bad_arch_or_patch_is_a_clear_error(arch, patch, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(arch, patch)


def test_backbones_know_their_names():
    with torch.device("meta"):
        assert model_name(build_backbone("vit_base", 8)) == "vit_base/8"
        assert model_name(build_backbone("resnet50")) == "resnet50"

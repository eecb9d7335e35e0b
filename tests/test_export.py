"""ONNX export: onnxruntime agrees with the torch model at several batches and sizes; bad input is one line."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_seg.export import ExportedViT, cubic_weights, main, reference_outputs
from dino_seg.models import DinoVisionTransformer, build_backbone

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def tiny_vit(depth: int = 2) -> DinoVisionTransformer:
    torch.manual_seed(0)
    model = DinoVisionTransformer(48, 3, patch_size=16, img_size=64)  # stored 4 x 4 positional grid
    model.blocks = model.blocks[:depth]
    with torch.no_grad():
        model.pos_embed.normal_()  # a non-smooth grid: interpolation errors show
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("out_size,in_size", [(7, 4), (3, 4), (4, 4), (1, 14), (37, 14)])
def test_cubic_weights_equal_torch_bicubic(out_size, in_size):
    grid = torch.randn(1, 1, in_size, 1, dtype=torch.float64)
    scale = (out_size + 0.1) / in_size
    want = F.interpolate(grid, scale_factor=(scale, 1.0), mode="bicubic")[0, 0, :, 0]
    weights = cubic_weights(torch.arange(out_size, dtype=torch.float64), in_size, torch.tensor(scale, dtype=torch.float64))
    assert want.shape == (out_size,)
    torch.testing.assert_close(weights @ grid[0, 0, :, 0], want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("size", [(64, 64), (32, 96), (80, 48), (16, 16)])
def test_traced_forward_equals_the_model(size):
    # (64, 64) is the stored grid: the reference uses it unchanged, the interpolation path must too.
    model = tiny_vit()
    image = torch.randn(2, 3, *size)
    got = ExportedViT(model)(image)
    want = reference_outputs(model, image)
    n = (size[0] // 16) * (size[1] // 16)
    assert got[0].shape == (2, 48) and got[1].shape == (2, n, 48) and got[2].shape == (2, 3, n)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2].sum(-1) <= 1, torch.ones(2, 3, dtype=torch.bool))


def test_export_cli_onnxruntime_matches_torch(tmp_path, capsys):
    torch.manual_seed(0)
    full = build_backbone("vit_tiny", 16)  # the loader infers a known architecture from the weights
    with torch.no_grad():
        full.pos_embed.normal_()
    weights = tmp_path / "tiny.pth"
    torch.save(full.state_dict(), weights)
    out = tmp_path / "m.onnx"
    assert main(["--pretrained_weights", str(weights), "--image_size", "32", "48", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "height and width dynamic" in printed and "batch 2, 48x80" in printed
    full.eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["cls", "patch_tokens", "attention"]
    gen = torch.Generator().manual_seed(1)
    # The traced size, another batch and size (dynamic axes), the stored 224 grid, one patch.
    for b, h, w in [(1, 32, 48), (3, 64, 32), (1, 224, 224), (2, 16, 16)]:
        image = torch.randn(b, 3, h, w, generator=gen)
        got = session.run(None, {"image": image.numpy()})
        want = reference_outputs(full, image)
        for name, ours, theirs in zip(("cls", "patch_tokens", "attention"), got, want):
            assert ours.shape == tuple(theirs.shape), name
            np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4, rtol=0, err_msg=f"{name} at {b}x{h}x{w}")


@pytest.mark.parametrize("argv,expected", [
    (["--image_size", "100", "96"], "--image_size 100 96: expected multiples of the patch size 16 (e.g. 96 96)"),
    (["--opset", "11"], "--opset 11: unsupported; expected 18 to"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, expected):
    code = main(["--pretrained_weights", "random", "--output", str(tmp_path / "m.onnx"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_resnet_is_refused(tmp_path, capsys):
    code = main(["--arch", "resnet50", "--output", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "ONNX export needs a ViT" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov2", "dinov2_reg", "dinov3"])
def test_later_generations_export_at_one_size_with_dynamic_batch(tmp_path, family):
    from dino_seg.export import export_onnx
    from dino_seg.families import build_backbone as build_family
    from reference_dinov23 import dinov2_state_dict, dinov3_state_dict

    sd = dinov3_state_dict() if family == "dinov3" else dinov2_state_dict(registers=4 if family == "dinov2_reg" else 0)
    backbone = build_family(sd, "t", num_heads=3)
    assert backbone.family == family
    p = backbone.patch_size
    out = export_onnx(backbone, tmp_path / "m.onnx", (3 * p, 4 * p))  # dynamic sizes asked: one size given
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[2:] == [3 * p, 4 * p]
    for b in (1, 3):
        image = torch.randn(b, 3, 3 * p, 4 * p, generator=torch.Generator().manual_seed(b))
        got = session.run(None, {"image": image.numpy()})
        want = reference_outputs(backbone, image)  # registers dropped, [CLS] row over the patches
        assert got[1].shape == (b, 12, 48) and got[2].shape == (b, 3, 12)
        for name, ours, theirs in zip(("cls", "patch_tokens", "attention"), got, want):
            np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4, rtol=0, err_msg=f"{family} {name} batch {b}")

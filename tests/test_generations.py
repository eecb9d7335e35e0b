"""DINOv2 (with and without registers) and DINOv3 weights in the commands: loading from released-format files,
attention with the registers' share, discovery on keys before RoPE, both DAVIS protocols, k-NN / linear features."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from davis_data import make_davis
from dino_seg import discovery
from dino_seg.attention import preprocess
from dino_seg.backbones import Backbone
from dino_seg.linear_probe import probe_features
from dino_seg.weights import WeightsError, load_model
from eval import attention as attention_cli
from eval import davis as davis_cli
from reference_dinov23 import dinov2_forward, dinov2_state_dict, dinov3_state_dict


def _save(tmp_path, name, sd):
    path = tmp_path / name
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    # Widths 64 / 128: heads are read from the released rule (64 per head) without a table entry.
    return {
        "dinov2_reg": _save(folder, "dinov2_tiny_reg4_pretrain.pth", dinov2_state_dict(dim=64, registers=4)),
        "dinov2": _save(folder, "dinov2_tiny_pretrain.pth", dinov2_state_dict(dim=64)),
        "dinov3": _save(folder, "dinov3_tiny_pretrain.pth", dinov3_state_dict(dim=128, heads=2)),
    }


def test_load_model_recognises_each_family_without_arch(files):
    for family, path in files.items():
        model = load_model(str(path))
        assert isinstance(model, Backbone) and model.family == family and not model.training
        assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(WeightsError, match="--arch vit_small was asked for") as err:
        load_model(str(files["dinov2"]), arch="vit_small")
    assert "\n" not in str(err.value)


def test_attention_command_writes_maps_and_register_share(files, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    # 56 x 70 is 4 x 5 patches of 14: used exactly.
    assert attention_cli.main(["--pretrained_weights", str(files["dinov2_reg"]), "--image_path", str(image),
                               "--image_size", "56", "70", "--output_dir", str(out), "--device", "cpu"]) == 0
    maps = np.load(out / "a" / "attention.npy")
    assert maps.shape == (1, 4, 5)
    rows = list(csv.DictReader((out / "register_share.csv").open()))
    assert [r["image"] for r in rows] == ["a.png", "mean"]
    share = float(rows[0]["head0"])
    # The command's numbers are the official attention's: the [CLS] row's mass on the 4 registers.
    model = load_model(str(files["dinov2_reg"]))
    x = preprocess(Image.open(image).convert("RGB"), (56, 70), 14)
    ref = dinov2_forward(torch.load(files["dinov2_reg"]), x, 1, 2, last_attention=True)[0, 0, 0]
    assert share == pytest.approx(float(ref[1:5].sum()), abs=1e-4)
    np.testing.assert_allclose(maps[0], ref[5:].reshape(4, 5).numpy(), atol=1e-6)
    assert maps.sum() + share < 1  # the patches and the registers share the [CLS] row with [CLS] itself
    assert "[CLS] attention on the registers" in capsys.readouterr().out
    assert model.num_registers == 4


def test_dinov3_licence_is_named_and_a_missing_preset_is_one_line(files, tmp_path, monkeypatch, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert attention_cli.main(["--pretrained_weights", str(files["dinov3"]), "--image_path", str(image),
                               "--output_dir", str(tmp_path / "o"), "--image_size", "32", "--device", "cpu"]) == 0
    assert "DINOv3 License" in capsys.readouterr().out
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert attention_cli.main(["--pretrained_weights", "dinov3_vitb16", "--image_path", str(image),
                               "--output_dir", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/" in err
    assert str(tmp_path / "hub" / "checkpoints" / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth") in err


def test_discovery_uses_keys_before_rope_without_prefix_tokens(files):
    model = load_model(str(files["dinov3"]))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    feats = discovery.extract_features(model, image)
    x, _, _ = discovery.preprocess(image, 16)
    qkv = model.last_qkv(x)
    assert feats.grid == (3, 4) and feats.features("k").shape == (12, 128)
    torch.testing.assert_close(feats.features("k"), qkv.patch_part(qkv.k_unrotated)[0])
    assert not torch.allclose(feats.features("k"), qkv.patch_part(qkv.k)[0])
    torch.testing.assert_close(torch.from_numpy(feats.cls_attention), model.last_attention_cls(x).maps[0])
    result = discovery.discover(feats, "tokencut")
    assert result.masks.shape[1:] == (48, 64)


def test_knn_and_linear_features_take_any_backbone(files):
    model = load_model(str(files["dinov2_reg"]))
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tokens = dinov2_forward(torch.load(files["dinov2_reg"]), x, 1, 2)
        torch.testing.assert_close(model(x), tokens[:, 0], atol=1e-5, rtol=1e-5)  # k-NN: the [CLS] output
        probe = probe_features(model, x, n_last_blocks=1, avgpool_patchtokens=True)
    expected = torch.stack((tokens[:, 0], tokens[:, 5:].mean(1)), dim=-1).reshape(2, -1)  # registers left out
    torch.testing.assert_close(probe, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,protocol", [("dinov2", "dino"), ("dinov3", "dinov3")])
def test_davis_protocols_write_masks_and_scores(files, tmp_path, capsys, family, protocol):
    root = make_davis(tmp_path / "davis", {"shapes": 4}, n_objects=2)
    out = tmp_path / "out"
    args = ["--pretrained_weights", str(files[family]), "--data_path", str(root), "--output_dir", str(out),
            "--protocol", protocol, "--short_side", "64", "--device", "cpu"]
    code = davis_cli.main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for t in range(4):
        with Image.open(out / "shapes" / f"{t:05d}.png") as im:
            assert im.mode == "P" and im.size == (96, 64)
            assert set(np.unique(np.array(im))) <= {0, 1, 2}
    assert (out / "global_results-val.csv").is_file()
    settings = json.loads((out / "provenance.json").read_text())["settings"]
    assert settings["short_side"] == 64 and settings.get("protocol", "dino") == protocol


@pytest.mark.parametrize("family", ["dinov2_reg", "dinov3"])
def test_training_continues_from_any_generation(files, tmp_path, family):
    from train.main import main as train_main
    from train_helpers import run_cli, textured_images, tiny_args

    textured_images(tmp_path / "data", 4, size=48)
    out = tmp_path / "run"
    patch = 14 if family.startswith("dinov2") else 16
    # lr 0: the weights cannot move, so the checkpoint's teacher is the initial weights (up to the EMA's rounding).
    argv = tiny_args(tmp_path / "data", out, init_weights=files[family], global_crops_size=2 * patch,
                     local_crops_size=patch, lr=0, min_lr=0, out_dim=32)
    code, stdout, stderr = run_cli(train_main, argv)
    assert code == 0, stderr
    assert f"initialised from {files[family]} (new heads)" in stdout
    trained = load_model(str(out / "checkpoint.pth"))
    initial = load_model(str(files[family]))
    assert (trained.family, trained.num_registers) == (family, 4)
    x = torch.randn(1, 3, 2 * patch, 3 * patch)
    with torch.no_grad():
        if family == "dinov3":  # a trained checkpoint holds timm's float32 RoPE periods, not the file's bfloat16
            trained.model.rope.periods.copy_(initial.model.rope.periods)
        torch.testing.assert_close(trained.tokens(x)[0], initial.tokens(x)[0], atol=1e-4, rtol=1e-4)
    student = torch.load(out / "checkpoint.pth", weights_only=False)["student"]
    assert "module.head.last_layer.weight_v" in student and "module.backbone.model.cls_token" in student

"""Weight loading: every checkpoint format gives the same backbone; bad input gives one-line errors."""

from __future__ import annotations

import argparse
import hashlib
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from dino_seg import weights
from dino_seg.models import build_backbone
from dino_seg.weights import PRESETS, WeightsError, WeightsUnavailable, infer_arch, load_model, preset_cache_path


@pytest.fixture(scope="module")
def sources():
    torch.manual_seed(0)
    teacher = build_backbone("vit_tiny", 16)
    student = build_backbone("vit_tiny", 16)
    head = {"head.mlp.0.weight": torch.randn(8, 192), "head.last_layer.weight_g": torch.ones(4, 1)}
    return teacher, student, head


def _outputs(model, x):
    with torch.no_grad():
        return model.forward_features(x)


def test_every_checkpoint_format_loads_the_same_weights(tmp_path, sources):
    teacher, student, head = sources
    x = torch.randn(1, 3, 64, 80)
    expected_teacher, expected_student = _outputs(teacher, x), _outputs(student, x)
    backbone_only = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(teacher.state_dict(), backbone_only)
    # The official full checkpoint: DDP student ("module.backbone."), plain teacher ("backbone."),
    # DINO heads, an optimizer and an argparse.Namespace under "args".
    official_full = tmp_path / "official_full_checkpoint.pth"
    torch.save({
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
        "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
        "args": argparse.Namespace(arch="vit_tiny", patch_size=16, lr=0.0005),
        "dino_loss": {"center": torch.zeros(1, 4)},
    }, official_full)
    ours = tmp_path / "checkpoint.pth"  # python -m train: the same layout with plain-dict args
    torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()},
                "student": {f"backbone.{k}": v for k, v in student.state_dict().items()},
                "epoch": 3, "args": {"arch": "vit_tiny"}, "fp16_scaler": None}, ours)

    for path in (backbone_only, official_full, ours):
        torch.testing.assert_close(_outputs(load_model(path), x), expected_teacher, rtol=0, atol=0)
    for path in (official_full, ours):
        model = load_model(path, checkpoint_key="student")
        torch.testing.assert_close(_outputs(model, x), expected_student, rtol=0, atol=0)
    model = load_model(str(official_full), arch="vit_tiny", patch_size=16)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_arch_and_patch_size_are_inferred(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_backbone("vit_tiny", 8).state_dict(), path)
    model = load_model(path)
    assert (model.embed_dim, model.patch_size, model.num_heads) == (192, 8, 3)
    assert infer_arch(torch.load(path)) == ("vit_tiny", 8)


def test_a_non_default_positional_grid_is_kept(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_backbone("vit_tiny", 16, img_size=96).state_dict(), path)
    assert load_model(path).pos_embed.shape == (1, 37, 192)


def test_resnet50_weights_load(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("resnet50")
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_model(path)
    torch.testing.assert_close(loaded.conv1.weight, model.conv1.weight)
    assert loaded.embed_dim == 2048


def test_mismatches_name_the_architectures_and_the_keys(tmp_path, tiny_vit_weights):
    with pytest.raises(WeightsError, match=r"vit_tiny/16, but --arch vit_small"):
        load_model(tiny_vit_weights, arch="vit_small")
    with pytest.raises(WeightsError, match=r"vit_tiny/16, but --patch_size 8 was asked for"):
        load_model(tiny_vit_weights, patch_size=8)
    sd = torch.load(tiny_vit_weights)
    del sd["norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing keys norm\.weight; unexpected keys extra\.weight"):
        load_model(path)


def test_a_missing_checkpoint_key_lists_the_available_ones(tmp_path, tiny_vit_weights):
    path = tmp_path / "full.pth"
    torch.save({"student": torch.load(tiny_vit_weights)}, path)
    with pytest.raises(WeightsError, match=r"--checkpoint_key 'teacher' not found; the checkpoint has student"):
        load_model(path)


def test_bad_files_give_one_line_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    for path, pattern in [(text, "not a readable PyTorch checkpoint"),
                          (tmp_path / "missing.pth", "no such file and not a preset"),
                          (tmp_path, "is a folder")]:
        with pytest.raises(WeightsError, match=pattern) as info:
            load_model(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(WeightsError, match="expected a state dict"):
        load_model(lst)


def _offline(url, dst, progress=True):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_an_offline_preset_names_the_url_and_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(WeightsUnavailable) as info:
        load_model("dino_vits8")
    err = info.value
    assert err.url == PRESETS["dino_vits8"].url
    assert err.cache_path == tmp_path / "hub" / "checkpoints" / "dino_deitsmall8_pretrain.pth"
    assert err.url in str(err) and str(err.cache_path) in str(err) and "--pretrained_weights" in str(err)
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []  # no partial file left


def test_a_cached_preset_loads_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    path = preset_cache_path("dino_vits16")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_backbone("vit_small", 16).state_dict(), path)
    # No real weights here: pin this stand-in's digest for the preset, as the released file's is pinned.
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(weights.PINNED, "dino_vits16", (md5[:6], path.stat().st_size))
    model = load_model("dino_vits16")
    assert (model.embed_dim, model.patch_size) == (384, 16)


def test_a_cached_file_that_is_not_the_released_one_is_reported_never_used(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    path = preset_cache_path("dino_vits16")
    path.parent.mkdir(parents=True)
    torch.save(build_backbone("vit_small", 16).state_dict(), path)  # right structure, not the released file
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError) as info:
        load_model("dino_vits16")
    assert str(info.value) == (f"cached preset dino_vits16 at {path} is not the released file (MD5 {md5[:12]}..., "
                               "expected one beginning with cf0f22): delete it to download it again, or pass "
                               "--pretrained_weights PATH")
    monkeypatch.setitem(weights.PINNED, "dino_vits16", (md5[:6], path.stat().st_size + 1))
    with pytest.raises(WeightsError, match=rf"is not the released file \({path.stat().st_size:,} bytes, expected"):
        load_model("dino_vits16")
    # A preset without a pinned digest (ResNet-50) keeps the structural check, for cached files too.
    resnet = preset_cache_path("dino_resnet50")
    torch.save(build_backbone("vit_small", 16).state_dict(), resnet)
    assert not weights.digest_pinned("dino_resnet50")
    with pytest.raises(WeightsError, match=r"cached preset dino_resnet50 .* holds vit_small/16 weights, expected "
                                           r"resnet50/None: delete it"):
        load_model("dino_resnet50")


def test_the_pinned_digests_are_the_released_files(monkeypatch):
    assert weights.PINNED == {"dino_vits16": ("cf0f22", None), "dino_vits8": ("230cd5", 86_728_949),
                              "dino_vitb16": ("552daf", None), "dino_vitb8": ("556550", None)}
    assert all(weights.digest_pinned(name) == (name in weights.PINNED) for name in PRESETS)


def test_a_truncated_or_altered_download_is_never_cached(tmp_path, monkeypatch, tiny_vit_weights):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    full = tiny_vit_weights.read_bytes()
    md5 = hashlib.md5(full).hexdigest()
    monkeypatch.setitem(weights.PINNED, "dino_vits8", (md5[:6], len(full)))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=True: Path(dst).write_bytes(full[: len(full) // 2]))
    with pytest.raises(WeightsError) as info:
        weights.fetch_preset("dino_vits8")
    assert str(info.value) == (f"{PRESETS['dino_vits8'].url}: the download is not the released file "
                               f"({len(full) // 2:,} bytes, expected {len(full):,}); truncated or altered, it was "
                               "not cached")
    altered = bytearray(full)
    altered[-100] ^= 1  # right size, other content
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=True: Path(dst).write_bytes(bytes(altered)))
    with pytest.raises(WeightsError, match=r"the download is not the released file \(MD5 "):
        weights.fetch_preset("dino_vits8")
    # Without a pinned digest, a truncated file fails the structural read: not cached either.
    monkeypatch.delitem(weights.PINNED, "dino_vits8")
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=True: Path(dst).write_bytes(full[: len(full) // 2]))
    with pytest.raises(WeightsError, match="truncated or corrupt checkpoint"):
        weights.fetch_preset("dino_vits8")
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []


def test_a_download_of_the_wrong_model_is_rejected_and_not_cached(tmp_path, monkeypatch, tiny_vit_weights):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=True: torch.save(torch.load(tiny_vit_weights), dst))
    monkeypatch.delitem(weights.PINNED, "dino_vits16")  # the structural check alone (its digest check: above)
    with pytest.raises(WeightsError, match="downloaded weights are vit_tiny/16, expected vit_small/16"):
        weights.fetch_preset("dino_vits16")
    assert not preset_cache_path("dino_vits16").exists()


class _RunsCode:
    """Pickles as a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_foreign_pickle_is_refused_with_its_reason_in_full(tmp_path):
    from dino_seg.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"teacher": {"w": torch.ones(1)}, "payload": _RunsCode(f"touch {marker}")}, evil)
    system = f"{os.system.__module__}.system"  # posix.system on Linux and macOS
    with pytest.raises(WeightsError) as info:
        load_model(evil)
    assert str(info.value) == (f"{evil}: not a readable PyTorch checkpoint (unsupported global {system}: the file "
                               "pickles code or objects other than tensors; refused without running it)")
    with pytest.raises(ValueError) as info:
        load_checkpoint(evil)
    assert f"unsupported global {system}" in str(info.value)
    assert not marker.exists()  # the command never ran
    other = tmp_path / "other.pth"  # a global torch does not block outright, only refuses
    torch.save({"obj": argparse.ArgumentParser}, other)
    with pytest.raises(WeightsError, match=r"\(unsupported global argparse\.ArgumentParser: the file pickles"):
        load_model(other)


def test_a_text_file_or_a_truncated_checkpoint_never_relays_the_weights_only_false_advice(tmp_path,
                                                                                          tiny_vit_weights):
    text = tmp_path / "notes.pth"
    text.write_text("hello world\nthis is text\n")
    with pytest.raises(WeightsError) as info:
        load_model(text)
    assert str(info.value) == (f"{text}: not a readable PyTorch checkpoint (not a PyTorch checkpoint: the file "
                               "starts with 'hello world\\nthis', not a zip archive or a pickle)")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(tiny_vit_weights.read_bytes()[:5000])
    with pytest.raises(WeightsError) as info:
        load_model(cut)
    assert str(info.value) == (f"{cut}: not a readable PyTorch checkpoint (truncated or corrupt checkpoint: its zip "
                               "archive is incomplete)")
    for message in (str(info.value),):
        assert "weights_only" not in message


def test_a_mismatch_names_the_inferred_patch_size_never_none(tiny_vit_weights):
    with pytest.raises(WeightsError) as info:
        load_model(tiny_vit_weights, arch="vit_small")
    assert str(info.value) == (f"{tiny_vit_weights}: the weights are vit_tiny/16, but --arch "
                               "vit_small was asked for (leave --arch and --patch_size out to take them from the "
                               "weights)")
    with pytest.raises(WeightsError, match=r"the weights are vit_tiny/16, but --patch_size 8 was asked for \("):
        load_model(tiny_vit_weights, patch_size=8)

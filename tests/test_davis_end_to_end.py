"""The pure helpers of benchmarks/davis_end_to_end.py: the official-format weights and the mask comparison.
The benchmark itself needs the reference repository and real DAVIS frames, so no test runs it."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from davis_data import save_palette_png

from dino_seg.weights import load_state_dict

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "davis_end_to_end.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("davis_end_to_end", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _png(path: Path, labels: list[list[int]]) -> None:
    save_palette_png(path, np.array(labels))


def test_official_weights_are_seeded_and_in_the_release_format(bench, tmp_path):
    keys = bench.write_official_weights(tmp_path / "a.pth", "vit_tiny", 16, seed=3)
    bench.write_official_weights(tmp_path / "b.pth", "vit_tiny", 16, seed=3)
    bench.write_official_weights(tmp_path / "c.pth", "vit_tiny", 16, seed=4)
    # The names the reference's VisionTransformer (num_classes=0) loads, with no "teacher" or "backbone." wrapping.
    assert keys[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert keys[-2:] == ["norm.weight", "norm.bias"] and "blocks.11.mlp.fc2.bias" in keys
    assert len(keys) == 4 + 12 * 12 + 2  # 12 tensors a block: two norms, qkv, proj, fc1, fc2
    a, b, c = (torch.load(tmp_path / f"{n}.pth") for n in "abc")
    assert list(a) == keys and all(torch.equal(a[k], b[k]) for k in keys)
    assert not torch.equal(a["pos_embed"], c["pos_embed"])
    ours = load_state_dict(tmp_path / "a.pth")  # as eval.davis reads --pretrained_weights
    assert list(ours) == keys and all(torch.equal(ours[k], a[k]) for k in keys)


def test_mask_agreement_counts_pixels_of_the_reference(bench, tmp_path):
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    _png(ref / "s" / "00000.png", [[0, 1], [1, 2]])
    _png(ours / "s" / "00000.png", [[0, 1], [1, 2]])
    _png(ref / "s" / "00001.png", [[0, 1, 1], [0, 0, 2]])
    _png(ours / "s" / "00001.png", [[0, 1, 0], [0, 0, 1]])  # 4 of 6 equal
    _png(ref / "t" / "00000.png", [[1, 1]])  # missing from ours: 0 of 2
    _png(ref / "t" / "00001.png", [[1, 1]])
    _png(ours / "t" / "00001.png", [[1], [1]])  # another shape: 0 of 2
    _png(ours / "t" / "00002.png", [[3]])  # extra: not counted
    (ours / "summary.json").write_text("{}")  # ours writes more than PNGs
    got = bench.compare_masks(ref, ours)
    assert (got.files, got.missing, got.extra, got.pixels, got.equal) == (4, ["t/00000.png"], ["t/00002.png"], 14, 8)
    assert got.share == pytest.approx(8 / 14)
    assert bench.compare_masks(ref, ref).share == 1.0


def test_frames_counted_from_val_list(bench, tmp_path):
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("a\nb\n")
    for name, n in (("a", 3), ("b", 2), ("c", 5)):  # c is not in val.txt
        folder = tmp_path / "JPEGImages" / "480p" / name
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:05d}.jpg").write_bytes(b"")
    assert bench.count_frames(tmp_path) == 5

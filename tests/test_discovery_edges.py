"""Discovery's edge cases and documented rules: image modes, threshold 0, tiny images, MaskCut's stop and single
graph, which errors skip a file, the refinement's IoU < 0.5 discard and zero-annotation video pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_seg import discovery, ncut
from dino_seg.attention import compute_attention
from dino_seg.discovery import discover, extract_features, maskcut_objects
from dino_seg.discovery_io import FILES, write_discovery
from dino_seg.images import ImageError, to_rgb
from dino_seg.masks import mask_iou
from dino_seg.models import build_backbone
from dino_seg.pairing import match_objects, objects_to_labels
from eval.common import each_image


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_backbone("vit_tiny", 16).eval()


def _modes() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    return {
        "L": Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)),
        "RGBA": Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8)),
        "I;16": Image.fromarray((rng.random((40, 50)) * 65535).astype(np.uint16)),
    }


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_any_image_mode_goes_through_extract_features_and_compute_attention(tiny_model, mode):
    image = _modes()[mode]
    assert image.mode == mode
    rgb = to_rgb(image)  # what load_image gives for the same file: gray replicated, alpha dropped, 16 bits scaled
    ours, ref = extract_features(tiny_model, image), extract_features(tiny_model, rgb)
    torch.testing.assert_close(ours.feats["k"], ref.feats["k"], rtol=0, atol=0)
    np.testing.assert_array_equal(ours.cls_attention, ref.cls_attention)
    attn, attn_ref = compute_attention(tiny_model, image, (32,)), compute_attention(tiny_model, rgb, (32,))
    assert attn.maps.shape == (3, 2, 2)
    np.testing.assert_array_equal(attn.maps, attn_ref.maps)


def test_threshold_zero_finds_no_object_and_writes_empty_outputs(tiny_model, tmp_path):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    features = extract_features(tiny_model, image)
    for head in (0, None):
        none = discover(features, "attention", threshold=0.0, dinoseg_head=head)
        assert none.boxes == [] and none.seeds == [] and none.masks.shape == (0, 48, 64)
        everything = discover(features, "attention", threshold=1.0, dinoseg_head=head)
        assert everything.masks.shape == (1, 48, 64) and everything.patches[0].all()  # random attention: no zeros
    paths = write_discovery(tmp_path, np.asarray(image), features, none)
    assert [p.name for p in paths] == list(FILES) and all(p.is_file() for p in paths)
    assert np.load(tmp_path / "masks.npy").shape == (0, 48, 64)
    assert (tmp_path / "boxes.json").read_text() == "[]\n"


def test_a_graph_of_fewer_than_three_patches_is_one_image_error(tiny_model):
    features = extract_features(tiny_model, Image.new("RGB", (32, 16), (10, 200, 30)))  # 2 patches
    for method in ("tokencut", "maskcut"):
        with pytest.raises(ImageError, match=f"image of 32x16 gives 2 patch\\(es\\): --method {method} cuts"):
            discover(features, method)
    assert discover(features, "lost").masks.shape == (1, 16, 32)  # LOST needs no cut


class _ScriptedCut:
    """Stands in for NormalisedCut with given eigenvectors, one per cut, to drive MaskCut's loop."""

    vectors: list[np.ndarray] = []

    def __init__(self, feats, tau, eps, solver) -> None:
        self.calls = 0

    def second_eigenvector(self, removed):
        x = _ScriptedCut.vectors[self.calls]
        self.calls += 1
        return x


def test_maskcut_stops_cleanly_once_every_patch_is_in_an_object(monkeypatch):
    # 2 x 2 patches, each cut isolating one patch: after four objects nothing is left to cut. Before, the
    # fifth cut asked numpy for the maximum of no patch ("zero-size array") on a small image with --n_objects 10.
    _ScriptedCut.vectors = [np.array(v, dtype=float) for v in
                            ([3, -1, -1, -1], [0, 3, -1, -1], [0, 0, 3, -1], [0, 0, -1, 3])]
    monkeypatch.setattr(discovery, "NormalisedCut", _ScriptedCut)
    masks, seeds, _ = maskcut_objects(torch.zeros(4, 8), (2, 2), n_objects=10)
    assert seeds == [0, 1, 2, 3]
    assert [m.ravel().tolist() for m in masks] == [[i == k for i in range(4)] for k in range(4)]


def test_maskcut_builds_the_graph_once(monkeypatch):
    grid = (12, 12)  # 144 patches: above DENSE_MAX_PATCHES, so the sparse graph and the iterative solve
    labels = np.zeros(grid, dtype=int)
    labels[2:6, 2:6] = 1
    labels[7:11, 6:11] = 2
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 32, generator=g)[torch.from_numpy(labels.ravel())] + 0.3 * torch.randn(144, 32, generator=g)
    built, solves = [], []
    real_init, real_solve = ncut.CosineGraph.__init__, ncut.second_eigenvector_iterative
    monkeypatch.setattr(ncut.CosineGraph, "__init__", lambda self, *a: built.append(1) or real_init(self, *a))
    monkeypatch.setattr(ncut, "second_eigenvector_iterative", lambda *a, **k: solves.append(1) or real_solve(*a, **k))
    masks, _, _ = maskcut_objects(feats, grid, n_objects=3, tau=0.15)
    assert len(masks) == 2 and len(solves) == 3  # three cuts (the third finds nothing new) ...
    assert len(built) == 1  # ... on one graph, patches removed by masking


def test_each_image_skips_only_files_that_cannot_be_read(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]

    def work(path: Path) -> str:
        if path.name == "b.png":
            raise ImageError(f"{path}: cannot decode image")
        return path.stem

    assert list(each_image(paths, work, "test")) == [(paths[0], "a"), (paths[2], "c")]
    with pytest.raises(ImageError):  # the only image: its error is the run's
        list(each_image(paths[1:2], work, "test"))

    def buggy(path: Path) -> str:
        raise ValueError("attempt to get argmax of an empty sequence")  # a bug, not an unreadable file

    with pytest.raises(ValueError, match="argmax"):
        list(each_image(paths, buggy, "test"))


def test_refinement_disagreeing_with_the_coarse_mask_is_discarded():
    from dino_seg.bilateral import bilateral_solver_output
    from dino_seg.refine import refine_mask

    yy, xx = np.mgrid[:64, :64]
    square = (yy >= 8) & (yy < 28) & (xx >= 8) & (xx < 28)  # a bright 20 x 20 object on a dark background
    image = np.where(square[..., None], np.uint8(230), np.uint8(20)).repeat(3, axis=2)
    # The object plus every third background pixel: the solver keeps the object only (IoU 400 / ~1600).
    scattered = square | ((yy * 64 + xx) % 3 == 0)
    refined = bilateral_solver_output(image, scattered).mask
    assert refined.any() and mask_iou(refined, scattered) < 0.5
    np.testing.assert_array_equal(refine_mask(image, scattered), scattered)  # discarded: the coarse mask stays
    # The object plus a few background pixels: IoU >= 0.5, the refinement is kept.
    sparse = square | ((yy >= 40) & ((yy * 64 + xx) % 9 == 0))
    refined = bilateral_solver_output(image, sparse).mask
    assert mask_iou(refined, sparse) >= 0.5 and not np.array_equal(refined, sparse)
    np.testing.assert_array_equal(refine_mask(image, sparse), refined)


def _strip(a: int, b: int, width: int = 20) -> np.ndarray:
    mask = np.zeros((1, width), dtype=bool)
    mask[0, a:b] = True
    return mask


def test_pairing_maximises_the_summed_iou_and_needs_overlap():
    g0, g1 = _strip(0, 10), _strip(10, 20)
    p0 = _strip(0, 15)  # IoU 10/15 with g0, 5/20 with g1
    p1 = _strip(1, 9)  # IoU 8/10 with g0, 0 with g1
    # Pairing in discovery order would give p0 the better g0 and leave p1 alone (sum 0.67); the Hungarian
    # assignment pairs p0 with g1 and p1 with g0 (sum 1.05).
    assert match_objects(np.stack([p0, p1]), [g0, g1]) == {0: 1, 1: 0}
    # Many against one: both overlap only g0, the better one takes it, the other stays unpaired.
    assert match_objects(np.stack([p1, _strip(0, 5)]), [g0, g1]) == {0: 0}
    # IoU 0 is no pair, even with an annotated object free.
    assert match_objects(np.stack([_strip(0, 5)]), [g1]) == {}
    assert match_objects(np.zeros((0, 1, 20), bool), [g0]) == {}


def test_zero_annotation_labels_take_the_paired_ids_and_drop_the_rest():
    annotation = np.zeros((1, 20), dtype=np.uint8)
    annotation[0, 0:8], annotation[0, 8:12], annotation[0, 14:20] = 3, 255, 7  # ids 3 and 7, void between
    found = np.stack([_strip(1, 7), _strip(2, 6), _strip(12, 14), _strip(15, 19)])
    labels = objects_to_labels(found, annotation)
    # Object 0 takes id 3; object 1 (also on id 3) and object 2 (on nothing) are dropped; object 3 takes 7.
    assert labels[0].tolist() == [0] + [3] * 6 + [0] * 8 + [7] * 4 + [0]
    # Without an annotation object i is label i + 1, earlier objects winning overlaps.
    assert objects_to_labels(found)[0].tolist() == [0] + [1] * 6 + [0] * 5 + [3] * 2 + [0] + [4] * 4 + [0]
    with pytest.raises(ValueError, match="annotation of"):
        objects_to_labels(found, annotation[:, :10])


def test_eval_discover_scores_a_shared_stem_only_against_its_own_subfolder(tmp_path, tiny_vit_weights, capsys):
    from eval import discover as cli

    rng = np.random.default_rng(5)
    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(images / sub / "x.png")
    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray(np.full((32, 48), 255, np.uint8)).save(gt / "x.png")  # names both images' stem
    base = ["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(images), "--device", "cpu",
            "--gt_dir", str(gt), "--output_dir", str(tmp_path / "out")]
    # a/x.png and b/x.png share the stem: gt/x.png is neither's (before, both were scored against it).
    assert cli.main(base) == 2
    assert "no mask PNG or VOC XML named like any of the 2 image(s)" in capsys.readouterr().err
    (gt / "a").mkdir()
    Image.fromarray(np.full((32, 48), 255, np.uint8)).save(gt / "a" / "x.png")
    assert cli.main(base) == 0
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["a/x.png"]
    assert "warning: no ground truth for b/x.png; not scored" in capsys.readouterr().out

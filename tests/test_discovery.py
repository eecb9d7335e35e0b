"""Object discovery: each method against a plain transcription of its reference, the solver, padding, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.linalg import eigh
from torchvision import transforms

from dino_seg.discovery import (DiscoveryFeatures, discover, extract_features, maskcut_objects, preprocess,
                                tokencut_object)
from dino_seg.images import IMAGENET_MEAN, IMAGENET_STD, ImageError
from dino_seg.groundtruth import read_voc_boxes
from dino_seg.masks import box_iou, mask_extent
from dino_seg.pairing import match_objects
from dino_seg.models import build_backbone
from dino_seg.ncut import CosineGraph, second_eigenvector_dense, second_eigenvector_iterative
from dino_seg.viz import davis_palette
from eval import discover as cli
from reference_vit import reference_forward

PATCH = 16


def blob_features(grid: tuple[int, int], seed: int, dim: int = 48, noise: float = 0.8) -> torch.Tensor:
    """Random features (N, D) with a background and two rectangular objects, each its own cluster."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    labels = torch.zeros(grid, dtype=torch.long)
    for k in (1, 2):
        y0, x0 = torch.randint(0, h - 3, (1,), generator=g).item(), torch.randint(0, w - 3, (1,), generator=g).item()
        dy, dx = torch.randint(2, 5, (2,), generator=g).tolist()
        labels[y0:y0 + dy, x0:x0 + dx] = k
    centres = torch.randn(3, dim, generator=g) + 0.5
    return centres[labels.ravel()] + noise * torch.randn(h * w, dim, generator=g)


def hand_features(grid, input_hw, seed=0) -> DiscoveryFeatures:
    feats = {name: blob_features(grid, seed + i) for i, name in enumerate("kqv")}
    g = torch.Generator().manual_seed(seed)
    attn = torch.rand(3, *grid, generator=g).numpy() ** 3
    return DiscoveryFeatures(feats, attn, grid, (float(PATCH), float(PATCH)), input_hw, input_hw)


# ---- plain transcriptions of the references (numpy/scipy as their scripts do) ----

def ref_detect_box(bipartition, seed, dims, scales, initial_im_size):
    # TokenCut's / LOST's detect_box: component of the seed, extent times the scale, max side clipped.
    objects, _ = scipy.ndimage.label(bipartition)
    cc = objects[np.unravel_index(seed, dims)]
    mask = np.where(objects == cc)
    ymin, ymax = min(mask[0]), max(mask[0]) + 1
    xmin, xmax = min(mask[1]), max(mask[1]) + 1
    r_xmin, r_xmax = scales[1] * xmin, scales[1] * xmax
    r_ymin, r_ymax = scales[0] * ymin, scales[0] * ymax
    r_ymax = min(r_ymax, initial_im_size[0])
    r_xmax = min(r_xmax, initial_im_size[1])
    return [r_xmin, r_ymin, r_xmax, r_ymax], objects == cc


def ref_tokencut(feats, dims, scales, init_size, tau=0.2, eps=1e-5):
    # TokenCut object_discovery.ncut
    feats = F.normalize(feats, p=2)
    A = (feats @ feats.transpose(1, 0)).numpy()
    A = A > tau
    A = np.where(A.astype(float) == 0, eps, A)
    d_i = np.sum(A, axis=1)
    D = np.diag(d_i)
    _, eigenvectors = eigh(D - A, D, subset_by_index=[1, 2])
    eigenvec = np.copy(eigenvectors[:, 0])
    second_smallest_vec = eigenvectors[:, 0]
    avg = np.sum(second_smallest_vec) / len(second_smallest_vec)
    bipartition = second_smallest_vec > avg
    seed = np.argmax(np.abs(second_smallest_vec))
    if bipartition[seed] != 1:
        eigenvec = eigenvec * -1
        bipartition = np.logical_not(bipartition)
    bipartition = bipartition.reshape(dims).astype(float)
    pred, mask = ref_detect_box(bipartition, seed, dims, scales, init_size)
    return pred, mask, seed, eigenvec.reshape(dims)


def ref_lost(feats, dims, scales, init_size, k_patches=100):
    # LOST object_discovery.lost + patch_scoring (argsort made stable so ties are reproducible)
    A = feats @ feats.transpose(1, 0)
    M = A.clone()
    M.fill_diagonal_(0)
    M[M < 0] = 0
    cent = -torch.sum(M > 0, dim=1).type(torch.float32)
    sel = torch.argsort(cent, descending=True, stable=True)
    seed = sel[0]
    potentials = sel[:k_patches]
    similars = potentials[A[seed, potentials] > 0.0]
    M = torch.sum(A[similars, :], dim=0)
    pred, mask = ref_detect_box(M.reshape(dims).numpy() > 0.0, seed.item(), dims, scales, init_size)
    return pred, mask, int(seed)


def ref_dinoseg(attn, dims, patch_size, head):
    # LOST's dino_seg on the [CLS] rows (heads, N), with the largest component taken over all labels.
    nh = attn.shape[0]
    val, idx = torch.sort(attn)
    val /= torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - 0.6)
    idx2 = torch.argsort(idx)
    for h in range(nh):
        th_attn[h] = th_attn[h][idx2[h]]
    th_attn = th_attn.reshape(nh, *dims).float()
    labeled_array, _ = scipy.ndimage.label(th_attn[head].numpy())
    size_components = [np.sum(labeled_array == c) for c in range(np.max(labeled_array) + 1)]
    biggest_component = np.argmax(size_components[1:]) + 1
    mask = np.where(labeled_array == biggest_component)
    ymin, ymax = min(mask[0]), max(mask[0]) + 1
    xmin, xmax = min(mask[1]), max(mask[1]) + 1
    return [xmin * patch_size, ymin * patch_size, xmax * patch_size, ymax * patch_size], labeled_array == biggest_component


def cutler_cut(second_smallest_vec, dims):
    # maskcut_forward's step from the eigenvector to the partition and seed (bipartition by the mean, the seed
    # argmax |x|, reverse on 3+ corners or a seed outside, the new seed argmax of the reversed vector).
    def check_num_fg_corners(bipartition, dims):
        bipartition_ = bipartition.reshape(dims)
        top_l, top_r = bipartition_[0][0], bipartition_[0][-1]
        bottom_l, bottom_r = bipartition_[-1][0], bipartition_[-1][-1]
        return int(top_l) + int(top_r) + int(bottom_l) + int(bottom_r)

    eigenvec = np.copy(second_smallest_vec)
    avg = np.sum(second_smallest_vec) / len(second_smallest_vec)
    bipartition = second_smallest_vec > avg
    seed = np.argmax(np.abs(second_smallest_vec))
    nc = check_num_fg_corners(bipartition, dims)
    if nc >= 3:
        reverse = True
    else:
        reverse = bipartition[seed] != 1
    if reverse:
        eigenvec = eigenvec * -1
        bipartition = np.logical_not(bipartition)
        seed = np.argmax(eigenvec)
    else:
        seed = np.argmax(second_smallest_vec)
    bipartition = bipartition.reshape(dims).astype(float)
    _, cc = ref_detect_box(bipartition, seed, dims, (1, 1), dims)
    return bipartition, seed, cc


def cutler_maskcut(feats, dims, tau=0.15, N=3, eps=1e-5, flip=()):
    # CutLER's maskcut_forward (maskcut/maskcut.py) at patch level, as written there: feats (dim, num_patch),
    # masks at patch resolution. `flip`: the cuts whose eigenvector comes out negated (another LAPACK's sign).
    # Also returns, per cut, whether removed patches could have decided it (where our deviation applies): one
    # is in the seed's component, or one sits in a corner (the corner count includes it).
    def get_affinity_matrix(feats, tau, eps=1e-5):
        feats = F.normalize(feats, p=2, dim=0)
        A = (feats.transpose(0, 1) @ feats).numpy()
        A = A > tau
        A = np.where(A.astype(float) == 0, eps, A)
        d_i = np.sum(A, axis=1)
        D = np.diag(d_i)
        return A, D

    bipartitions, seeds, deviates = [], [], []
    for i in range(N):
        if i == 0:
            painting = torch.zeros(dims, dtype=torch.float64)
        else:  # get_masked_affinity_matrix: found patches get zero features
            dim, num_patch = feats.shape
            painting = painting + current_mask.unsqueeze(0)
            painting[painting > 0] = 1
            painting[painting <= 0] = 0
            feats = ((1 - painting) * feats.clone().view(dim, *dims)).view(dim, num_patch).float()
        A, D = get_affinity_matrix(feats, tau, eps)
        _, eigenvectors = eigh(D - A, D, subset_by_index=[1, 2])
        second_smallest_vec = -eigenvectors[:, 0] if i in flip else eigenvectors[:, 0]
        bipartition, seed, cc = cutler_cut(second_smallest_vec, dims)
        removed = painting.reshape(dims).numpy() > 0
        deviates.append(bool((cc & removed).any() or removed[[0, 0, -1, -1], [0, -1, 0, -1]].any()))
        pseudo_mask = torch.from_numpy(cc.astype(np.float64))
        if i >= 1:
            ratio = torch.sum(pseudo_mask) / pseudo_mask.size()[0] / pseudo_mask.size()[1]
            # TokenCut's metric.IoU of the two binary masks
            inter = ((current_mask > 0.5) & (pseudo_mask > 0.5)).sum()
            union = ((current_mask > 0.5) | (pseudo_mask > 0.5)).sum()
            if inter / union > 0.5 or ratio <= 0.01:
                pseudo_mask = torch.zeros(dims, dtype=torch.float64)
        current_mask = pseudo_mask
        masked_out = 0 if len(bipartitions) == 0 else np.sum(bipartitions, axis=0)
        bipartition_masked = pseudo_mask.numpy() - masked_out
        bipartition_masked[bipartition_masked <= 0] = 0
        bipartitions.append(bipartition_masked)
        seeds.append(seed)
    return [b > 0 for b in bipartitions], seeds, deviates


# ---- the methods against the transcriptions ----

GRID = (11, 14)
INPUT_HW = (GRID[0] * PATCH - 5, GRID[1] * PATCH - 9)  # the last patch row and column are partly padding


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("solver", ["dense", "iterative"])
def test_tokencut_equals_reference(seed, solver):
    feats = hand_features(GRID, INPUT_HW, seed)
    result = discover(feats, "tokencut", solver=solver)
    pred, mask, ref_seed, vec = ref_tokencut(feats.feats["k"].clone(), GRID, (PATCH, PATCH), INPUT_HW)
    assert result.seed == ref_seed
    assert np.array_equal(result.patches[0], mask)
    assert result.boxes == [[float(v) for v in pred]]
    np.testing.assert_allclose(result.scores, vec, atol=1e-5 if solver == "iterative" else 1e-9, rtol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k_patches", [100, 7])
def test_lost_equals_reference(seed, k_patches):
    feats = hand_features(GRID, INPUT_HW, seed)
    result = discover(feats, "lost", k_patches=k_patches, which_features="q")
    pred, mask, ref_seed = ref_lost(feats.feats["q"].clone(), GRID, (PATCH, PATCH), INPUT_HW, k_patches)
    assert result.seed == ref_seed
    assert np.array_equal(result.patches[0], mask)
    assert result.boxes == [[float(v) for v in pred]]


@pytest.mark.parametrize("head", [0, 2])
def test_attention_baseline_equals_reference(head):
    grid = (9, 12)
    feats = hand_features(grid, (grid[0] * PATCH, grid[1] * PATCH), seed=head)
    result = discover(feats, "attention", dinoseg_head=head)
    attn = torch.from_numpy(feats.cls_attention).reshape(3, -1).double()
    pred, mask = ref_dinoseg(attn.clone(), grid, PATCH, head)
    assert np.array_equal(result.patches[0], mask)
    assert result.boxes == [[float(v) for v in pred]]
    assert mask.ravel()[result.seed]


def test_maskcut_equals_cutler_up_to_the_documented_deviations():
    compared = 0
    for seed in range(8):
        feats = blob_features(GRID, seed)
        theirs, their_seeds, deviates = cutler_maskcut(feats.T.clone(), GRID)
        # Up to the first cut that removed patches could decide (see the tests of each deviation below), the
        # objects, in order, and their seeds are CutLER's; CutLER's empty masks are not listed.
        agree = deviates.index(True) if True in deviates else len(deviates)
        kept = [(m, s) for m, s in zip(theirs[:agree], their_seeds[:agree]) if m.any()]
        for solver in ("dense", "iterative"):
            masks, seeds, _ = maskcut_objects(feats, GRID, n_objects=3, tau=0.15, solver=solver)
            assert len(masks) >= len(kept)
            for ours, our_seed, (mask, their_seed) in zip(masks, seeds, kept):
                assert np.array_equal(ours, mask) and our_seed == their_seed
            if agree == len(deviates):
                assert len(masks) == len(kept)
        compared += agree
    assert compared >= 8 + 2  # every first cut, and the later ones no removed patch decides


def test_maskcut_lists_found_objects_only():
    feats = blob_features(GRID, 1)
    theirs, _, _ = cutler_maskcut(feats.T.clone(), GRID)
    assert [int(m.sum()) for m in theirs] == [25, 0, 0]  # CutLER keeps the dropped cuts as empty masks
    masks, _, _ = maskcut_objects(feats, GRID, n_objects=3, tau=0.15)
    assert len(masks) == 1 and np.array_equal(masks[0], theirs[0])


def test_maskcut_fixes_the_eigenvector_sign_before_the_corner_rule():
    # The seed argmax |x| (patch 0) on the side holding 3 corners of a 3 x 3 grid: CutLER's answer then depends on
    # the sign LAPACK returns; ours is the same for both signs.
    x = np.array([5.0, -1, 1, -1, -1, -1, 1, -1, -1])
    _, _, plus = cutler_cut(x, (3, 3))
    _, _, minus = cutler_cut(-x, (3, 3))
    assert plus.ravel().tolist() == [False, True, False, True, True, True, False, True, True]
    assert minus.ravel().tolist() == [True] + [False] * 8
    for vector in (x, -x):
        from test_discovery_edges import _ScriptedCut

        _ScriptedCut.vectors = [vector]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("dino_seg.discovery.NormalisedCut", _ScriptedCut)
            masks, seeds, _ = maskcut_objects(torch.zeros(9, 4), (3, 3), n_objects=1)
        assert seeds == [1] and np.array_equal(masks[0], plus)


def test_maskcut_removed_patches_never_bridge_objects():
    # Seed 0's second cut: CutLER's removed (zeroed) patches sit on the kept side of the split, so its component
    # of the seed runs through the first object and collects patches beyond it, which stay as a separate island
    # once the first object is subtracted. Removed patches join no side here: each object is one 4-connected piece.
    feats = blob_features(GRID, 0)
    theirs, their_seeds, deviates = cutler_maskcut(feats.T.clone(), GRID)
    masks, seeds, _ = maskcut_objects(feats, GRID, n_objects=3, tau=0.15)
    assert deviates[:2] == [False, True] and seeds[:2] == their_seeds[:2]
    assert scipy.ndimage.label(theirs[1])[1] > 1  # islands joined only through the removed object
    assert all(scipy.ndimage.label(m)[1] == 1 for m in masks)
    assert (masks[1] & ~theirs[1]).sum() == 0 and theirs[1].sum() > masks[1].sum()


def test_maskcut_corner_rule_and_removal():
    # A background touching all four corners, two objects: the first cut must not return the
    # background (corner rule), the second must find the other object (first one removed).
    grid = (12, 12)
    labels = np.zeros(grid, dtype=int)
    labels[2:6, 2:6] = 1
    labels[7:11, 6:11] = 2
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 32, generator=g)
    feats = centres[torch.from_numpy(labels.ravel())] + 0.3 * torch.randn(144, 32, generator=g)
    masks, _, _ = maskcut_objects(feats, grid, n_objects=3, tau=0.15)
    found = sorted(tuple(np.unique(labels[m])) for m in masks)
    assert found == [(1,), (2,)]  # the background is never an object; both objects are found once
    assert not np.logical_and(masks[0], masks[1]).any()


def test_iterative_solver_equals_dense_solver():
    grid = (18, 24)  # 432 patches
    feats = blob_features(grid, seed=5, dim=64, noise=1.2)
    dense = second_eigenvector_dense(feats, 0.2, 1e-5)
    iterative = second_eigenvector_iterative(feats, 0.2, 1e-5)
    cos = abs(dense @ iterative) / np.linalg.norm(dense) / np.linalg.norm(iterative)
    assert cos >= 0.999
    m_dense, _, _ = tokencut_object(feats, grid, solver="dense")
    m_iter, _, _ = tokencut_object(feats, grid, solver="iterative")
    assert (m_dense == m_iter).mean() >= 0.99


@pytest.mark.parametrize("centred, complement", [(True, False), (False, True)])
def test_iterative_solver_stores_the_sparser_side(centred, complement):
    # Centred features: few cosines above tau, the graph itself is sparse; off-centre ones: most
    # cosines above tau, the complement is stored. Both give the dense solve's vector.
    feats = blob_features((16, 16), seed=1, noise=0.8)
    feats = feats - feats.mean(0) if centred else feats + 0.3
    assert CosineGraph(feats, 0.2, 1e-5).complement == complement
    dense = second_eigenvector_dense(feats, 0.2, 1e-5)
    iterative = second_eigenvector_iterative(feats, 0.2, 1e-5)
    assert abs(dense @ iterative) / np.linalg.norm(dense) / np.linalg.norm(iterative) >= 0.999
    np.testing.assert_allclose(np.abs(iterative), np.abs(dense), atol=1e-6)


# ---- preprocessing, boxes, the backbone, caps ----

def test_preprocess_zero_pads_after_normalisation():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8))
    x, hw, note = preprocess(image, PATCH)
    assert x.shape == (1, 3, 48, 64) and hw == (37, 50) and note == ""
    expected = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(image))
    assert torch.equal(x[0, :, :37, :50], expected)
    assert not x[0, :, 37:].any() and not x[0, :, :, 50:].any()
    with pytest.raises(ImageError, match="smaller than one 16-pixel patch"):
        preprocess(Image.new("RGB", (10, 40)), PATCH)


def test_boxes_are_clipped_to_the_image():
    feats = hand_features((4, 5), (4 * PATCH - 5, 5 * PATCH - 9))
    feats.cls_attention = np.full((3, 4, 5), 0.1, dtype=np.float32)  # background: 1.6 of 5.6, under 40%
    feats.cls_attention[0, 2:, 3:] = 1.0  # the object is the bottom-right 2 x 2 patches
    result = discover(feats, "attention", dinoseg_head=0)
    assert result.boxes == [[48.0, 32.0, 71.0, 59.0]]  # 80 -> 71 and 64 -> 59
    assert result.masks.shape == (1, 59, 71)
    assert result.masks[0, 32:, 48:].all() and result.masks[0].sum() == 27 * 23


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_backbone("vit_tiny", PATCH).eval()


def test_features_are_the_last_block_keys_with_heads_concatenated(tiny_model):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    feats = extract_features(tiny_model, image)
    assert feats.grid == (3, 4) and feats.input_hw == (40, 56)
    # LOST's hook: the last block's qkv output, reshaped and transposed as main_lost.py does.
    out = {}
    handle = tiny_model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: out.update(qkv=o))
    x, _, _ = preprocess(image, PATCH)
    with torch.no_grad():
        tiny_model.forward_features(x)
    handle.remove()
    nh = tiny_model.blocks[-1].attn.num_heads
    qkv = out["qkv"].reshape(1, 13, 3, nh, -1).permute(2, 0, 3, 1, 4)
    k = qkv[1].transpose(1, 2).reshape(1, 13, -1)
    torch.testing.assert_close(feats.feats["k"], k[0, 1:], rtol=1e-4, atol=1e-5)
    assert feats.cls_attention.shape == (nh, 3, 4)
    # The [CLS] row of the last block's attention, as a plain ViT forward computes it (zero padding included).
    ref = reference_forward(tiny_model.state_dict(), x, heads=nh, return_last_attention=True)  # (1, nh, 13, 13)
    np.testing.assert_allclose(feats.cls_attention, ref[0, :, 0, 1:].reshape(nh, 3, 4).numpy(), rtol=0, atol=1e-6)


def test_a_huge_image_is_capped_not_fatal(tiny_model):
    image = Image.new("RGB", (4032, 3024), (90, 120, 200))
    feats = extract_features(tiny_model, image, max_patches=48)
    assert feats.grid[0] * feats.grid[1] <= 48 and "over the cap of 48" in feats.note
    result = discover(feats, "tokencut")
    assert result.masks.shape[1:] == (3024, 4032) and result.note == feats.note
    x0, y0, x1, y1 = result.boxes[0]
    assert 0 <= x0 < x1 <= 4032 and 0 <= y0 < y1 <= 3024


def test_resnet_runs_lost_only():
    torch.manual_seed(0)
    model = build_backbone("resnet50").eval()
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (70, 100, 3), dtype=np.uint8))
    feats = extract_features(model, image)
    assert feats.grid == (3, 4)  # padded to 80 x 112, stride 32
    f = feats.features()
    assert abs(float(f.mean())) < 1e-4 and abs(float(f.std(unbiased=False)) - 1) < 1e-2  # LayerNorm over (N, D)
    result = discover(feats, "lost")
    assert result.masks.shape == (1, 70, 100)
    with pytest.raises(ValueError, match="ResNet-50 weights only run --method lost"):
        discover(feats, "tokencut")


def test_tau_outside_the_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="--tau"):
        discover(hand_features(GRID, INPUT_HW), "tokencut", tau=1.5)


# ---- scoring helpers ----

def test_voc_boxes_and_matching(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>20</xmax>"
                   "<ymax>30</ymax></bndbox></object><object><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>6</xmax>"
                   "<ymax>6</ymax></bndbox></object></annotation>")
    assert read_voc_boxes(xml) == [[0.0, 10.0, 20.0, 30.0], [4.0, 4.0, 6.0, 6.0]]
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    a, b = np.zeros((2, 4, 4), bool), np.zeros((4, 4), bool)
    a[0, :2], a[1, 2:], b[2:] = True, True, True
    assert match_objects(a, [b, a[0]]) == {0: 1, 1: 0}


# ---- the command ----

def _write_image(path, seed, size=(48, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_cli_outputs_and_scores(tmp_path, tiny_vit_weights, capsys):
    images = tmp_path / "images"
    _write_image(images / "one.png", 0)
    _write_image(images / "sub" / "two.jpg", 1, (40, 72))
    out = tmp_path / "out"
    base = ["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(images), "--device", "cpu"]
    assert cli.main(base + ["--output_dir", str(out)]) == 0
    one, two = out / "one", out / "sub" / "two"
    patches, masks = np.load(one / "patches.npy"), np.load(one / "masks.npy")
    assert patches.dtype == bool and patches.shape == (1, 3, 4)
    assert masks.dtype == bool and masks.shape == (1, 48, 64)
    assert np.load(two / "masks.npy").shape == (1, 40, 72)
    assert np.load(one / "scores.npy").dtype == np.float32
    assert (one / "objects.png").is_file() and (one / "scores.png").is_file()
    box_two = json.loads((two / "boxes.json").read_text())[0]

    # Hand-made ground truth: a palette mask equal to one.png's prediction (Jaccard 1, CorLoc 1) with a
    # void border, and a VOC XML whose second box is two.jpg's predicted box (CorLoc 1).
    gt = tmp_path / "gt"
    (gt / "Annotations").mkdir(parents=True)
    label = masks[0].astype(np.uint8) * 3
    img = Image.fromarray(label, mode="P")
    img.putpalette(davis_palette().ravel().tolist())
    img.save(gt / "one.png")
    x0, y0, x1, y1 = box_two
    (gt / "Annotations" / "two.xml").write_text(
        "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>"
        f"<object><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
        "</object></annotation>")
    capsys.readouterr()
    assert cli.main(base + ["--output_dir", str(out), "--gt_dir", str(gt)]) == 0
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "image,objects,jaccard,corloc,maxFbeta,IoU,Acc"
    assert rows[1] == "one.png,1,1.0000,1.0000,1.0000,1.0000,1.0000"
    assert rows[2] == "sub/two.jpg,1,,1.0000,,,"  # boxes only: no mask scores
    assert "CorLoc 100.0, Jaccard 100.0 (%) over 2 image(s)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coarse"] == {"maxFbeta": 1.0, "IoU": 1.0, "Acc": 1.0, "CorLoc": 1.0, "Jaccard": 1.0}
    assert "refined" not in summary and summary["images"] == 2

    # A box that misses: CorLoc 0 for that image; the complement of the predicted mask: Jaccard 0, and 0 for
    # the saliency scores too (every pixel wrong); its CorLoc is the box overlap with the complement's extent.
    (gt / "Annotations" / "two.xml").write_text(
        "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>"
        "</annotation>")
    Image.fromarray((~masks[0]).astype(np.uint8) * 255).save(gt / "one.png")
    assert cli.main(base + ["--output_dir", str(out), "--gt_dir", str(gt)]) == 0
    rows = (out / "scores.csv").read_text().splitlines()
    box_one = json.loads((one / "boxes.json").read_text())[0]
    hit = float(box_iou(box_one, mask_extent(~masks[0])) >= 0.5)
    assert rows[1] == f"one.png,1,0.0000,{hit:.4f},0.0000,0.0000,0.0000"
    assert rows[2] == "sub/two.jpg,1,,0.0000,,,"


def test_cli_errors(tmp_path, tiny_vit_weights, capsys):
    _write_image(tmp_path / "a.png", 0)
    base = ["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(tmp_path / "a.png"),
            "--output_dir", str(tmp_path / "o")]
    assert cli.main(base + ["--tau", "1.2"]) == 2
    assert "--tau" in capsys.readouterr().err
    (tmp_path / "gt").mkdir()
    assert cli.main(base + ["--gt_dir", str(tmp_path / "gt")]) == 2
    assert "no mask PNG or VOC XML named like" in capsys.readouterr().err
    assert cli.main(base[:2] + ["--image_path", str(tmp_path / "missing.png")]) == 2
    assert "--image_path" in capsys.readouterr().err
    assert cli.main(["--pretrained_weights", "random", "--arch", "resnet50", "--image_path",
                     str(tmp_path / "a.png"), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "ResNet-50" in err and len(err.strip().splitlines()) == 1


# ---- --refine ----

def test_refine_snaps_a_patch_mask_to_the_object_edges():
    from dino_seg.refine import refine_mask, refine_masks

    yy, xx = np.mgrid[:96, :128]
    disk = (yy - 45) ** 2 + (xx - 70) ** 2 < 30 ** 2
    image = np.where(disk[..., None], np.uint8(220), np.uint8(30)).repeat(3, axis=2)
    blocky = np.kron(disk[8::16, 8::16], np.ones((16, 16), dtype=bool))  # the disk seen through 16-px patches
    refined = refine_mask(image, blocky)

    def iou(a, b):
        return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()

    assert iou(refined, disk) > 0.97 > iou(blocky, disk)
    assert refine_masks(image, np.zeros((0, 96, 128), bool)).shape == (0, 96, 128)
    assert not refine_mask(image, np.zeros((96, 128), bool)).any()


# ---- zero-annotation video ----

def test_discovered_labels_take_the_ids_of_the_annotated_objects_they_match(tiny_model):
    from dino_seg.pairing import discovered_labels

    image = Image.fromarray(np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    found = discover(extract_features(tiny_model, image), "tokencut").masks[0]
    plain = discovered_labels(tiny_model, image)
    assert np.array_equal(plain, found.astype(np.uint8))
    # Annotated object 2 is exactly the discovered one, object 1 lies elsewhere: the object becomes 2.
    annotation = np.where(found, 2, 0).astype(np.uint8)
    annotation[~found] = np.where(np.arange((~found).sum()) < 5, 1, 0)
    annotation[0, 0] = 255
    labels = discovered_labels(tiny_model, image, annotation)
    assert np.array_equal(labels, np.where(found, 2, 0))
    with pytest.raises(ValueError, match="annotation of"):
        discovered_labels(tiny_model, image, annotation[:10])


def test_davis_first_frame_discover(tmp_path, tiny_vit_weights, capsys):
    from davis_data import make_davis
    from eval import davis as davis_cli

    root = make_davis(tmp_path / "davis", {"shapes": 4}, n_objects=2)
    out = tmp_path / "out"
    code = davis_cli.main(["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(root), "--output_dir",
                           str(out), "--short_side", "64", "--device", "cpu", "--first_frame", "discover",
                           "--method", "maskcut", "--n_objects", "2"])
    assert code == 0, capsys.readouterr().err
    from dino_seg.pairing import discovered_labels
    from dino_seg.images import load_image
    from dino_seg.weights import load_model

    model = load_model(str(tiny_vit_weights), device="cpu").eval()
    annotation = np.array(Image.open(root / "Annotations" / "480p" / "shapes" / "00000.png"))
    expected = discovered_labels(model, load_image(root / "JPEGImages" / "480p" / "shapes" / "00000.jpg"),
                                 annotation, "maskcut", n_objects=2)
    assert np.array_equal(np.array(Image.open(out / "shapes" / "00000.png")), expected)
    assert sorted(p.name for p in (out / "shapes").iterdir()) == [f"{t:05d}.png" for t in range(4)]
    assert (out / "global_results-val.csv").is_file()
    # Resuming with another discovery method would mix first frames: refused, as other settings are.
    code = davis_cli.main(["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(root), "--output_dir",
                           str(out), "--short_side", "64", "--device", "cpu", "--first_frame", "discover",
                           "--method", "tokencut"])
    assert code == 2 and "other settings" in capsys.readouterr().err

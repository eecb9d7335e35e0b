"""Object confidence (1 - Ncut on TokenCut's graph) and MaskCut's automatic object count."""

import numpy as np
import pytest
import torch

from dino_seg.discovery import maskcut_objects
from dino_seg.objectness import MAX_NCUT, affinity_product, auto_count, ncut_values, object_ncuts, score_from_ncut


def _dense_ncut(feats, mask, keep, tau=0.2, eps=1e-5):
    f = torch.nn.functional.normalize(feats.double(), dim=-1).numpy()
    a = np.where(f @ f.T > tau, 1.0, eps)[np.ix_(keep, keep)]
    m = mask[keep]
    cut = a[m][:, ~m].sum()
    return cut / a[m].sum() + cut / a[~m].sum()


def _scene(grid=(6, 8), seed=0):
    """Features of a grid: a 2 x 3 object (one direction) on a background (another), with noise."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    obj = np.zeros(grid, dtype=bool)
    obj[1:3, 2:5] = True
    base = torch.zeros(n, 16)
    base[:, 0] = 1.0
    base[torch.from_numpy(obj.ravel()), 0] = 0.0
    base[torch.from_numpy(obj.ravel()), 1] = 1.0
    return base + 0.02 * torch.randn(n, 16, generator=g), obj


def test_ncut_matches_dense_definition():
    feats, obj = _scene()
    rng = np.random.default_rng(0)
    masks = rng.random((3, feats.shape[0])) < 0.3
    removed = rng.random((3, feats.shape[0])) < 0.2
    values = ncut_values(feats, masks, removed, 0.2)  # three masks, one pass
    for value, mask, gone in zip(values, masks, removed):
        assert value == pytest.approx(_dense_ncut(feats, mask & ~gone, ~gone), rel=1e-5)
    u = rng.random((48, 2))
    f = torch.nn.functional.normalize(feats.double(), dim=-1).numpy()
    np.testing.assert_allclose(affinity_product(feats, u, 0.2), np.where(f @ f.T > 0.2, 1.0, 1e-5) @ u, rtol=1e-6)
    alone = ncut_values(feats, obj.reshape(1, -1), None, 0.2)[0]
    assert alone == pytest.approx(_dense_ncut(feats, obj.ravel(), np.ones(48, bool)))
    assert alone < 1e-3  # joined to nothing outside it
    assert ncut_values(feats, np.ones((1, 48), bool), None, 0.2) == [1.0]  # nothing left to split from
    # sequential: each object without the earlier ones, as MaskCut found them
    two = np.stack([obj.ravel(), masks[0]])
    sequential = object_ncuts(feats, two.reshape(2, 6, 8), 0.2, sequential=True)
    assert sequential[1] == pytest.approx(_dense_ncut(feats, masks[0] & ~obj.ravel(), ~obj.ravel()), rel=1e-5)


def test_featureless_graph_scores_about_zero():
    feats = torch.zeros(48, 4)
    feats[:, 0] = 1.0  # every patch alike: any split costs its share
    mask = np.zeros(48, dtype=bool)
    mask[:12] = True
    assert object_ncuts(feats, mask.reshape(1, 6, 8), 0.2) == [pytest.approx(1.0)]
    assert score_from_ncut(1.0) == 0.0 and score_from_ncut(0.1) == pytest.approx(0.9)
    assert score_from_ncut(1.7) == 0.0


def _two_objects(seed=0):
    """Two objects (their own directions) on a textured background with no object in it: an 8 x 10 grid."""
    g = torch.Generator().manual_seed(seed)
    grid = (8, 10)
    feats = torch.zeros(80, 16)
    feats[:, 0] = 1.0
    objects = np.zeros((2, *grid), dtype=bool)
    objects[0, 1:4, 1:4] = True
    objects[1, 5:7, 5:9] = True
    for k, obj in enumerate(objects):
        feats[torch.from_numpy(obj.ravel())] = torch.eye(16)[k + 1]
    bg = torch.from_numpy(~objects.any(axis=0).ravel())
    feats[bg, 3:] = 0.6 * torch.randn(int(bg.sum()), 13, generator=g)
    return feats + 0.02 * torch.randn(80, 16, generator=g), grid, objects


def test_auto_count_keeps_the_objects_and_stops_on_background():
    feats, grid, objects = _two_objects()
    masks, _, _ = maskcut_objects(feats, grid, n_objects=4, tau=0.15)
    assert len(masks) == 4  # a fixed N forces two background cuts
    ncuts = object_ncuts(feats, np.stack(masks), 0.15, sequential=True)
    count = auto_count(ncuts)
    assert count.kept == 2 and np.array_equal(np.stack(masks[:2]), objects)
    assert max(ncuts[:2]) < 1e-3 and count.stop_ncut == ncuts[2] > 0.9 and count.stop_score < 0.1
    assert auto_count([0.9]).kept == 0 and auto_count([0.9]).stop_score == pytest.approx(0.1)  # no object
    assert auto_count([0.1, 0.2]).stop_ncut is None and MAX_NCUT == 0.5


def _features(feats, grid):
    from dino_seg.discovery import DiscoveryFeatures

    h, w = grid
    return DiscoveryFeatures({"k": feats, "q": feats, "v": feats}, np.ones((1, h, w), dtype=np.float32), grid,
                             (16.0, 16.0), (16 * h, 16 * w), (16 * h, 16 * w))


def test_auto_gives_no_object_rather_than_a_forced_one():
    from dino_seg.discovery import discover

    feats, grid, objects = _two_objects()
    found = discover(_features(feats, grid), "tokencut", n_objects="auto")
    assert len(found.boxes) == 1 and found.object_scores[0] > 0.99 and found.stop_score is None
    flat = torch.zeros(80, 16)
    flat[:, 0] = 1.0  # featureless: every split is arbitrary
    for method in ("tokencut", "maskcut", "lost"):
        none = discover(_features(flat + 0.01 * torch.randn(80, 16, generator=torch.Generator().manual_seed(1)),
                                  grid), method, n_objects="auto")
        assert none.boxes == [] and none.masks.shape == (0, 128, 160) and none.stop_score < 0.5
        forced = discover(_features(flat, grid), method, n_objects=1 if method == "maskcut" else 3)
        assert len(forced.boxes) == 1 and forced.object_scores is None  # without auto: a forced box, no score

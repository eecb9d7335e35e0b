"""Label propagation: the windowed implementation against the reference's dense formula, edge cases and ties."""
from __future__ import annotations

import queue
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dino_seg.models import build_backbone, patch_features
from dino_seg.propagation import (_propagate_prefiltered, dense_propagate_labels, frame_features,
                                  neighborhood_mask, norm_mask, prefilter_tile, propagate_labels,
                                  propagate_sequence, soft_to_mask)


# --- A transcription of eval_video_segmentation.py's restrict_neighborhood / label_propagation / norm_mask
# (CUDA calls dropped, feature extraction replaced by given features), to compare against.
def _ref_restrict_neighborhood(args, h, w):
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * args.size_mask_neighborhood + 1):
                for q in range(2 * args.size_mask_neighborhood + 1):
                    if i - args.size_mask_neighborhood + p < 0 or i - args.size_mask_neighborhood + p >= h:
                        continue
                    if j - args.size_mask_neighborhood + q < 0 or j - args.size_mask_neighborhood + q >= w:
                        continue
                    mask[i, j, i - args.size_mask_neighborhood + p, j - args.size_mask_neighborhood + q] = 1
    return mask.reshape(h * w, h * w)


def _ref_label_propagation(args, feat_tar, h, w, list_frame_feats, list_segs, mask_neighborhood=None):
    # feat_tar: h*w x dim; list_frame_feats: dim x h*w each; list_segs: 1 x C x h x w each.
    return_feat_tar = feat_tar.T
    ncontext = len(list_frame_feats)
    feat_sources = torch.stack(list_frame_feats)
    feat_tar = F.normalize(feat_tar, dim=1, p=2)
    feat_sources = F.normalize(feat_sources, dim=1, p=2)
    feat_tar = feat_tar.unsqueeze(0).repeat(ncontext, 1, 1)
    aff = torch.exp(torch.bmm(feat_tar, feat_sources) / 0.1)
    if args.size_mask_neighborhood > 0:
        if mask_neighborhood is None:
            mask_neighborhood = _ref_restrict_neighborhood(args, h, w)
            mask_neighborhood = mask_neighborhood.unsqueeze(0).repeat(ncontext, 1, 1)
        aff *= mask_neighborhood
    aff = aff.transpose(2, 1).reshape(-1, h * w)
    tk_val, _ = torch.topk(aff, dim=0, k=args.topk)
    tk_val_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_val_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, axis=0)
    segs = torch.cat(list_segs)
    nmb_context, C, h, w = segs.shape
    segs = segs.reshape(nmb_context, C, -1).transpose(2, 1).reshape(-1, C).T
    seg_tar = torch.mm(segs, aff)
    seg_tar = seg_tar.reshape(1, C, h, w)
    return seg_tar, return_feat_tar, mask_neighborhood


def _ref_norm_mask(mask):
    c, h, w = mask.size()
    for cnt in range(c):
        mask_cnt = mask[cnt, :, :]
        if mask_cnt.max() > 0:
            mask_cnt = mask_cnt - mask_cnt.min()
            mask_cnt = mask_cnt / mask_cnt.max()
            mask[cnt, :, :] = mask_cnt
    return mask


def _ref_video(args, feats, first_seg):
    """The reference's per-video loop on given features (h, w, D) per frame; soft outputs (1, C, h, w)."""
    h, w, d = feats[0].shape
    que = queue.Queue(args.n_last_frames)
    frame1_feat = feats[0].reshape(-1, d).T
    mask_neighborhood = None
    outs = []
    for cnt in range(1, len(feats)):
        used_frame_feats = [frame1_feat] + [pair[0] for pair in list(que.queue)]
        used_segs = [first_seg] + [pair[1] for pair in list(que.queue)]
        frame_tar_avg, feat_tar, mask_neighborhood = _ref_label_propagation(
            args, feats[cnt].reshape(-1, d), h, w, used_frame_feats, used_segs, mask_neighborhood)
        if que.qsize() == args.n_last_frames:
            que.get()
        que.put([feat_tar, frame_tar_avg.clone()])
        outs.append(frame_tar_avg)
    return outs


def _random(n, h, w, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, h, w, d, generator=g), torch.rand(n, c, h, w, generator=g),
            torch.randn(h, w, d, generator=g))


@pytest.mark.parametrize("n,h,w,d,c,topk,radius,tile", [
    (3, 7, 9, 8, 3, 5, 2, 4),
    (4, 10, 13, 16, 4, 5, 3, 3),
    (2, 9, 11, 8, 2, 5, 3, 8),   # tile larger than parts of the frame
    (2, 6, 7, 8, 3, 5, 0, 8),    # radius 0: no restriction, as the reference
    (2, 6, 7, 8, 3, 5, 6, 8),    # window larger than the frame
    (1, 6, 6, 4, 2, 20, 1, 2),   # fewer unmasked sources (<= 9) than k: all kept
    (2, 6, 6, 4, 2, 40, 1, 1),   # k above the tile's region size (2 x 9): all kept
    (3, 8, 8, 8, 2, 1, 1, 3),    # k = 1
    (8, 12, 20, 32, 3, 5, 4, 8),
])
@pytest.mark.parametrize("prefilter", [False, True])
def test_windowed_equals_dense_formula(n, h, w, d, c, topk, radius, tile, prefilter):
    cf, cl, tf = _random(n, h, w, d, c, seed=h * 100 + w + radius)
    ours = propagate_labels(cf, cl, tf, topk=topk, radius=radius, tile=tile, prefilter=prefilter)
    dense = dense_propagate_labels(cf, cl, tf, topk=topk, radius=radius)
    assert ours.shape == (c, h, w)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tile", [1, 5, 16, None])
@pytest.mark.parametrize("prefilter", [False, True])
def test_every_tile_size_gives_the_same_output(tile, prefilter):
    cf, cl, tf = _random(3, 11, 17, 8, 3, seed=5)
    ours = propagate_labels(cf, cl, tf, topk=5, radius=3, tile=tile, prefilter=prefilter)
    torch.testing.assert_close(ours, dense_propagate_labels(cf, cl, tf, topk=5, radius=3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("radius,topk", [(2, 5), (1, 12), (0, 5), (3, 1)])
def test_equals_the_reference_transcription(radius, topk):
    cf, cl, tf = _random(3, 6, 8, 8, 3, seed=radius + 10 * topk)
    args = SimpleNamespace(size_mask_neighborhood=radius, topk=topk)
    ref, _, _ = _ref_label_propagation(args, tf.reshape(-1, 8), 6, 8, [f.reshape(-1, 8).T for f in cf],
                                       [lab[None] for lab in cl])
    torch.testing.assert_close(propagate_labels(cf, cl, tf, topk=topk, radius=radius, tile=3), ref[0],
                               rtol=1e-5, atol=1e-6)


def test_neighborhood_mask_equals_the_reference_loops():
    args = SimpleNamespace(size_mask_neighborhood=2)
    assert torch.equal(neighborhood_mask(5, 7, 2), _ref_restrict_neighborhood(args, 5, 7))


def test_ties_with_the_kth_value_are_all_kept():
    # Features drawn from two orthogonal directions: affinities are exactly exp(10) or exp(0) = 1, so many
    # sources tie with the k-th value. The reference keeps every source >= the k-th value (more than k).
    g = torch.Generator().manual_seed(3)
    basis = torch.eye(4)
    cf = basis[torch.randint(0, 2, (2, 6, 7), generator=g)]  # (2, 6, 7, 4)
    tf = basis[torch.randint(0, 2, (6, 7), generator=g)]
    cl = torch.rand(2, 3, 6, 7, generator=g)
    for radius, topk in [(1, 5), (2, 5), (1, 3), (0, 7)]:
        dense = dense_propagate_labels(cf, cl, tf, topk=topk, radius=radius)
        for prefilter in (False, True):
            ours = propagate_labels(cf, cl, tf, topk=topk, radius=radius, tile=4, prefilter=prefilter)
            torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)
    # By hand, one query: radius 1, k 1, one context whose 3x3 window around (2, 2) matches the query's
    # direction at 4 patches: all 4 tie at exp(10) and their labels are averaged.
    cf1 = basis[torch.zeros(1, 5, 5, dtype=torch.long)].clone()
    cf1[0, 1:4, 1:4] = basis[1]
    cf1[0, 1, 1] = cf1[0, 1, 3] = cf1[0, 3, 1] = cf1[0, 3, 3] = cf1[0, 2, 2] = basis[0]
    tf1 = basis[torch.ones(5, 5, dtype=torch.long)]  # every query is direction 1
    cl1 = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    for prefilter in (False, True):
        out = propagate_labels(cf1, cl1, tf1, topk=1, radius=1, prefilter=prefilter)
        assert out[0, 2, 2].item() == pytest.approx((7 + 11 + 13 + 17) / 4)


def _near_ties(n, h, w, d, spread, seed):
    """Features a hair apart: cosines 1 - O(spread^2), so a query's top logits lie within ~1e-3 (spread 0.03,
    temperature 0.1) of each other, far below what bfloat16 resolves (about 0.04 at logit 10): the pre-pass
    alone cannot rank them."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    cf = base + spread * torch.randn(n, h, w, d, generator=g)
    tf = base + spread * torch.randn(h, w, d, generator=g)
    return cf, torch.rand(n, 3, h, w, generator=g), tf


def _unambiguous(cf, tf, radius, topk, temperature, margin=2e-5):
    """(h, w) bool: queries whose k-th and (k+1)-th logits (float64) differ by more than `margin`. Closer than
    float32's rounding of a logit (~1e-6 of it), which sources the reference keeps depends on its order of
    summation, so any two float32 implementations may differ there."""
    n, h, w, d = cf.shape
    q = F.normalize(tf.double(), dim=-1).reshape(h * w, d)
    s = F.normalize(cf.double(), dim=-1).reshape(n, h * w, d)
    logits = torch.einsum("qd,nsd->qns", q, s) / temperature  # (h*w, N, h*w)
    near = neighborhood_mask(h, w, radius).bool()[:, None, :]
    top = logits.masked_fill(~near, float("-inf")).reshape(h * w, -1).topk(topk + 1, dim=-1).values
    return (top[:, topk - 1] - top[:, topk] > margin).reshape(h, w)


@pytest.mark.parametrize("spread", [0.03, 0.1])
@pytest.mark.parametrize("temperature", [0.1, 0.03])
def test_prefilter_is_exact_where_bfloat16_cannot_rank_the_sources(spread, temperature):
    # Most queries cannot be settled by the pre-pass (spread 0.03) or a part of them (0.1). Wherever the
    # reference's own ranking is unambiguous, the output must equal the dense formula's, whether the pre-pass
    # keeps going (max_unsure 1: the rest take the reference's rule) or gives up and propagate_labels continues
    # in float32.
    cf, cl, tf = _near_ties(4, 9, 13, 64, spread, seed=7)
    dense = dense_propagate_labels(cf, cl, tf, topk=5, radius=3, temperature=temperature)
    clear = _unambiguous(cf, tf, 3, 5, temperature)
    assert clear.float().mean() > 0.6
    q, s = F.normalize(tf, dim=-1), F.normalize(cf, dim=-1)
    for tile in (3, 6):
        ours = _propagate_prefiltered(q, s, cl, topk=5, radius=3, temperature=temperature, tile=tile,
                                      max_unsure=1.0)
        torch.testing.assert_close(ours[:, clear], dense[:, clear], rtol=1e-5, atol=1e-6)
        ours = propagate_labels(cf, cl, tf, topk=5, radius=3, tile=tile, temperature=temperature, prefilter=True)
        torch.testing.assert_close(ours[:, clear], dense[:, clear], rtol=1e-5, atol=1e-6)


def test_prefilter_gives_up_where_bfloat16_cannot_rank_and_settles_separated_features():
    near = _near_ties(4, 9, 13, 64, 0.03, seed=1)
    q, s = F.normalize(near[2], dim=-1), F.normalize(near[0], dim=-1)
    assert _propagate_prefiltered(q, s, near[1], topk=5, radius=3, temperature=0.1, tile=3) is None
    cf, cl, tf = _random(4, 9, 13, 64, 3, seed=2)  # random 64-d features: logits well apart
    q, s = F.normalize(tf, dim=-1), F.normalize(cf, dim=-1)
    out = _propagate_prefiltered(q, s, cl, topk=5, radius=3, temperature=0.1, tile=3, max_unsure=0.0)
    torch.testing.assert_close(out, dense_propagate_labels(cf, cl, tf, topk=5, radius=3), rtol=1e-5, atol=1e-6)


def test_sequence_stays_in_float32_once_the_pre_pass_gives_up(monkeypatch):
    import dino_seg.propagation as propagation
    calls = []

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is None)
        return out

    real = propagation._propagate_prefiltered
    monkeypatch.setattr(propagation, "_propagate_prefiltered", counted)
    monkeypatch.setattr(propagation, "bf16_matmul_is_fast", lambda device: True)
    cf, cl, _ = _near_ties(5, 9, 13, 64, 0.03, seed=3)
    feats = list(cf)
    outs = list(propagate_sequence(feats, cl[0], n_last_frames=2, radius=3))
    assert calls == [True]  # tried on the first frame only, where it gave up
    recent = []
    for feat, out in zip(feats[1:], outs):  # the same loop in float32 throughout
        ctx_f = torch.stack([feats[0]] + [f for f, _ in recent])
        ctx_l = torch.stack([cl[0]] + [o for _, o in recent])
        assert torch.equal(out, propagate_labels(ctx_f, ctx_l, feat, radius=3, prefilter=False))
        recent = (recent + [(feat, out)])[-2:]


@pytest.mark.parametrize("candidates", [1, 6, 7, 40])
def test_prefilter_with_few_candidates_still_equals_the_dense_formula(candidates):
    # With the (k+1) candidates only (or fewer asked: at least k + 1 are kept), most queries cannot be
    # settled by the pre-pass and take the float32 rule; with many, almost all are settled.
    cf, cl, tf = _random(3, 10, 14, 16, 3, seed=candidates)
    q = F.normalize(tf, dim=-1)
    s = F.normalize(cf, dim=-1)
    ours = _propagate_prefiltered(q, s, cl, topk=5, radius=3, temperature=0.1, tile=4, candidates=candidates,
                                  max_unsure=1.0)
    torch.testing.assert_close(ours, dense_propagate_labels(cf, cl, tf, topk=5, radius=3), rtol=1e-5, atol=1e-6)


def test_prefilter_tile_minimises_the_work_on_davis_grids():
    # 30 x 52 (DAVIS at patch 16, r 12): 45 tiles of 6 x 6 with 30 x 30 regions beat 28 tiles of 8 x 8 with
    # 32 x 32 regions (45 * 52 * 900 = 2.11M against 28 * 80 * 1024 = 2.29M).
    assert prefilter_tile(30, 52, 12) == 6
    assert prefilter_tile(60, 104, 12) == 6
    assert prefilter_tile(6, 6, 1) == 6  # one tile covers the frame


def test_one_hot_context_gives_convex_weights_on_a_larger_grid():
    # Normalised weights: with one-hot context labels every output pixel sums to 1.
    g = torch.Generator().manual_seed(0)
    cf, tf = torch.randn(3, 30, 44, 16, generator=g), torch.randn(30, 44, 16, generator=g)
    cl = F.one_hot(torch.randint(0, 3, (3, 30, 44), generator=g), 3).permute(0, 3, 1, 2).float()
    out = propagate_labels(cf, cl, tf, topk=5, radius=5)
    torch.testing.assert_close(out.sum(0), torch.ones(30, 44))
    torch.testing.assert_close(out, dense_propagate_labels(cf, cl, tf, topk=5, radius=5), rtol=1e-5, atol=1e-6)


def test_norm_mask_equals_the_reference_including_constant_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 5, 6, generator=g)
    x[1] = 0.0  # max 0: left as is
    x[2] = 0.7  # constant positive: 0 / 0 = NaN in the reference
    x[3] = x[3] * 3 - 1  # negative values
    ours = norm_mask(x.clone())
    ref = _ref_norm_mask(x.clone())
    torch.testing.assert_close(ours, ref, equal_nan=True)
    assert torch.isnan(ours[2]).all()


def test_soft_to_mask_equals_the_reference_output_path():
    g = torch.Generator().manual_seed(1)
    soft = torch.rand(3, 4, 5, generator=g)
    soft[2] *= 0.5
    ours = soft_to_mask(soft.clone(), 8, (37, 45))
    up = F.interpolate(soft[None].clone(), scale_factor=8, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]
    _, seg = torch.max(_ref_norm_mask(up), dim=0)
    ref = np.array(Image.fromarray(seg.squeeze().numpy().astype(np.uint8)).resize((45, 37), 0))
    assert ours.dtype == np.uint8 and ours.shape == (37, 45)
    assert np.array_equal(ours, ref)
    assert set(np.unique(ours)) <= {0, 1, 2}


@pytest.mark.parametrize("n_last_frames", [1, 2, 7])
def test_sequence_loop_equals_the_reference_queue(n_last_frames):
    g = torch.Generator().manual_seed(n_last_frames)
    feats = [torch.randn(5, 6, 8, generator=g) for _ in range(6)]
    first = torch.rand(1, 3, 5, 6, generator=g)
    args = SimpleNamespace(size_mask_neighborhood=2, topk=5, n_last_frames=n_last_frames)
    ref = _ref_video(args, feats, first)
    ours = list(propagate_sequence(iter(feats), first[0], n_last_frames=n_last_frames, topk=5, radius=2))
    assert len(ours) == len(ref) == 5
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b[0], rtol=1e-4, atol=1e-5)


def test_zero_last_frames_uses_the_first_frame_only():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(4, 5, 8, generator=g) for _ in range(4)]
    first = torch.rand(2, 4, 5, generator=g)
    outs = list(propagate_sequence(feats, first, n_last_frames=0, radius=1))
    for feat, out in zip(feats[1:], outs):
        torch.testing.assert_close(out, dense_propagate_labels(feats[0][None], first[None], feat, radius=1))
    with pytest.raises(ValueError, match="--n_last_frames"):
        list(propagate_sequence(feats, first, n_last_frames=-1))


def test_input_errors():
    cf, cl, tf = _random(2, 4, 5, 8, 2, seed=0)
    with pytest.raises(ValueError, match="does not match"):
        propagate_labels(cf, cl, tf[:3])
    with pytest.raises(ValueError, match="--topk"):
        propagate_labels(cf, cl, tf, topk=0)


def test_backbone_batches_give_the_same_features():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", 16).eval()
    frames = [torch.randn(3, 32, 48) for _ in range(5)]
    by_two = list(frame_features(model, frames, bs=2))
    with torch.no_grad():
        whole = patch_features(model, torch.stack(frames))  # (5, 2, 3, 192)
    assert len(by_two) == 5 and by_two[0].shape == (2, 3, 192)
    for a, b in zip(by_two, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="--bs"):
        list(frame_features(model, frames, bs=0))

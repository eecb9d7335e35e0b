"""DINOv3's segmentation_tracking protocol against a plain transcription of the notebook's loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dino_seg import propagation_v3
from dino_seg.families import build_backbone
from dino_seg.propagation_v3 import (TrackingConfig, Tracker, first_frame_probs, frame_tensor, neighbourhood_mask,
                                     propagate, resized_size, track, upsample_probs)
from reference_dinov23 import dinov3_forward, dinov3_state_dict


# --- The notebook (notebooks/segmentation_tracking.ipynb), transcribed on CPU ---
def nb_propagate(current_features, context_features, context_probs, neighborhood_mask, topk, temperature):
    t, h, w, M = context_probs.shape
    dot = torch.einsum("ijd, tuvd -> ijtuv", current_features, context_features)
    dot = torch.where(neighborhood_mask[:, :, None, :, :], dot, -torch.inf)
    dot = dot.flatten(2, -1).flatten(0, 1)
    k_th_largest = torch.topk(dot, dim=1, k=topk).values
    dot = torch.where(dot >= k_th_largest[:, -1:], dot, -torch.inf)
    weights = F.softmax(dot / temperature, dim=1)
    current_probs = torch.mm(weights, context_probs.flatten(0, 2))
    current_probs = current_probs / current_probs.sum(dim=1, keepdim=True)
    return current_probs.unflatten(0, (h, w))


def nb_neighborhood_mask(h, w, size, shape):
    ij = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij"), dim=-1)
    ord = 2 if shape == "circle" else torch.inf
    norm = torch.linalg.vector_norm(ij[:, :, None, None, :] - ij[None, None, :, :, :], ord=ord, dim=-1)
    return norm <= size


def nb_postprocess_probs(probs):
    vmin = probs.flatten(2, 3).min(dim=2).values
    vmax = probs.flatten(2, 3).max(dim=2).values
    probs = (probs - vmin[:, :, None, None]) / (vmax[:, :, None, None] - vmin[:, :, None, None])
    return torch.nan_to_num(probs, nan=0)


def nb_resize_to_multiple(img, short_side, multiple):
    def round_up(side):
        return math.ceil(side / multiple) * multiple

    old_width, old_height = img.size
    if old_width > old_height:
        new_height = round_up(short_side)
        new_width = round_up(old_width * new_height / old_height)
    else:
        new_width = round_up(short_side)
        new_height = round_up(old_height * new_width / old_width)
    return img.resize((new_width, new_height), Image.BICUBIC)


def nb_track(forward, frames, first_mask_np, max_context, radius, topk, temperature, transform):
    mask_height, mask_width = first_mask_np.shape
    num_masks = int(first_mask_np.max() + 1)
    first_frame = transform(frames[0])
    first_feats = forward(first_frame)
    feats_height, feats_width = first_feats.shape[:2]
    first_mask = torch.from_numpy(first_mask_np).long()
    first_mask = F.interpolate(first_mask[None, None].float(), (feats_height, feats_width), mode="nearest-exact")[0, 0]
    first_probs = F.one_hot(first_mask.long(), num_masks).float()
    predictions = [first_mask_np.astype(np.uint8)]
    features_queue, probs_queue = [], []
    neighborhood = nb_neighborhood_mask(feats_height, feats_width, radius, "circle")
    for frame in frames[1:]:
        current_feats = forward(transform(frame))
        context_feats = torch.stack([first_feats, *features_queue], dim=0)
        context_probs = torch.stack([first_probs, *probs_queue], dim=0)
        current_probs = nb_propagate(current_feats, context_feats, context_probs, neighborhood, topk, temperature)
        features_queue.append(current_feats)
        probs_queue.append(current_probs)
        if len(features_queue) > max_context:
            features_queue.pop(0)
        if len(probs_queue) > max_context:
            probs_queue.pop(0)
        p = F.interpolate(current_probs.movedim(-1, -3)[None], size=(mask_height, mask_width), mode="nearest")
        p = nb_postprocess_probs(p).squeeze(0)
        predictions.append(torch.argmax(p, dim=0).to(torch.uint8).numpy())
    return predictions


def test_resize_rule_rounds_both_sides_up_to_the_patch():
    assert resized_size(854, 480, 960, 16) == (960, 1712)  # 1707.5 -> 1712
    assert resized_size(854, 480, 960, 14) == (966, 1722)  # short side 960 -> 966, then 1718.6 -> 1722
    assert resized_size(480, 854, 100, 16) == (208, 112)  # 100 -> 112; 854 * 112 / 480 = 199.3 -> 208
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    x = frame_tensor(img, 40, 16)
    assert x.shape == (3, 48, 80)
    expected = np.asarray(nb_resize_to_multiple(img, 40, 16), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), (expected - mean) / std, atol=1e-5)


@pytest.mark.parametrize("radius,shape", [(12, "circle"), (2, "circle"), (1.5, "square")])
def test_neighbourhood_mask_matches_the_notebook(radius, shape):
    assert torch.equal(neighbourhood_mask(5, 7, radius, shape), nb_neighborhood_mask(5, 7, radius, shape))


def test_propagation_step_matches_the_notebook_in_chunks(monkeypatch):
    g = torch.Generator().manual_seed(0)
    h, w, d, m, t = 6, 9, 8, 3, 4
    current = F.normalize(torch.randn(h, w, d, generator=g), dim=-1)
    context = F.normalize(torch.randn(t, h, w, d, generator=g), dim=-1)
    probs = torch.softmax(torch.randn(t, h, w, m, generator=g), dim=-1)
    near = nb_neighborhood_mask(h, w, 2, "circle")
    expected = nb_propagate(current, context, probs, near, 5, 0.2)
    monkeypatch.setattr(propagation_v3, "_CHUNK_ELEMENTS", 7 * t * h * w)  # 7 query rows a chunk, a ragged end
    got = propagate(current, context, probs, near, 5, 0.2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(h, w))
    # Only the top-5 similarities weigh in: at most 5 context patches feed each query.
    one_hot = torch.eye(t * h * w).reshape(t, h, w, t * h * w)
    contributors = propagate(current, context, one_hot, near, 5, 0.2).reshape(h * w, -1)
    assert ((contributors > 0).sum(-1) <= 5).all() and ((contributors > 0).sum(-1) >= 1).all()


def test_first_frame_and_upsampling_follow_the_notebook():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:12, 5:17] = 1
    mask[14:, 20:] = 2
    probs = first_frame_probs(mask, (4, 6), 3)
    small = F.interpolate(torch.from_numpy(mask)[None, None].float(), (4, 6), mode="nearest-exact")[0, 0].long()
    assert torch.equal(probs, F.one_hot(small, 3).float())
    raw = torch.rand(4, 6, 3, generator=torch.Generator().manual_seed(0))
    raw[..., 2] = 0.5  # a constant map: min-max gives NaN, which becomes 0
    up = upsample_probs(raw, (20, 30))
    expected = nb_postprocess_probs(F.interpolate(raw.movedim(-1, -3)[None], size=(20, 30), mode="nearest"))[0]
    assert torch.equal(up, expected)
    assert up[2].abs().max() == 0 and up[0].min() == 0 and up[0].max() == 1


def test_tracking_a_video_matches_the_notebook_loop():
    sd = dinov3_state_dict(seed=3)
    backbone = build_backbone(sd, "t")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    frames = [Image.fromarray(np.roll(base, shift=2 * i, axis=1)) for i in range(5)]
    first_mask = np.zeros((40, 56), dtype=np.uint8)
    first_mask[8:30, 10:30] = 1
    first_mask[30:, 40:] = 2
    config = TrackingConfig(short_side=48, context=2, radius=2, topk=5, temperature=0.2)

    def transform(img):
        x = np.asarray(nb_resize_to_multiple(img, 48, 16), dtype=np.float32) / 255
        x = (x - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
        return torch.from_numpy(x).permute(2, 0, 1)

    def forward(x):
        with torch.no_grad():
            tokens = dinov3_forward(sd, x[None], 3, 2)[0, 5:]
        return F.normalize(tokens.reshape(x.shape[1] // 16, x.shape[2] // 16, -1), dim=-1)

    expected = nb_track(forward, frames, first_mask, 2, 2, 5, 0.2, transform)
    got = list(track(backbone, frames, first_mask, config))
    assert len(got) == 5
    for a, b in zip(got, expected):
        assert a.shape == (40, 56) and a.dtype == np.uint8
        assert (a != b).mean() < 0.002, (a != b).mean()  # float ties may flip a pixel
    assert np.array_equal(got[0], first_mask)
    assert len({*np.unique(got[-1])}) > 1


def test_tracker_keeps_at_most_the_context_frames_and_checks_sizes():
    feats = F.normalize(torch.randn(3, 4, 8), dim=-1)
    tracker = Tracker(feats, first_frame_probs(np.eye(3, 4, dtype=np.uint8), (3, 4), 2), TrackingConfig(context=2))
    for _ in range(4):
        tracker.step(F.normalize(torch.randn(3, 4, 8), dim=-1))
    assert len(tracker.feats_queue) == 2 and len(tracker.probs_queue) == 2
    with pytest.raises(ValueError, match="same size"):
        tracker.step(torch.randn(4, 4, 8))
    with pytest.raises(ValueError, match="--topk"):
        TrackingConfig(topk=0).check()

"""DAVIS J and F: hand-worked values on small masks, davis2017-evaluation's rules, CSV files, scoring errors."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.morphology import disk

from davis_data import make_davis, save_palette_png, shape_masks
from dino_seg.davis import DavisError
from dino_seg.metrics import (DavisScores, boundary_radius, db_eval_iou, db_statistics, f_measure, read_csvs,
                              score_results, score_sequence, seg2bmap, write_csvs)


def square(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def test_boundary_map_of_a_square_by_hand():
    seg = square(4, 5, slice(1, 3), slice(1, 3))
    expected = np.array([[1, 1, 1, 0, 0],
                         [1, 0, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0]], bool)
    assert np.array_equal(seg2bmap(seg), expected)


def test_boundary_map_last_row_and_column_rules():
    # Last row: right neighbour only; last column: bottom neighbour only; bottom-right corner never.
    seg = np.zeros((4, 5), bool)
    seg[3, 4] = True
    expected = np.zeros((4, 5), bool)
    expected[2, 3] = True  # its bottom-right neighbour differs
    expected[2, 4] = True  # last column, bottom neighbour differs
    expected[3, 3] = True  # last row, right neighbour differs
    assert np.array_equal(seg2bmap(seg), expected)
    full = np.ones((3, 3), bool)
    assert not seg2bmap(full).any()


def test_region_similarity_by_hand():
    gt = square(4, 5, slice(1, 3), slice(1, 3))  # 4 pixels
    pred = square(4, 5, slice(1, 3), slice(1, 4))  # 6 pixels, 4 shared
    assert db_eval_iou(gt, pred) == pytest.approx(4 / 6)
    empty = np.zeros((4, 5), bool)
    assert db_eval_iou(empty, empty) == 1.0
    assert db_eval_iou(empty, pred) == 0.0
    assert db_eval_iou(gt, empty) == 0.0


def test_boundary_f_by_hand():
    # 4x7 image: diagonal 8.06 -> radius ceil(0.064) = 1, a 3x3 cross. The prediction is the ground-truth
    # square moved 2 pixels right: 5 of its 8 boundary pixels lie within 1 pixel of the ground truth's and
    # 5 of the ground truth's 8 within 1 pixel of its, so P = R = F = 5/8.
    gt = square(4, 7, slice(1, 3), slice(1, 3))
    pred = square(4, 7, slice(1, 3), slice(3, 5))
    assert boundary_radius(gt.shape) == 1
    assert f_measure(pred, gt) == pytest.approx(5 / 8, abs=1e-12)
    # One pixel to the right: every boundary pixel is within the cross.
    assert f_measure(square(4, 7, slice(1, 3), slice(2, 4)), gt) == pytest.approx(1.0, abs=1e-12)
    empty = np.zeros_like(gt)
    assert f_measure(empty, gt) == 0.0  # P = 1, R = 0
    assert f_measure(pred, empty) == 0.0  # P = 0, R = 1
    assert f_measure(empty, empty) == 1.0


def test_tolerance_is_8_pixels_at_480p_and_the_disk_is_skimage_s():
    assert boundary_radius((480, 854)) == 8
    assert boundary_radius((480, 910)) == 9  # ceil(0.008 * 1028.8)
    expected = np.array([[0, 0, 1, 0, 0],
                         [0, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1],
                         [0, 1, 1, 1, 0],
                         [0, 0, 1, 0, 0]])
    assert np.array_equal(disk(2), expected)


def test_boundary_tolerance_edge_at_480p():
    # At 854x480 the tolerance is 8 pixels: a vertical edge moved 8 pixels is still matched, 9 is not.
    gt = square(480, 854, slice(100, 300), slice(200, 400))
    near = square(480, 854, slice(100, 300), slice(208, 408))
    far = square(480, 854, slice(100, 300), slice(209, 409))
    assert f_measure(near, gt) == pytest.approx(1.0, abs=1e-12)
    # Moved 9: the vertical sides (away from the corners) fall outside the 8-pixel disk.
    assert seg2bmap(gt).sum() == seg2bmap(far).sum() == 800  # 201 top + 200 left + 200 right + 199 bottom
    # Each boundary keeps 416 of its 800 pixels within the 8-pixel disk of the other (the horizontal sides and
    # the ends of the vertical ones): P = R = F = 416 / 800.
    bound = np.ones((17, 17), np.uint8)  # radius 8 disk, by its definition: x^2 + y^2 <= 64
    yy, xx = np.mgrid[-8:9, -8:9]
    bound[yy ** 2 + xx ** 2 > 64] = 0
    fg_b, gt_b = seg2bmap(far), seg2bmap(gt)
    assert (fg_b & (cv2.dilate(gt_b.astype(np.uint8), bound) > 0)).sum() == 416
    assert (gt_b & (cv2.dilate(fg_b.astype(np.uint8), bound) > 0)).sum() == 416
    assert f_measure(far, gt) == pytest.approx(416 / 800, abs=1e-12)


# A transcription of davis2017-evaluation's f_measure and _seg2bmap (same-size path), to compare against.
def _pkg_seg2bmap(seg):
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _pkg_f_measure(foreground_mask, gt_mask, bound_th=0.008):
    import cv2

    void_pixels = np.zeros_like(foreground_mask).astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = _pkg_seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = _pkg_seg2bmap(gt_mask * np.logical_not(void_pixels))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk(int(bound_pix)).astype(np.uint8))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk(int(bound_pix)).astype(np.uint8))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_f_equals_the_package_formula_on_random_blobs():
    import cv2

    rng = np.random.default_rng(0)
    for _ in range(4):
        noise = rng.random((60, 107))
        a = cv2.resize(noise, (854, 480)) > 0.55
        b = cv2.resize(np.roll(noise, 2, axis=1) + 0.1 * rng.random((60, 107)), (854, 480)) > 0.55
        assert f_measure(b, a) == pytest.approx(_pkg_f_measure(b, a), abs=1e-12)
        assert np.array_equal(seg2bmap(b), _pkg_seg2bmap(b))


def test_statistics_by_hand():
    values = np.array([1.0, 0.4, 0.6, 0.8, 0.4, 0.5, 0.3])
    mean, recall, decay = db_statistics(values)
    assert mean == pytest.approx(4.0 / 7)
    assert recall == pytest.approx(3 / 7)  # 1.0, 0.6, 0.8 (0.5 is not above 0.5)
    # Bin edges round(linspace(1, 7, 5) + 1e-10) - 1 = [0, 2, 3, 5, 6] (2.5 rounds up to 3, not to even 2):
    # first bin 1.0, 0.4, 0.6; last bin 0.5, 0.3.
    assert decay == pytest.approx(2.0 / 3 - 0.4)


def _copy_results(root, out, name="shapes", n_frames=5, drop_object_at=None):
    for t in range(n_frames):
        labels = shape_masks(t, 64, 96, 2)
        if t == drop_object_at:
            labels[labels == 2] = 0
        save_palette_png(out / name / f"{t:05d}.png", labels)


def test_scores_of_perfect_and_degraded_results(tmp_path):
    root = make_davis(tmp_path / "davis")
    out = tmp_path / "res"
    _copy_results(root, out)
    perfect = score_results(out, root)
    assert perfect.global_scores["J&F-Mean"] == pytest.approx(1.0)
    assert perfect.global_scores["J-Decay"] == pytest.approx(0.0)
    assert [name for name, _, _ in perfect.per_object] == ["shapes_1", "shapes_2"]

    # Object 2 absent from frame 2 of 5: scored frames 1, 2, 3 give J = F = [1, 0, 1] for it.
    # Decay bins over 3 frames: ids [0, 1, 1, 2, 2] -> first bin [1, 0], last bin [1]: decay -0.5.
    _copy_results(root, out, drop_object_at=2)
    (out / "global_results-val.csv").write_text("stale\n")
    scores = score_results(out, root)
    write_csvs(scores, out, "val")
    assert (out / "global_results-val.csv").read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "0.833,0.833,0.833,-0.250,0.833,0.833,-0.250\n")
    assert (out / "per-sequence_results-val.csv").read_text() == (
        "Sequence,J-Mean,F-Mean\nshapes_1,1.000,1.000\nshapes_2,0.667,0.667\n")


def test_missing_frames_count_as_empty_and_are_listed(tmp_path):
    root = make_davis(tmp_path / "davis")
    out = tmp_path / "res"
    _copy_results(root, out)
    (out / "shapes" / "00002.png").unlink()
    seq = score_sequence(out, root, "shapes")
    assert [p.name for p in seq.missing] == ["00002.png"]
    assert seq.j[:, 1].tolist() == [0.0, 0.0]
    assert seq.f[:, 1].tolist() == [0.0, 0.0]
    assert seq.j[:, [0, 2]].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_void_is_background_and_an_object_never_predicted_is_empty(tmp_path):
    root = make_davis(tmp_path / "davis", n_objects=2)
    gt = shape_masks(1, 64, 96, 2)
    gt[0:4, 0:4] = 255  # void pixels count as background, not excluded
    save_palette_png(root / "Annotations" / "480p" / "shapes" / "00001.png", gt)
    out = tmp_path / "res"
    for t in range(5):
        labels = shape_masks(t, 64, 96, 2)
        labels[labels == 2] = 0  # object 2 never predicted: no error, J = 0
        save_palette_png(out / "shapes" / f"{t:05d}.png", labels)
    seq = score_sequence(out, root, "shapes")
    assert seq.j[0].tolist() == [1.0, 1.0, 1.0]
    assert seq.j[1].tolist() == [0.0, 0.0, 0.0]


def test_binary_0_255_results_of_a_single_object_sequence(tmp_path):
    from PIL import Image

    root = make_davis(tmp_path / "davis", n_objects=1)
    out = tmp_path / "res"
    for t in range(5):
        (out / "shapes").mkdir(parents=True, exist_ok=True)
        Image.fromarray(shape_masks(t, 64, 96, 1) * 255).save(out / "shapes" / f"{t:05d}.png")
    seq = score_sequence(out, root, "shapes")
    assert seq.j.tolist() == [[1.0, 1.0, 1.0]] and seq.f.tolist() == [[1.0, 1.0, 1.0]]


def test_scoring_errors_name_the_file(tmp_path):
    root = make_davis(tmp_path / "davis")
    out = tmp_path / "res"
    _copy_results(root, out)
    labels = shape_masks(1, 64, 96, 2)
    labels[0, 0] = 3
    save_palette_png(out / "shapes" / "00001.png", labels)
    with pytest.raises(DavisError, match=r"00001\.png holds index 3 but shapes has 2 object"):
        score_sequence(out, root, "shapes")
    save_palette_png(out / "shapes" / "00001.png", np.zeros((32, 48), np.uint8))
    with pytest.raises(DavisError, match=r"00001\.png is 48x32 but its ground truth is 96x64"):
        score_sequence(out, root, "shapes")
    with pytest.raises(DavisError, match="results folder not found"):
        score_results(tmp_path / "nowhere", root)


def test_nan_fields_are_written_empty_like_pandas(tmp_path):
    from dino_seg.metrics import DavisScores, GLOBAL_COLUMNS

    scores = DavisScores(dict.fromkeys(GLOBAL_COLUMNS, math.nan), [("a_1", math.nan, 0.5)], [])
    g, s = write_csvs(scores, tmp_path, "train")
    assert g.name == "global_results-train.csv"
    assert g.read_text().splitlines()[1] == ",,,,,,"
    assert s.read_text().splitlines()[1] == "a_1,,0.500"


def _prefix_results(out, n_frames):
    """Results of the first `n_frames` frames of a 2-object "shapes" sequence: object 2 missed in frame 1,
    object 1 one frame ahead in frame 2 (cols 21:45 for 18:42, same rows: J = 21/27 = 7/9)."""
    for t in range(n_frames):
        labels = shape_masks(t, 64, 96, 2)
        if t == 1:
            labels[labels == 2] = 0
        if t == 2:
            labels[labels == 1] = 0
            labels[shape_masks(3, 64, 96, 2) == 1] = 1
        save_palette_png(out / "shapes" / f"{t:05d}.png", labels)


def test_scoring_the_first_frames_of_a_sequence_as_if_it_ended_there(tmp_path):
    root = make_davis(tmp_path / "davis", {"shapes": 6})
    out = tmp_path / "res"
    _prefix_results(out, 4)  # a run capped at 4 of 6 frames: no result for frames 4 and 5
    prefix = score_sequence(out, root, "shapes", frames=4)
    assert prefix.missing == []
    np.testing.assert_allclose(prefix.j, [[1.0, 7 / 9], [0.0, 1.0]])  # frames 1 and 2; frame 3 is the last
    assert prefix.f[1].tolist() == [0.0, 1.0]

    short_root = make_davis(tmp_path / "davis4", {"shapes": 4})  # the same sequence cut at 4 frames
    short = score_sequence(out, short_root, "shapes")
    assert np.array_equal(prefix.j, short.j) and np.array_equal(prefix.f, short.f)

    whole = score_sequence(out, root, "shapes")  # frame 3 is scored too, and frame 4 has no result
    assert [p.name for p in whole.missing] == ["00004.png"]
    np.testing.assert_allclose(whole.j, [[1.0, 7 / 9, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])


@pytest.mark.parametrize("frames", [2, 7])
def test_scoring_too_few_or_too_many_frames_is_refused(tmp_path, frames):
    root = make_davis(tmp_path / "davis", {"shapes": 6})
    out = tmp_path / "res"
    _prefix_results(out, 6)
    with pytest.raises(DavisError, match=f"cannot score the first {frames} frames of shapes: it has 6 "):
        score_sequence(out, root, "shapes", frames=frames)


def test_csvs_read_back_as_written(tmp_path):
    scores = DavisScores(
        {"J&F-Mean": 0.8333333, "J-Mean": 0.8888889, "J-Recall": 1.0, "J-Decay": -0.0625, "F-Mean": 0.7777,
         "F-Recall": 2 / 3, "F-Decay": math.nan},
        [("shapes_1", 1.0, 0.91666), ("shapes_2", 2 / 3, math.nan), ("more_1", 0.0004, 0.9996)], [])
    write_csvs(scores, tmp_path, "train")
    back = read_csvs(tmp_path, "train")
    g = back.global_scores
    assert list(g) == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert [g[c] for c in list(g)[:6]] == [0.833, 0.889, 1.0, -0.062, 0.778, 0.667]  # -0.0625: half to even
    assert math.isnan(g["F-Decay"])
    assert [name for name, _, _ in back.per_object] == ["shapes_1", "shapes_2", "more_1"]
    assert back.per_object[0][1:] == (1.0, 0.917) and back.per_object[2][1:] == (0.0, 1.0)
    assert back.per_object[1][1] == 0.667 and math.isnan(back.per_object[1][2])
    assert back.missing == []
    # Written again, the files are byte for byte the same.
    again = tmp_path / "again"
    write_csvs(back, again, "train")
    for name in ("global_results-train.csv", "per-sequence_results-train.csv"):
        assert (again / name).read_text() == (tmp_path / name).read_text()


def test_reading_csvs_errors_name_the_file(tmp_path):
    with pytest.raises(DavisError, match=r"scores file not found: .*global_results-val\.csv"):
        read_csvs(tmp_path)
    write_csvs(DavisScores(dict.fromkeys(("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall",
                                          "F-Decay"), 0.5), [("a_1", 0.5, 0.5)], []), tmp_path)
    seq = tmp_path / "per-sequence_results-val.csv"
    seq.write_text("Sequence,J-Mean,F-Mean\na_1,0.500,high\n")
    with pytest.raises(DavisError, match=r"per-sequence_results-val\.csv: 'high' is not a number"):
        read_csvs(tmp_path)
    seq.write_text("Sequence,J,F\na_1,0.500,0.500\n")
    with pytest.raises(DavisError, match=r"per-sequence_results-val\.csv does not start with the header "
                                         r"Sequence,J-Mean,F-Mean"):
        read_csvs(tmp_path)

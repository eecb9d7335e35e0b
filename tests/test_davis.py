"""DAVIS files and `python -m eval.davis`: sequence lists, frames read like the reference, annotations,
indexed outputs, an end-to-end run on synthetic sequences, resume and every input error."""
from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from davis_data import make_davis, save_palette_png, shape_masks
from dino_seg.davis import (DavisError, first_frame_labels, frame_paths, list_sequences, read_annotation,
                            read_frame, resized_shape, write_indexed_png)
from dino_seg.models import build_backbone
from dino_seg.viz import davis_palette
from eval import davis as cli
from eval import davis_run


def test_sequence_lists_2017_then_2016_then_folders(tmp_path):
    root = make_davis(tmp_path / "a", {"b": 2, "a": 2})
    assert list_sequences(root) == ["b", "a"]  # the file's order
    root = make_davis(tmp_path / "b", {"bear": 2, "car": 3}, imageset="480p")
    assert list_sequences(root) == ["bear", "car"]  # DAVIS 2016 lists frames
    root = make_davis(tmp_path / "c", {"zebra": 2, "apple": 2}, imageset=None)
    assert list_sequences(root) == ["apple", "zebra"]
    with pytest.raises(DavisError, match="DAVIS root not found: .*nowhere"):
        list_sequences(tmp_path / "nowhere")
    (tmp_path / "d").mkdir()
    with pytest.raises(DavisError, match=r"no frames folder .*JPEGImages/480p"):
        list_sequences(tmp_path / "d")
    with pytest.raises(DavisError, match="unknown DAVIS resolution"):
        list_sequences(root, resolution="720p")


def test_frames_sorted_and_empty_sequence_error(tmp_path):
    root = make_davis(tmp_path, {"s": 3})
    assert [p.name for p in frame_paths(root, "s")] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    (root / "JPEGImages" / "480p" / "empty").mkdir()
    with pytest.raises(DavisError, match=r"sequence without frames: no \.jpg files in .*empty"):
        frame_paths(root, "empty")


def test_resized_shape_like_the_reference():
    assert resized_shape(480, 854) == (480, 832)  # 854 * 480 / 480 floored to 64s
    assert resized_shape(480, 910) == (480, 896)
    assert resized_shape(854, 480) == (832, 480)  # portrait: width 480
    assert resized_shape(1080, 1920) == (480, 832)  # Full-Resolution: 853.3 -> 832
    assert resized_shape(64, 96, short_side=128) == (128, 192)


def test_read_frame_is_rgb_resized_and_normalised_with_0228(tmp_path):
    rgb = np.zeros((48, 80, 3), np.uint8)
    rgb[...] = (255, 0, 128)
    cv2.imwrite(str(tmp_path / "f.png"), rgb[:, :, ::-1])  # BGR on disk, as JPEGs are read by OpenCV
    x, h, w = read_frame(tmp_path / "f.png")
    assert (h, w) == (48, 80)
    assert x.shape == (3, 480, 768)  # 80 * 480 / 48 = 800 -> 768
    expected = [(1 - 0.485) / 0.228, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((480, 768), expected[c]), rtol=1e-5, atol=1e-5)
    with pytest.raises(DavisError, match=r"cannot read frame .*missing\.jpg"):
        read_frame(tmp_path / "missing.jpg")


def test_annotations_2017_palette_2016_grayscale_and_errors(tmp_path):
    labels = np.array([[0, 1, 2], [255, 2, 0]], np.uint8)
    save_palette_png(tmp_path / "p.png", labels)
    assert np.array_equal(read_annotation(tmp_path / "p.png"), labels)  # void 255 kept as stored
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "g.png")
    assert read_annotation(tmp_path / "g.png").tolist() == [[0, 1], [1, 0]]  # DAVIS 2016: 255 is the object
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DavisError, match=r"annotation .*rgb\.png is a RGB image"):
        read_annotation(tmp_path / "rgb.png")
    with pytest.raises(DavisError, match=r"annotation not found: .*none\.png"):
        read_annotation(tmp_path / "none.png")


def test_first_frame_labels_one_hot_at_patch_resolution():
    ann = np.zeros((32, 64), np.uint8)
    ann[:, 32:] = 2
    ann[:8, :8] = 255  # void: background here
    labels = first_frame_labels(ann, (480, 960), 16)  # 30 x 60 patches
    assert labels.shape == (3, 30, 60)
    assert torch.equal(labels.sum(0), torch.ones(30, 60))
    assert labels[2, :, 30:].eq(1).all() and labels[0, :, :30].eq(1).all()
    assert labels[1].eq(0).all()  # object 1 absent: an empty channel, as the reference's one-hot


def test_indexed_png_roundtrip(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    write_indexed_png(tmp_path / "out" / "x.png", labels)
    with Image.open(tmp_path / "out" / "x.png") as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im), labels)
        assert np.array_equal(np.array(im.getpalette()[:12]).reshape(4, 3), davis_palette()[:4])
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "x.png"]  # no temp file left
    with pytest.raises(DavisError, match="2-D label map"):
        write_indexed_png(tmp_path / "y.png", np.zeros((2, 2, 3), np.uint8))


# --- the command

def _run(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _stamp(path):
    # A rewrite replaces the file atomically: a new inode (and modification time).
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture()
def davis_root(tmp_path):
    return make_davis(tmp_path / "davis", {"shapes": 5, "more": 4}, n_objects=3)


def test_end_to_end_run_resume_and_scoring_only(davis_root, tmp_path, tiny_vit_weights, capsys):
    out = tmp_path / "out"
    common = ["--pretrained_weights", tiny_vit_weights, "--data_path", davis_root, "--output_dir", out,
              "--short_side", 128, "--bs", 3, "--device", "cpu"]
    code, stdout, stderr = _run(common, capsys)
    assert code == 0, stderr
    for name, n in (("shapes", 5), ("more", 4)):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == [f"{t:05d}.png" for t in range(n)]
        with Image.open(out / name / "00002.png") as im:
            assert im.mode == "P" and im.size == (96, 64)
            assert set(np.unique(np.array(im))) <= {0, 1, 2, 3}
        with Image.open(out / name / "00000.png") as im:  # the first frame is its ground truth
            assert np.array_equal(np.array(im), shape_masks(0, 64, 96, 3))
    header = (out / "global_results-val.csv").read_text().splitlines()[0]
    assert header == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    rows = (out / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean"
    assert [r.split(",")[0] for r in rows[1:]] == ["shapes_1", "shapes_2", "shapes_3", "more_1", "more_2",
                                                   "more_3"]
    assert "J&F-Mean" in stdout and "shapes_1" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequences_run"] == ["shapes", "more"]
    assert summary["frames_propagated"] == 7 and summary["fps"] > 0 and summary["peak_memory_mb"] > 0
    assert summary["args"]["n_last_frames"] == 7 and summary["args"]["topk"] == 5

    # Resume: complete sequences are skipped; a sequence with a missing frame is redone.
    (out / "more" / "00003.png").unlink()
    stamp = _stamp(out / "shapes" / "00001.png")
    code, _, stderr = _run(common, capsys)
    assert code == 0, stderr
    assert "skipped 1 complete sequence(s)" in stderr
    assert _stamp(out / "shapes" / "00001.png") == stamp
    assert (out / "more" / "00003.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequences_run"] == ["more"] and summary["sequences_skipped"] == ["shapes"]
    assert summary["frames_propagated"] == 3
    assert set(summary["per_sequence"]) == {"shapes", "more"}  # the skipped one's timing kept
    assert summary["per_sequence"]["shapes"]["frames"] == 4 and summary["fps_all_sequences"] > 0

    # --overwrite redoes a complete sequence; "--overwrite false" does not (the reference's bool_flag values).
    code, _, stderr = _run(common + ["--sequences", "shapes", "--overwrite", "false"], capsys)
    assert code == 0 and _stamp(out / "shapes" / "00001.png") == stamp
    code, _, stderr = _run(common + ["--sequences", "shapes", "--overwrite"], capsys)
    assert code == 0, stderr
    assert _stamp(out / "shapes" / "00001.png") != stamp
    assert json.loads((out / "summary.json").read_text())["sequences_run"] == ["shapes"]

    # Scoring only, recomputed: a stale CSV is replaced; a missing frame is scored empty and reported.
    first = (out / "global_results-val.csv").read_text()
    (out / "global_results-val.csv").write_text("stale\n")
    (out / "shapes" / "00002.png").unlink()
    code, stdout, stderr = _run(["--results_path", out, "--data_path", davis_root], capsys)
    assert code == 0, stderr
    assert "warning: 1 result frame(s) missing, scored as empty masks" in stderr
    assert (out / "global_results-val.csv").read_text() not in ("stale\n", "")
    assert (out / "global_results-val.csv").read_text() != first


def test_davis_2016_layout_and_grayscale_masks(tmp_path, tiny_vit_weights, capsys):
    root = make_davis(tmp_path / "davis16", {"bear": 4}, n_objects=1, imageset="480p")
    for png in (root / "Annotations" / "480p" / "bear").iterdir():
        Image.fromarray((read_annotation(png) > 0).astype(np.uint8) * 255).save(png)  # 0/255 grayscale
    out = tmp_path / "out16"
    code, _, stderr = _run(["--pretrained_weights", tiny_vit_weights, "--data_path", root, "--output_dir", out,
                            "--short_side", 128, "--device", "cpu"], capsys)
    assert code == 0, stderr
    with Image.open(out / "bear" / "00000.png") as im:
        assert np.array_equal(np.array(im), shape_masks(0, 64, 96, 1))  # 255 read as object 1
    assert (out / "per-sequence_results-val.csv").read_text().splitlines()[1].startswith("bear_1,")


def test_ground_truth_as_results_scores_one(davis_root, tmp_path, capsys):
    code, stdout, stderr = _run(["--results_path", davis_root / "Annotations" / "480p", "--data_path",
                                 davis_root, "--sequences", "shapes"], capsys)
    assert code == 0, stderr
    assert (davis_root / "Annotations" / "480p" / "global_results-val.csv").read_text().splitlines()[1] == \
        "1.000,1.000,1.000,0.000,1.000,1.000,0.000"


def test_input_errors_are_one_line(davis_root, tmp_path, capsys):
    def error(args):
        code, _, stderr = _run(["--output_dir", tmp_path / "o", "--pretrained_weights", "random"] + args, capsys)
        assert code == 2
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        return stderr

    assert "DAVIS root not found" in error(["--data_path", tmp_path / "missing"])
    (davis_root / "JPEGImages" / "480p" / "hollow").mkdir()
    assert "sequence without frames" in error(["--data_path", davis_root, "--sequences", "hollow"])
    assert "sequence folder not found" in error(["--data_path", davis_root, "--sequences", "nope"])
    (davis_root / "Annotations" / "480p" / "more" / "00000.png").unlink()
    msg = error(["--data_path", davis_root, "--sequences", "more"])
    assert "missing first-frame annotation" in msg and "more/00000.png" in msg
    save_palette_png(davis_root / "Annotations" / "480p" / "more" / "00000.png", np.zeros((32, 48), np.uint8))
    msg = error(["--data_path", davis_root, "--sequences", "more"])
    assert "is 48x32 but frame" in msg and "is 96x64" in msg
    assert "results folder not found" in error(["--data_path", davis_root, "--results_path", tmp_path / "r"])
    assert "--topk" in error(["--data_path", davis_root, "--topk", "0"])
    assert "--device" in error(["--data_path", davis_root, "--sequences", "shapes", "--device", "tpu"])
    assert "no such file" in error(["--data_path", davis_root, "--sequences", "shapes",
                                    "--pretrained_weights", tmp_path / "w.pth"])


def test_a_start_removes_stale_temporary_files(davis_root, tmp_path, tiny_vit_weights, capsys):
    out = tmp_path / "out"
    stale = [out / ".summary.json.0badc0de.dino-tmp.json", out / "more" / ".00002.png.0badc0de.dino-tmp.png"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    code, _, stderr = _run(["--pretrained_weights", tiny_vit_weights, "--data_path", davis_root, "--output_dir", out,
                            "--sequences", "more", "--short_side", 64, "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert "removed 2 stale temporary file(s) of an interrupted run" in stderr
    assert not any(p.exists() for p in stale)
    assert not list(out.rglob(".*"))


def test_resume_with_other_weights_or_settings_stops_with_what_differs(davis_root, tmp_path, tiny_vit_weights,
                                                                       capsys):
    out = tmp_path / "out"
    common = ["--data_path", davis_root, "--output_dir", out, "--sequences", "more", "--device", "cpu"]
    first = ["--pretrained_weights", tiny_vit_weights, "--short_side", 64]
    code, _, stderr = _run(common + first, capsys)
    assert code == 0, stderr
    record = json.loads((out / "provenance.json").read_text())
    digest = hashlib.sha256(tiny_vit_weights.read_bytes()).hexdigest()
    assert record == {"settings": {"weights": f"sha256 {digest}", "checkpoint_key": "teacher", "arch": "vit_tiny",
                                   "patch_size": 16, "short_side": 64, "n_last_frames": 7, "topk": 5,
                                   "size_mask_neighborhood": 12, "resolution": "480p", "first_frame": "annotation"},
                      "sequences": ["more"]}
    assert json.loads((out / "summary.json").read_text())["settings"] == record["settings"]
    stamp = _stamp(out / "more" / "00001.png")

    # Same settings (the weights file copied elsewhere: identity is the content): skipped as complete.
    moved = tmp_path / "copy.pth"
    moved.write_bytes(tiny_vit_weights.read_bytes())
    code, _, stderr = _run(common + ["--pretrained_weights", moved, "--short_side", 64], capsys)
    assert code == 0 and "skipped 1 complete sequence(s)" in stderr

    # Other short side, other weights: one line naming what differs; nothing rewritten.
    code, _, stderr = _run(common + ["--pretrained_weights", tiny_vit_weights, "--short_side", 128], capsys)
    assert code == 2
    assert stderr.splitlines()[-1] == (
        f"error: --output_dir {out} holds results of other settings (short_side 64 -> 128): pass "
        "--overwrite to redo them with the current settings, or choose another --output_dir")
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(build_backbone("vit_tiny", 16).state_dict(), other)
    other_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    code, _, stderr = _run(common + ["--pretrained_weights", other, "--short_side", 64, "--topk", 3], capsys)
    assert code == 2 and stderr.count("error") == 1 and stderr.splitlines()[-1].startswith("error: ")
    assert f"(weights sha256 {digest} -> sha256 {other_digest}; topk 5 -> 3)" in stderr
    assert _stamp(out / "more" / "00001.png") == stamp
    assert json.loads((out / "provenance.json").read_text()) == record

    # --overwrite redoes them and records the new settings.
    code, _, stderr = _run(common + ["--pretrained_weights", other, "--short_side", 64, "--overwrite"], capsys)
    assert code == 0, stderr
    assert _stamp(out / "more" / "00001.png") != stamp
    assert json.loads((out / "provenance.json").read_text())["settings"]["weights"] == f"sha256 {other_digest}"

    # Results without a record (made by an older version, or copied in) are not silently taken as ours.
    (out / "provenance.json").unlink()
    code, _, stderr = _run(common + ["--pretrained_weights", other, "--short_side", 64], capsys)
    assert code == 2 and "holds results (more) without a record of the settings" in stderr


def test_failed_rescoring_leaves_no_stale_scores(davis_root, tmp_path, capsys):
    # Results made earlier (here: the ground truth itself) with their CSVs and a summary of the run.
    results = tmp_path / "results"
    for name in ("shapes", "more"):
        (results / name).mkdir(parents=True)
        for png in (davis_root / "Annotations" / "480p" / name).iterdir():
            (results / name / png.name).write_bytes(png.read_bytes())
    (results / "summary.json").write_text(json.dumps({"seconds": 1.5, "scores": {"J&F-Mean": 0.5}}))
    code, _, stderr = _run(["--results_path", results, "--data_path", davis_root], capsys)
    assert code == 0, stderr
    summary = json.loads((results / "summary.json").read_text())
    assert summary["scores"]["J&F-Mean"] == 1.0 and summary["seconds"] == 1.5  # rescored: the new numbers

    # A result frame of the wrong size: the rescoring fails, and the old numbers go with it.
    save_palette_png(results / "more" / "00002.png", np.zeros((32, 48), np.uint8))
    code, _, stderr = _run(["--results_path", results, "--data_path", davis_root], capsys)
    assert code == 2 and stderr.count("error: result ") == 1 and "Traceback" not in stderr
    assert "no scores written; earlier score files of" in stderr
    assert not (results / "global_results-val.csv").exists()
    assert not (results / "per-sequence_results-val.csv").exists()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["scores"] is None and "is 48x32 but its ground truth is 96x64" in summary["scores_error"]
    assert summary["seconds"] == 1.5


def test_ground_truth_of_the_first_frame_only_writes_masks_and_says_there_is_nothing_to_score(
        davis_root, tmp_path, tiny_vit_weights, capsys):
    for name in ("shapes", "more"):  # DAVIS test-dev style: only the first frame is annotated
        for png in sorted((davis_root / "Annotations" / "480p" / name).iterdir())[1:]:
            png.unlink()
    out = tmp_path / "out"
    code, stdout, stderr = _run(["--pretrained_weights", tiny_vit_weights, "--data_path", davis_root,
                                 "--output_dir", out, "--short_side", 64, "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert ("warning: nothing to score: shapes, more have ground truth for fewer than 3 frames (only the first, "
            "as in DAVIS test-dev?); J&F needs the annotations of the frames in between") in stderr
    assert f"wrote the masks of 2 sequence(s) to {out}; no J&F: nothing to score" in stdout
    assert "nan" not in stdout + stderr and "J&F-Mean" not in stdout
    assert sorted(p.name for p in (out / "shapes").iterdir()) == [f"{t:05d}.png" for t in range(5)]
    assert not (out / "global_results-val.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"] is None and summary["scores_error"] == "no ground truth to score against"
    # Scoring such a folder alone is an error, not a table of nan.
    code, stdout, stderr = _run(["--results_path", out, "--data_path", davis_root], capsys)
    assert code == 2 and stderr.startswith("error: nothing to score: shapes, more") and stderr.count("\n") == 1
    # Mixed: the annotated sequence is scored, the other named.
    shutil.rmtree(davis_root / "Annotations" / "480p" / "more")
    shutil.copytree(tmp_path / "out" / "more", davis_root / "Annotations" / "480p" / "more")
    code, stdout, stderr = _run(["--results_path", out, "--data_path", davis_root], capsys)
    assert code == 0 and "warning: not scored: shapes has ground truth for fewer than 3 frames" in stderr
    assert [r.split(",")[0] for r in (out / "per-sequence_results-val.csv").read_text().splitlines()[1:]] == [
        "more_1", "more_2", "more_3"]


def test_output_dir_that_is_a_file_and_ctrl_c_are_one_line(davis_root, tmp_path, tiny_vit_weights, capsys,
                                                           monkeypatch):
    common = ["--pretrained_weights", tiny_vit_weights, "--data_path", davis_root, "--sequences", "more",
              "--short_side", 64, "--device", "cpu"]
    taken = tmp_path / "file"
    taken.write_text("x")
    code, _, stderr = _run(common + ["--output_dir", taken], capsys)
    assert code == 2 and stderr == f"error: --output_dir {taken}: is a file, expected a folder\n"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(davis_run, "segment_sequence", interrupted)  # the run imported by main()
    code, _, stderr = _run(common + ["--output_dir", tmp_path / "out"], capsys)
    assert code == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == ("interrupted: complete sequences are kept (files are written whole); "
                                               "run the same command again to resume")
    assert not list((tmp_path / "out").rglob("*.png"))


def test_cli_masks_equal_an_independent_run_of_the_reference_steps(davis_root, tmp_path, tiny_vit_weights, capsys):
    """The whole glue (frame reading and resizing, first-frame labels, file order, output size) against the
    reference's eval_video_segmentation.py steps, transcribed here, on the same tiny model."""
    import torch.nn.functional as F

    from dino_seg.models import patch_features
    from dino_seg.weights import load_model
    from test_propagation import _ref_norm_mask, _ref_video

    out = tmp_path / "out"
    code, _, stderr = _run(["--pretrained_weights", tiny_vit_weights, "--data_path", davis_root, "--output_dir", out,
                            "--sequences", "shapes", "--short_side", 128, "--n_last_frames", 2,
                            "--size_mask_neighborhood", 2, "--topk", 3, "--device", "cpu"], capsys)
    assert code == 0, stderr

    model = load_model(tiny_vit_weights)
    patch, short = 16, 128

    def read_frame(path):  # the reference's read_frame, with its 480 as `short`
        img = cv2.imread(str(path))
        ori_h, ori_w = img.shape[:2]
        if ori_h > ori_w:
            tw = short
            th = int(((tw * ori_h) / ori_w // 64) * 64)
        else:
            th = short
            tw = int(((th * ori_w) / ori_h // 64) * 64)
        img = cv2.resize(img, (tw, th)).astype(np.float32) / 255.0
        img = torch.from_numpy(np.transpose(img[:, :, ::-1].copy(), (2, 0, 1))).float()
        for t, m, s in zip(img, [0.485, 0.456, 0.406], [0.228, 0.224, 0.225]):
            t.sub_(m).div_(s)
        return img, ori_h, ori_w

    def read_seg(path, th, tw):  # the reference's read_seg and to_one_hot
        seg = Image.open(path)
        small = torch.from_numpy(np.array(seg.resize((tw // patch, th // patch), 0)).copy()).float()[None]
        y = small.long().view(-1, 1)
        n_dims = int(y.max()) + 1
        one_hot = torch.zeros(y.size(0), n_dims).scatter_(1, y, 1).view(*small.shape, -1)
        return one_hot.permute(0, 3, 1, 2)  # (1, C, h, w)

    frames = sorted((davis_root / "JPEGImages" / "480p" / "shapes").glob("*.jpg"))
    read = [read_frame(f) for f in frames]
    _, ori_h, ori_w = read[0]
    with torch.no_grad():
        feats = [patch_features(model, img[None])[0] for img, _, _ in read]  # (h, w, D) each
    first_gt = davis_root / "Annotations" / "480p" / "shapes" / "00000.png"
    first_seg = read_seg(first_gt, *read[0][0].shape[1:])
    args = SimpleNamespace(size_mask_neighborhood=2, topk=3, n_last_frames=2)
    soft = _ref_video(args, feats, first_seg)
    assert sorted(p.name for p in (out / "shapes").iterdir()) == [f.stem + ".png" for f in frames]
    with Image.open(out / "shapes" / "00000.png") as im:
        assert np.array_equal(np.array(im), np.array(Image.open(first_gt)))
    for frame, avg in zip(frames[1:], soft):
        up = F.interpolate(avg, scale_factor=patch, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
        _, seg = torch.max(_ref_norm_mask(up), dim=0)
        expected = np.array(Image.fromarray(seg.numpy().astype(np.uint8)).resize((ori_w, ori_h), 0))
        with Image.open(out / "shapes" / f"{frame.stem}.png") as im:
            got = np.array(im)
        assert got.shape == (ori_h, ori_w) and len(np.unique(expected)) > 1  # not a trivial all-background mask
        assert np.array_equal(got, expected), f"{frame.name}: {np.mean(got != expected):.4%} of pixels differ"


def test_full_resolution_and_the_train_set_through_the_cli(tmp_path, tiny_vit_weights, capsys):
    root = make_davis(tmp_path / "davis", {"tall": 4}, height=128, width=192, n_objects=2, subset="train")
    for kind in ("JPEGImages", "Annotations"):
        (root / kind / "480p").rename(root / kind / "Full-Resolution")
    (root / "ImageSets" / "2017" / "val.txt").write_text("absent\n")  # --set val would fail on this one
    out = tmp_path / "out"
    code, stdout, stderr = _run(["--pretrained_weights", tiny_vit_weights, "--data_path", root, "--output_dir", out,
                                 "--set", "train", "--resolution", "Full-Resolution", "--short_side", 64,
                                 "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in (out / "tall").iterdir()) == [f"{t:05d}.png" for t in range(4)]
    with Image.open(out / "tall" / "00002.png") as im:
        assert im.size == (192, 128)  # masks at the full resolution, whatever the network's input size
    with Image.open(out / "tall" / "00000.png") as im:
        assert np.array_equal(np.array(im), shape_masks(0, 128, 192, 2))
    assert (out / "global_results-train.csv").is_file() and not (out / "global_results-val.csv").exists()
    assert [r.split(",")[0] for r in (out / "per-sequence_results-train.csv").read_text().splitlines()[1:]] == [
        "tall_1", "tall_2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["resolution"] == "Full-Resolution" and summary["args"]["set"] == "train"
    # 480p frames are not silently used instead: without them the default resolution is an error.
    code, _, stderr = _run(["--pretrained_weights", tiny_vit_weights, "--data_path", root, "--output_dir",
                            tmp_path / "o2", "--set", "train", "--device", "cpu"], capsys)
    assert code == 2 and "no frames folder" in stderr and "480p" in stderr

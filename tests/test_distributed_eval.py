"""Evaluations under torchrun: two CPU/gloo processes give byte-identical outputs and scores to one process,
both ranks do work, rank 0 alone scores and summarises, an interrupted multi-process run resumes per item, and
--precision is checked and recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from davis_data import make_davis
from ports import free_port

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    return env


def _launch(module: str, args: list, nproc: int) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", module]
    proc = subprocess.run(cmd + [str(a) for a in args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob(pattern))}


@pytest.mark.slow
def test_davis_two_processes_equal_one(tmp_path, tiny_vit_weights):
    root = make_davis(tmp_path / "davis", {"shapes": 4, "more": 3, "third": 3}, n_objects=2)
    common = ["--pretrained_weights", tiny_vit_weights, "--data_path", root, "--short_side", 64, "--bs", 2,
              "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    _launch("eval.davis", common + ["--output_dir", one], 1)
    proc = _launch("eval.davis", common + ["--output_dir", two], 2)
    assert proc.stdout.count("Global results for val") == 1  # rank 0 scores and prints alone
    masks_one, masks_two = _files(one, "*.png"), _files(two, "*.png")
    assert len(masks_one) == 10 and masks_one == masks_two  # byte-identical masks
    for csv in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (one / csv).read_bytes() == (two / csv).read_bytes()
    summary_one, summary = json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary_one["world_size"] == 1
    assert summary["scores"] == summary_one["scores"]
    # Strided shares: shapes and third on rank 0, more on rank 1.
    assert {name: seq["rank"] for name, seq in summary["per_sequence"].items()} == {"shapes": 0, "more": 1, "third": 0}
    record = json.loads((two / "provenance.json").read_text())
    assert sorted(record["sequences"]) == ["more", "shapes", "third"]
    assert not list(two.glob("provenance.rank*.json"))  # folded into provenance.json
    # A run interrupted after rank 1 finished "more": its record makes a resumed run skip it.
    (two / "provenance.json").write_text(json.dumps({**record, "sequences": ["shapes"]}))
    (two / "provenance.rank1.json").write_text(json.dumps({**record, "sequences": ["more"]}))
    (two / "third" / "00002.png").unlink()
    proc = _launch("eval.davis", common + ["--output_dir", two], 1)  # any number of processes resumes
    assert "skipped 2 complete sequence(s) (--overwrite true to redo): shapes, more" in proc.stderr
    assert _files(two, "*.png") == masks_one
    assert json.loads((two / "summary.json").read_text())["per_sequence"]["third"]["rank"] == 0


def _images(folder: Path) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    images, gts = folder / "images", folder / "gt"
    for i, hw in enumerate([(64, 96), (48, 48), (64, 96), (32, 80), (48, 48)]):
        (images / f"s{i % 2}").mkdir(parents=True, exist_ok=True)
        (gts / f"s{i % 2}").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(images / f"s{i % 2}" / f"im{i}.png")
        gt = np.zeros(hw, np.uint8)
        gt[hw[0] // 4: 3 * hw[0] // 4, hw[1] // 4: hw[1] // 2] = 255
        Image.fromarray(gt).save(gts / f"s{i % 2}" / f"im{i}.png")
    return images, gts


@pytest.mark.slow
def test_attention_two_processes_equal_one_and_batches_equal_single_images(tmp_path, tiny_vit_weights):
    import numpy as np

    from eval import attention

    images, gts = _images(tmp_path)
    common = ["--pretrained_weights", tiny_vit_weights, "--image_path", images, "--gt_dir", gts,
              "--image_size", 64, "--device", "cpu"]
    one, two, batched = tmp_path / "one", tmp_path / "two", tmp_path / "batched"
    _launch("eval.attention", common + ["--output_dir", one], 1)
    proc = _launch("eval.attention", common + ["--output_dir", two], 2)
    assert proc.stdout.count("Jaccard at threshold 0.6 over 5 image(s)") == 1  # rank 0 scores alone
    files_one = _files(one, "*.*")
    files_one.pop("summary.json")
    assert files_one == {k: v for k, v in _files(two, "*.*").items() if k != "summary.json"}  # byte-identical
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert [v["rank"] for v in summary["images"].values()] == [0, 1, 0, 1, 0]  # both ranks did work
    # Batches of equal sizes (3 per pass, 2 loader workers): the same masks, attention to float rounding.
    assert attention.main([str(a) for a in common + ["--output_dir", batched, "--batch_size", 3,
                                                      "--num_workers", 2]]) == 0
    for name in files_one:
        if name.endswith("masks.npy"):
            assert np.array_equal(np.load(one / name), np.load(batched / name)), name
        elif name.endswith("attention.npy"):
            np.testing.assert_allclose(np.load(one / name), np.load(batched / name), atol=1e-6, rtol=0)
    assert (one / "jaccard.csv").read_text() == (batched / "jaccard.csv").read_text()


def test_davis_precision_is_checked_and_recorded(tmp_path, tiny_vit_weights, capsys):
    from dino_seg.precision import cpu_has_bf16
    from eval import davis

    root = make_davis(tmp_path / "davis", {"shapes": 3}, n_objects=1)
    common = ["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(root), "--short_side", "64",
              "--device", "cpu"]
    assert davis.main(common + ["--output_dir", str(tmp_path / "a"), "--precision", "fp16"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --precision fp16: not supported on CPU (no float16 autocast "
                                               "kernels there); use bf16 or fp32")
    if not cpu_has_bf16():
        return
    assert davis.main(common + ["--output_dir", str(tmp_path / "b"), "--precision", "bf16"]) == 0
    record = json.loads((tmp_path / "b" / "provenance.json").read_text())
    assert record["settings"]["precision"] == "bf16"  # bf16 masks are not resumed as fp32 ones


@pytest.mark.slow
def test_discover_two_processes_equal_one(tmp_path, tiny_vit_weights):
    images, gts = _images(tmp_path)
    common = ["--pretrained_weights", tiny_vit_weights, "--image_path", images, "--gt_dir", gts,
              "--method", "lost", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    _launch("eval.discover", common + ["--output_dir", one], 1)
    proc = _launch("eval.discover", common + ["--output_dir", two], 2)
    assert proc.stdout.count("scores written to") == 1  # rank 0 scores alone
    # Rank 0's bar (the only one) ends at the global count, not at its own 3 images.
    assert "| 5/5 [" in proc.stderr and "/3 [" not in proc.stderr
    files_one = _files(one, "*.*")
    summary_one = json.loads(files_one.pop("summary.json"))
    files_two = _files(two, "*.*")
    summary = json.loads(files_two.pop("summary.json"))
    assert files_one == files_two  # masks, boxes, objects and scores.csv byte-identical
    assert summary["world_size"] == 2 and summary_one["world_size"] == 1
    assert list(summary["ranks"].values()) == [0, 1, 0, 1, 0]  # both ranks did work
    assert {k: v for k, v in summary.items() if k not in ("world_size", "ranks")} == \
        {k: v for k, v in summary_one.items() if k not in ("world_size", "ranks")}


@pytest.mark.slow
def test_video_attention_two_processes_equal_one(tmp_path, tiny_vit_weights):
    import cv2
    import numpy as np

    from dino_seg.video import iter_video

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    clip = tmp_path / "clip.avi"  # Motion JPEG in AVI: built into every OpenCV build
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (56, 40))
    for t in range(5):
        writer.write(np.clip(base.astype(int) + 20 * t, 0, 255).astype(np.uint8))
    writer.release()
    common = ["--pretrained_weights", tiny_vit_weights, "--input_path", clip, "--resize", 32, "--batch_size", 2,
              "--masks", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    _launch("eval.video_attention", common + ["--output_path", one], 1)
    proc = _launch("eval.video_attention", common + ["--output_path", two], 2)
    assert proc.stdout.count("wrote 5 attention images") == 1  # rank 0 writes and prints alone
    files_one, files_two = _files(one, "*.*"), _files(two, "*.*")
    summary_one, summary = json.loads(files_one.pop("summary.json")), json.loads(files_two.pop("summary.json"))
    assert len([f for f in files_one if f.startswith("attention/")]) == 5
    videos = sorted(name for name in files_one if name.startswith(("video.", "masks.")))
    assert len(videos) == 2
    # The frames and attention images are byte-identical; a container's header holds a random id and the date
    # (two one-process runs differ there too), so the videos are compared frame by frame as decoded.
    assert {k: v for k, v in files_one.items() if k not in videos} == \
        {k: v for k, v in files_two.items() if k not in videos}
    for name in videos:
        decoded_one, decoded_two = list(iter_video(one / name)), list(iter_video(two / name))
        assert len(decoded_one) == 5 and all(np.array_equal(a, b) for a, b in zip(decoded_one, decoded_two))
    assert summary_one["world_size"] == 1 and summary["world_size"] == 2
    # Batches of 2 frames, dealt out by rank: both ranks computed attention maps.
    assert [(b["rank"], b["first"], b["last"], b["frames"]) for b in summary["batches"]] == [
        (0, "frame-0000", "frame-0001", 2), (1, "frame-0002", "frame-0003", 2), (0, "frame-0004", "frame-0004", 1)]
    assert [b["rank"] for b in summary_one["batches"]] == [0, 0, 0]


def _video_inputs(folder: Path) -> list[Path]:
    """Two clips and a folder of JPEG frames, of few and tiny frames."""
    from test_video_attention import random_frames, write_avi, write_jpegs

    folder.mkdir(parents=True)
    write_jpegs(folder / "walk", random_frames(3, seed=2))
    return [write_avi(folder / "swan.avi", random_frames(5, seed=1), fps=10.0), folder / "walk",
            write_avi(folder / "car.avi", random_frames(4, seed=3), fps=8.0)]


def _outputs(folder: Path) -> tuple[dict[str, bytes], list[str]]:
    """Every output's bytes but the summaries and videos; the videos' names."""
    files = {k: v for k, v in _files(folder, "*.*").items() if not k.endswith("summary.json")}
    videos = sorted(k for k in files if Path(k).stem in ("video", "masks"))
    return {k: v for k, v in files.items() if k not in videos}, videos


@pytest.mark.slow
def test_video_attention_several_inputs_dealt_by_rank_equal_one_process_and_resume(tmp_path, tiny_vit_weights):
    import numpy as np

    from dino_seg.video import iter_video
    from eval import video_attention

    inputs = _video_inputs(tmp_path / "in")
    common = ["--pretrained_weights", tiny_vit_weights, "--input_path", *inputs, "--resize", 32, "--batch_size", 2,
              "--masks", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert video_attention.main([str(a) for a in common + ["--output_path", one]]) == 0  # in-process: no start-up
    proc = _launch("eval.video_attention", common + ["--output_path", two], 2)
    assert proc.stdout.count("wrote ") == 9 and proc.stdout.count("wrote 5 attention images") == 1  # rank 0 alone
    files_one, videos = _outputs(one)
    assert sorted({k.split("/")[0] for k in files_one}) == ["car", "swan", "walk"]
    assert len([k for k in files_one if "/attention/" in k]) == 12 and len(videos) == 6
    assert files_one == _outputs(two)[0]  # frames and attention images byte-identical
    for name in videos:  # a container's header holds a random id and the date: compared as decoded
        decoded_one, decoded_two = list(iter_video(one / name)), list(iter_video(two / name))
        assert decoded_one and all(np.array_equal(a, b) for a, b in zip(decoded_one, decoded_two, strict=True))
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["split"] == "inputs"
    # Input i on rank i % 2: both ranks made videos, each alone.
    assert {k: (v["rank"], v["frames"], v["resumed"]) for k, v in summary["inputs"].items()} == {
        "swan": (0, 5, False), "walk": (1, 3, False), "car": (0, 4, False)}
    walk = json.loads((two / "walk" / "summary.json").read_text())
    assert walk["rank"] == 1 and [b["rank"] for b in walk["batches"]] == [1, 1]
    assert json.loads((one / "summary.json").read_text())["world_size"] == 1

    # Resume: swan and car are complete and skipped; walk lost an image, so it alone is redone, by both ranks
    # (one input for two processes: its frame batches are dealt out, each rank decoding only its own frames).
    (two / "walk" / "attention" / "attn-00001.jpg").unlink()
    kept = (two / "swan" / "summary.json").stat().st_mtime_ns
    proc = _launch("eval.video_attention", common + ["--output_path", two], 2)
    assert proc.stdout.count("skipped (--overwrite to redo it)") == 2
    assert (two / "swan" / "summary.json").stat().st_mtime_ns == kept
    assert files_one == _outputs(two)[0]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["split"] == "batches"
    assert {k: (v["rank"], v["resumed"]) for k, v in summary["inputs"].items()} == {
        "swan": (0, True), "walk": (None, False), "car": (0, True)}
    assert [(b["rank"], b["first"], b["last"]) for b in summary["inputs"]["walk"]["batches"]] == [
        (0, "00000", "00001"), (1, "00002", "00002")]


@pytest.mark.slow
def test_video_attention_a_failing_rank_ends_every_rank(tmp_path, tiny_vit_weights):
    inputs = _video_inputs(tmp_path / "in")
    (inputs[1] / "00001.jpg").write_bytes(b"not a jpeg")  # decoded by rank 1 only, mid-run
    common = ["--pretrained_weights", tiny_vit_weights, "--resize", 32, "--batch_size", 2, "--device", "cpu"]
    for args in (["--input_path", *inputs], ["--input_path", inputs[1]]):  # inputs dealt; one input's batches
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "eval.video_attention", *[str(a) for a in common + args],
               "--output_path", str(tmp_path / "out")]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert "[rank 1] error: " in proc.stderr and "00001.jpg" in proc.stderr
        # Rank 0 did not wait: it names the failed process and its error.
        assert "[rank 0] error: process 1 of 2 failed: " in proc.stderr
        assert not (tmp_path / "out" / "walk" / "summary.json").exists()

"""End-to-end training runs on tiny images with vit_tiny/16: one epoch, unreadable images, the
checkpoint in the evaluations, exact resume, loss decrease, a NaN stop, and two processes under torchrun."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dino_seg.weights import load_model
from ports import free_port
from train.main import main as train_main
from train_helpers import run_cli, skimage_images, textured_images, tiny_args, torch_threads

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"it", "epoch", "loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy", "kl"}


def run_train(argv: list[str]) -> tuple[int, str, str]:
    return run_cli(train_main, argv)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch on 7 readable textured images plus a non-image .jpg and a truncated .png."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = root / "data"
    good = textured_images(data, 7)
    (data / "class0" / "broken.jpg").write_bytes(b"this is not a JPEG")
    raw = good[1].read_bytes()
    (data / "class1" / "cut.png").write_bytes(raw[: len(raw) // 2])
    out = root / "run"
    code, stdout, stderr = run_train(tiny_args(data, out, saveckp_freq=1))
    yield {"data": data, "out": out, "code": code, "stdout": stdout, "stderr": stderr}
    shutil.rmtree(root, ignore_errors=True)  # about 0.3 GB of checkpoints


def test_single_process_epoch_writes_reference_checkpoint_and_logs(tiny_run):
    assert tiny_run["code"] == 0, tiny_run["stderr"]
    out = tiny_run["out"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pth", "checkpoint0000.pth", "log.txt",
                                                     "metrics.jsonl"]
    ckpt = load(out / "checkpoint.pth")  # weights_only: plain types only
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler"} <= ckpt.keys()
    assert ckpt["epoch"] == 1 and ckpt["fp16_scaler"] is None
    assert type(ckpt["args"]) is dict and ckpt["args"]["arch"] == "vit_tiny" and ckpt["args"]["out_dim"] == 64
    assert all(k.startswith(("module.backbone.", "module.head.")) for k in ckpt["student"])
    assert all(k.startswith(("backbone.", "head.")) for k in ckpt["teacher"])
    assert "backbone.pos_embed" in ckpt["teacher"] and "head.last_layer.weight_g" in ckpt["teacher"]
    assert ckpt["dino_loss"]["center"].shape == (1, 64)
    assert float(ckpt["dino_loss"]["center"].abs().sum()) > 0  # the centre moved
    # The teacher is not a copy of the student (its exact EMA: test_teacher_is_the_ema_of_the_student).
    student = {k[len("module."):]: v for k, v in ckpt["student"].items()}
    assert max_diff(student, ckpt["teacher"]) > 1e-7
    # --freeze_last_layer 1: during epoch 0 the last layer keeps its initial weights in both networks
    # (up to the EMA's float rounding), while the rest of the head trains.
    last = "head.last_layer.weight_v"
    assert float((student[last] - ckpt["teacher"][last]).abs().max()) < 1e-7
    assert float((student["head.mlp.0.weight"] - ckpt["teacher"]["head.mlp.0.weight"]).abs().max()) > 1e-6
    # 9 files, batch 4: 2 iterations; log.txt in the reference format plus our monitors.
    epochs = read_jsonl(out / "log.txt")
    assert len(epochs) == 1 and epochs[0]["epoch"] == 0
    assert {"train_loss", "train_lr", "train_wd", "train_teacher_entropy", "train_kl"} <= epochs[0].keys()
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["it"] for m in metrics] == [0, 1] and all(m.keys() == METRIC_KEYS for m in metrics)
    # lr: 0.0005 * 4 / 256 without warm-up, cosine over 2 iterations; wd from 0.04 towards 0.4.
    assert metrics[0]["lr"] == pytest.approx(0.0005 * 4 / 256) and metrics[0]["wd"] == pytest.approx(0.04)
    assert metrics[1]["wd"] == pytest.approx(0.22) and metrics[0]["momentum"] == pytest.approx(0.996)
    assert epochs[0]["train_loss"] == pytest.approx((metrics[0]["loss"] + metrics[1]["loss"]) / 2)
    assert "fp32" in tiny_run["stdout"]  # --use_fp16 true (the default) says it has no effect on CPU
    assert "it/s" in tiny_run["stderr"] or "s/it" in tiny_run["stderr"]  # the progress bar


def test_unreadable_images_are_skipped_with_a_warning_and_counted(tiny_run):
    assert tiny_run["code"] == 0
    data = tiny_run["data"]
    assert f"warning: skipping unreadable image {data / 'class0' / 'broken.jpg'}" in tiny_run["stderr"]
    assert f"warning: skipping unreadable image {data / 'class1' / 'cut.png'}" in tiny_run["stderr"]
    assert read_jsonl(tiny_run["out"] / "log.txt")[0]["skipped_images"] == 2
    assert load(tiny_run["out"] / "checkpoint.pth")["skipped_images"] == [
        str(data / "class0" / "broken.jpg"), str(data / "class1" / "cut.png")]


def test_checkpoint_loads_in_weights_and_evaluations(tiny_run, tmp_path):
    ckpt_path = tiny_run["out"] / "checkpoint.pth"
    model = load_model(ckpt_path)
    assert model.patch_size == 16 and model.embed_dim == 192
    teacher = load(ckpt_path)["teacher"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, teacher[f"backbone.{name}"]), name
    student_model = load_model(ckpt_path, checkpoint_key="student")
    assert torch.equal(student_model.state_dict()["pos_embed"], load(ckpt_path)["student"]["module.backbone.pos_embed"])

    from eval.attention import main as attention_main

    with torch_threads(1), contextlib.redirect_stdout(io.StringIO()):
        code = attention_main(["--pretrained_weights", str(ckpt_path), "--image_path",
                               str(REPO / "assets" / "images" / "blackswan.jpg"), "--image_size", "64", "64",
                               "--output_dir", str(tmp_path / "attention")])
    assert code == 0
    assert (tmp_path / "attention" / "blackswan" / "attention.npy").is_file()

    # DAVIS propagation on the first 3 frames of the bundled sequence at a small size.
    from eval.davis import main as davis_main

    davis = tmp_path / "davis"
    for kind in ("JPEGImages", "Annotations"):
        src = REPO / "assets" / "davis" / kind / "480p" / "blackswan"
        dst = davis / kind / "480p" / "blackswan"
        dst.mkdir(parents=True)
        for frame in sorted(src.iterdir())[:3]:
            shutil.copy(frame, dst / frame.name)
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("blackswan\n")
    with torch_threads(1), contextlib.redirect_stdout(io.StringIO()):
        code = davis_main(["--pretrained_weights", str(ckpt_path), "--data_path", str(davis), "--short_side", "64",
                           "--output_dir", str(tmp_path / "davis_out")])
    assert code == 0
    assert (tmp_path / "davis_out" / "global_results-val.csv").is_file()


def test_non_finite_loss_stops_with_code_1_and_keeps_the_checkpoint(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run["out"], out)
    digest = hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest()
    # A learning rate of 1e30 blows the weights up after the first step of epoch 1: the real loss
    # of the next iteration is NaN.
    code, _, stderr = run_train(tiny_args(tiny_run["data"], out, epochs=3, lr=1e30, saveckp_freq=1))
    assert code == 1
    assert "loss is nan at epoch 1, iteration 3" in stderr or "loss is inf at epoch 1, iteration 3" in stderr
    assert f"the last good checkpoint {out / 'checkpoint.pth'} is kept unchanged" in stderr
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest() == digest
    assert not (out / "checkpoint0001.pth").exists()
    assert [r["epoch"] for r in read_jsonl(out / "log.txt")] == [0]
    assert [m["it"] for m in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]  # the last finite iteration


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_like_the_uninterrupted_run(tmp_path, workers):
    data = tmp_path / "data"
    textured_images(data, 8, seed=1)
    # Drop path (0.1) on; a large lr and a fast teacher so that one epoch moves the weights by much
    # more than the tolerance: a resume that lost the data order or the RNG state would show.
    flags = dict(epochs=2, warmup_epochs=1, saveckp_freq=1, num_workers=workers, lr=0.1, momentum_teacher=0.9)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run_train(tiny_args(data, full, **flags))[0] == 0
    # An interruption after epoch 0: its checkpoint, and logs that already ran past it (to be trimmed).
    resumed.mkdir()
    shutil.copy(full / "checkpoint0000.pth", resumed / "checkpoint.pth")
    shutil.copy(full / "log.txt", resumed / "log.txt")
    shutil.copy(full / "metrics.jsonl", resumed / "metrics.jsonl")
    code, stdout, _ = run_train(tiny_args(data, resumed, **flags))
    assert code == 0 and "resuming at epoch 1" in stdout

    a, b = load(full / "checkpoint.pth"), load(resumed / "checkpoint.pth")
    assert b["epoch"] == 2
    assert max_diff(a["teacher"], b["teacher"]) < 1e-5
    assert max_diff(a["student"], b["student"]) < 1e-5
    assert max_diff(a["dino_loss"], b["dino_loss"]) < 1e-5
    epoch0 = load(full / "checkpoint0000.pth")
    assert max_diff(epoch0["student"], a["student"]) > 1e-3 and max_diff(epoch0["teacher"], a["teacher"]) > 1e-4
    log_a, log_b = read_jsonl(full / "log.txt"), read_jsonl(resumed / "log.txt")
    assert [r["epoch"] for r in log_b] == [0, 1]
    assert log_b[1]["train_loss"] == pytest.approx(log_a[1]["train_loss"], abs=1e-5)
    metrics_a, metrics_b = read_jsonl(full / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [m["it"] for m in metrics_b] == [0, 1, 2, 3]  # appended once, no duplicates
    for ma, mb in zip(metrics_a, metrics_b):
        assert mb["loss"] == pytest.approx(ma["loss"], abs=1e-5) and mb["lr"] == pytest.approx(ma["lr"])


def test_loss_decreases_on_scikit_image_photographs(tmp_path):
    data = skimage_images(tmp_path / "data")
    # Settings that suit 16 images: larger lr, lower teacher temperature, no weight-decay growth.
    code, _, stderr = run_train(tiny_args(
        tmp_path / "data", tmp_path / "run", out_dim=256, batch_size_per_gpu=8, epochs=8, warmup_epochs=1, lr=0.1,
        teacher_temp=0.02, warmup_teacher_temp=0.02, weight_decay_end=0.04, drop_path_rate=0.0))
    assert code == 0, stderr
    assert len(data) == 16
    losses = [r["train_loss"] for r in read_jsonl(tmp_path / "run" / "log.txt")]
    assert len(losses) == 8
    assert losses[0] > 4.5  # about log(256) = 5.5 at the start
    assert max(losses[-3:]) < losses[0] - 2.0, losses
    entropy = read_jsonl(tmp_path / "run" / "log.txt")[-1]["train_teacher_entropy"]
    assert entropy > 0.5  # the teacher's mean output did not collapse onto one dimension


@pytest.mark.parametrize("optimizer,bf16", [("sgd", "true"), ("lars", "false")])
def test_other_optimizers_and_bf16_train(tmp_path, optimizer, bf16):
    data = tmp_path / "data"
    textured_images(data, 8, seed=3)
    code, stdout, stderr = run_train(tiny_args(data, tmp_path / "run", optimizer=optimizer, bf16=bf16))
    assert code == 0, stderr
    assert ("bf16 autocast on cpu" in stdout) == (bf16 == "true")
    ckpt = load(tmp_path / "run" / "checkpoint.pth")
    state = ckpt["optimizer"]["state"]
    # SGD keeps a momentum buffer, LARS its `mu`; each tensor that had a gradient has one.
    assert state and all(("momentum_buffer" if optimizer == "sgd" else "mu") in v for v in state.values())
    assert all(torch.isfinite(v).all() for v in ckpt["teacher"].values())


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0
    for flag in ("--global_crops_size", "--local_crops_size", "--bf16", "--device", "--local_rank", "--saveckp_freq"):
        assert flag in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny", "resnet50"])
def test_torchrun_two_processes_gloo_end_with_identical_weights(tmp_path, arch):
    data = tmp_path / "data"
    textured_images(data, 9, seed=2)
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "tests" / "train_ddp_probe.py"), str(probe),
           *tiny_args(data, out, arch=arch, batch_size_per_gpu=2, epochs=1)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Processes: 2 (torchrun launch, backend gloo)" in proc.stdout
    assert proc.stdout.count("Starting DINO training!") == 1  # rank 0 prints alone

    r0, r1 = load(probe / "rank0_epoch0.pt"), load(probe / "rank1_epoch0.pt")
    # ResNet-50's BatchNorm statistics included (no SyncBatchNorm on CPU: rank 0's are broadcast).
    assert max_diff(r0["student"], r1["student"]) == 0.0
    assert max_diff(r0["teacher"], r1["teacher"]) == 0.0
    assert torch.equal(r0["center"], r1["center"])
    assert r0["stats"]["loss"] == r1["stats"]["loss"]  # the loss is averaged over both processes
    ckpt = load(out / "checkpoint.pth")
    assert all(k.startswith("module.") for k in ckpt["student"])
    if arch == "resnet50":  # the reference wraps a teacher with BatchNorms in DDP too
        assert "SyncBatchNorm needs CUDA" in proc.stdout
        assert all(k.startswith("module.") for k in ckpt["teacher"])
        ckpt["teacher"] = {k[len("module."):]: v for k, v in ckpt["teacher"].items()}
    assert max_diff(ckpt["teacher"], r0["teacher"]) == 0.0
    # 9 images over 2 processes: 5 each, batch 2: 2 iterations, logged once by rank 0.
    assert [m["it"] for m in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    assert len(read_jsonl(out / "log.txt")) == 1
    # lr scaled by the total batch: 0.0005 * 2 * 2 / 256
    assert read_jsonl(out / "metrics.jsonl")[0]["lr"] == pytest.approx(0.0005 * 4 / 256)


def test_a_start_removes_stale_temporary_files_of_its_writers(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run["out"], out)
    stale = out / ".checkpoint.pth.0badc0de.dino-tmp.pth"  # what kill -9 during a save leaves
    stale.write_bytes(b"\0" * 1000)
    other = out / ".notes.tmp"  # not one of ours: kept
    other.write_text("mine")
    code, stdout, _ = run_train(tiny_args(tiny_run["data"], out, saveckp_freq=1))
    assert code == 0 and "Nothing to do" in stdout
    assert f"removed a stale temporary file of an interrupted run: {stale}" in stdout
    assert not stale.exists() and other.read_text() == "mine"


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(tiny_run, tmp_path, monkeypatch):
    from dino_seg import files
    from test_files import FullDisk

    out = tmp_path / "run"
    shutil.copytree(tiny_run["out"], out)
    digest = hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest()
    monkeypatch.setattr(files, "open", FullDisk(room=0), raising=False)
    code, _, stderr = run_train(tiny_args(tiny_run["data"], out, epochs=2, saveckp_freq=1))
    assert code == 2
    assert "Traceback" not in stderr
    ckpt = out / "checkpoint.pth"
    assert stderr.strip().splitlines()[-1] == (f"error: no space left on device while writing {ckpt}; the last "
                              f"complete checkpoint {ckpt} is kept unchanged. Free some space, "
                              "then start again with the same --output_dir to resume.")
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest() == digest
    assert not list(out.glob(".*dino-tmp*"))


def test_output_dir_that_is_a_file_and_ctrl_c_are_one_line(tiny_run, tmp_path, monkeypatch):
    import train.main as train_module

    taken = tmp_path / "file"
    taken.write_text("x")
    code, _, stderr = run_train(tiny_args(tiny_run["data"], taken))
    assert code == 2 and stderr == f"error: --output_dir {taken}: is a file, expected a folder\n"

    out = tmp_path / "run"
    shutil.copytree(tiny_run["out"], out)
    digest = hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest()

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    code, _, stderr = run_train(tiny_args(tiny_run["data"], out, epochs=2))
    assert code == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"interrupted: {out / 'checkpoint.pth'} holds the last complete epoch; "
                                               "start again with the same --output_dir to resume")
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest() == digest


def test_teacher_is_the_ema_of_the_student(tmp_path):
    from dino_seg.seeding import seed_everything
    from train.main import build_student_teacher

    data = tmp_path / "data"
    textured_images(data, 4)  # batch 4: one iteration, so the teacher is one EMA step from the initial weights
    code, _, stderr = run_train(tiny_args(data, tmp_path / "run", momentum_teacher=0.9, lr=0.1, saveckp_freq=0))
    assert code == 0, stderr
    ckpt = load(tmp_path / "run" / "checkpoint.pth")
    assert [m["momentum"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0.9]
    seed_everything(0)  # the run's initial weights: same seed, same construction
    initial, _ = build_student_teacher(arch="vit_tiny", patch_size=16, drop_path_rate=0.1, out_dim=64,
                                       use_bn_in_head=False, norm_last_layer=True)
    s0 = initial.state_dict()
    s1 = {k[len("module."):]: v for k, v in ckpt["student"].items()}
    teacher = ckpt["teacher"]
    # teacher = m * teacher0 + (1 - m) * student1, with teacher0 = student0 (the teacher starts as a copy).
    expected = {k: 0.9 * s0[k] + 0.1 * s1[k] for k in teacher}
    assert max_diff(expected, teacher) < 1e-6
    # The step moved both networks by much more than that tolerance: the check tells the EMA from a copy.
    assert max_diff({k: s0[k] for k in teacher}, teacher) > 1e-4 and max_diff(s1, teacher) > 1e-3

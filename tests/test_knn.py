"""k-NN evaluation: the vote against a transcription of the reference's knn_classifier, chunking,
feature extraction (one process and two under torchrun), dumps, bad input, and k-NN while training."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dino_seg.image_folder import LabelledDataset, eval_transform, find_splits
from dino_seg.images import load_image
from dino_seg.knn import KnnError, extract_features, knn_classifier, load_features
from dino_seg.runs import knn_epochs, read_epoch_log, read_knn_results
from dino_seg.weights import load_model
from eval.knn import main as knn_main
from ports import free_port
from reference_knn import reference_knn_classifier
from train.main import main as train_main
from train_helpers import run_cli, textured_images, tiny_args, torch_threads

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--resize_size", "36", "--crop_size", "32", "--num_workers", "0", "--device", "cpu"]


def random_features(n_train: int, n_test: int, dim: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    train = F.normalize(torch.randn(n_train, dim, generator=g), dim=1)
    train_labels = torch.randint(0, classes, (n_train,), generator=g)
    test = F.normalize(torch.randn(n_test, dim, generator=g), dim=1)
    return train, train_labels, test, torch.randint(0, classes, (n_test,), generator=g)


# (classes, k): many classes, fewer than 5 classes, k < 5, k = 1, k larger than the class count.
@pytest.mark.parametrize("classes,k", [(10, 20), (3, 2), (3, 10), (7, 1), (20, 3), (50, 200)])
def test_vote_equals_reference_knn_classifier_exactly(classes, k):
    train, train_labels, test, test_labels = random_features(500, 300, 16, classes, seed=classes * 1000 + k)
    # Cluster the test features near training ones so that top-1 is far from chance.
    test[:150] = F.normalize(train[:150] + 0.3 * test[:150], dim=1)
    test_labels[:150] = train_labels[:150]
    expected = reference_knn_classifier(train, train_labels, test, test_labels, k, 0.07)
    assert knn_classifier(train, train_labels, test, test_labels, k, 0.07, num_classes=classes) == expected
    # Chunked as the memory budget wants it, one image at a time, or all at once: the same counts.
    for chunk in (1, 7, 300):
        assert knn_classifier(train, train_labels, test, test_labels, k, 0.07, num_classes=classes,
                              chunk_size=chunk) == expected
    assert expected[0] > 40  # the clustered half is found


def test_vote_rejects_k_larger_than_the_training_set_and_mixed_widths():
    train, train_labels, test, test_labels = random_features(8, 4, 6, 2, seed=0)
    with pytest.raises(KnnError, match="k = 9 needs at least k training images, there are 8"):
        knn_classifier(train, train_labels, test, test_labels, 9)
    with pytest.raises(KnnError, match="6-d but test features 5-d"):
        knn_classifier(train, train_labels, test[:, :5], test_labels, 3)


@pytest.fixture(scope="module")
def knn_data(tmp_path_factory) -> Path:
    """train/: 12 images of 3 classes, val/: 6 images (40 px textures)."""
    root = tmp_path_factory.mktemp("knn_data")
    textured_images(root / "train", 12, size=40, seed=0, classes=3)
    textured_images(root / "val", 6, size=40, seed=1, classes=3)
    return root


def run_knn(argv: list[str]) -> tuple[int, str, str]:
    return run_cli(knn_main, argv)


def test_extraction_is_the_normalised_backbone_output_in_dataset_order(knn_data, tiny_vit_weights):
    model = load_model(tiny_vit_weights)
    train, _ = find_splits(knn_data)
    transform = eval_transform(36, 32)
    with torch_threads(1):
        feats = extract_features(model, LabelledDataset(train, transform), batch_size=5)
        images = torch.stack([transform(load_image(path)) for path, _ in train.samples])
        expected = F.normalize(model(images), dim=1, p=2)
    assert feats.shape == (12, 192)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert [p.parent.name for p, _ in train.samples] == ["class0"] * 4 + ["class1"] * 4 + ["class2"] * 4


def test_cli_writes_reference_lines_knn_json_and_a_dump_that_loads_back(knn_data, tiny_vit_weights, tmp_path):
    dump = tmp_path / "feats"
    code, stdout, stderr = run_knn(["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(knn_data),
                                    "--nb_knn", "1", "5", "12", "--dump_features", str(dump),
                                    "--output_dir", str(tmp_path / "out"), *SMALL])
    assert code == 0, stderr
    results = json.loads((tmp_path / "out" / "knn.json").read_text())
    for k in (1, 5, 12):
        top1, top5 = results[str(k)]["top1"], results[str(k)]["top5"]
        assert f"{k}-NN classifier result: Top1: {top1}, Top5: {top5}" in stdout
    assert results["train_images"] == 12 and results["val_images"] == 6 and results["num_classes"] == 3
    assert results["feature_dim"] == 192 and results["model"] == "vit_tiny/16"
    assert results["args"]["nb_knn"] == [1, 5, 12] and set(results["timings_s"]) == {"features", "vote", "total"}
    assert results["1"]["top5"] == results["1"]["top1"]  # k < 5: top-5 looks at the first k classes only
    assert read_knn_results(tmp_path / "out") == {k: results[str(k)] for k in (1, 5, 12)}

    # The dump holds the reference's four files, normalised features in dataset order.
    features = load_features(dump)
    assert features.train.shape == (12, 192) and features.test.shape == (6, 192)
    assert features.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.allclose(features.train.norm(dim=1), torch.ones(12))
    expected = {k: knn_classifier(features.train, features.train_labels, features.test, features.test_labels, k,
                                  num_classes=3) for k in (1, 5, 12)}
    assert {k: (results[str(k)]["top1"], results[str(k)]["top5"]) for k in (1, 5, 12)} == expected

    # --load_features: no data, no model; the same figures.
    code, stdout2, stderr = run_knn(["--load_features", str(dump), "--nb_knn", "1", "5", "12",
                                     "--output_dir", str(tmp_path / "again"), "--device", "cpu"])
    assert code == 0, stderr
    again = json.loads((tmp_path / "again" / "knn.json").read_text())
    assert all(again[str(k)] == results[str(k)] for k in (1, 5, 12))


def _error_line(argv: list[str]) -> str:
    code, _, stderr = run_knn(argv)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip() and "batch/s" not in line and "%|" not in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_input_gets_one_line_errors(knn_data, tiny_vit_weights, tmp_path):
    weights = ["--pretrained_weights", str(tiny_vit_weights), *SMALL]
    no_val = tmp_path / "no_val"
    textured_images(no_val / "train", 2, size=40)
    assert _error_line([*weights, "--data_path", str(no_val)]) == (
        f"error: --data_path: {no_val} has no val/ folder (expected {no_val}/train/<class>/*.jpg and "
        f"{no_val}/val/<class>/*.jpg)")
    empty = tmp_path / "empty"
    textured_images(empty / "train", 2, size=40)
    textured_images(empty / "val", 2, size=40)
    (empty / "train" / "class5").mkdir()
    assert _error_line([*weights, "--data_path", str(empty)]).startswith(
        f"error: --data_path: class folder {empty / 'train' / 'class5'} holds no image")
    unknown = tmp_path / "unknown"
    textured_images(unknown / "train", 2, size=40, classes=2)
    textured_images(unknown / "val", 3, size=40, classes=3)
    assert _error_line([*weights, "--data_path", str(unknown)]) == (
        f"error: --data_path: class 'class2' of {unknown / 'val'} is not in {unknown / 'train'}")
    assert _error_line([*weights, "--data_path", str(knn_data), "--nb_knn", "20", "200"]) == (
        f"error: --nb_knn 20: k must be between 1 and the 12 training images of {knn_data / 'train'}")
    # A dump of vit_tiny (192-d) voted with a vit_small named alongside (384-d).
    dump = tmp_path / "dump"
    assert run_knn([*weights, "--data_path", str(knn_data), "--nb_knn", "3", "--dump_features", str(dump)])[0] == 0
    assert _error_line(["--load_features", str(dump), "--pretrained_weights", "random", "--arch", "vit_small"]) == (
        f"error: --load_features: the features in {dump} are 192-d, but this model outputs 384-d features "
        "(a dump of another model?)")
    (dump / "testlabels.pth").unlink()
    assert _error_line(["--load_features", str(dump)]).startswith(
        f"error: --load_features: {dump / 'testlabels.pth'} is missing")


@pytest.mark.slow
def test_two_process_gloo_extraction_equals_one_process(knn_data, tiny_vit_weights, tmp_path):
    one = tmp_path / "one"
    assert run_knn(["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(knn_data), "--nb_knn", "3",
                    "--dump_features", str(one), "--batch_size_per_gpu", "4", *SMALL])[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "eval.knn", "--pretrained_weights", str(tiny_vit_weights),
           "--data_path", str(knn_data), "--nb_knn", "3", "--dump_features", str(two), "--batch_size_per_gpu", "4",
           "--output_dir", str(tmp_path / "out"), *SMALL]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("3-NN classifier result") == 1  # rank 0 votes and prints alone
    a, b = load_features(one), load_features(two)
    # 12 and 6 images over 2 ranks (strided shares) are put back in dataset order.
    assert torch.allclose(a.train, b.train, atol=1e-6) and torch.allclose(a.test, b.test, atol=1e-6)
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.test_labels, b.test_labels)


def test_training_with_knn_logs_accuracy_and_leaves_the_weights_unchanged(knn_data, tmp_path):
    data = tmp_path / "images"
    textured_images(data, 8, seed=4)
    flags = dict(epochs=2, warmup_epochs=1, lr=0.1, momentum_teacher=0.9)
    with torch_threads(1), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert train_main(tiny_args(data, tmp_path / "plain", **flags)) == 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert train_main(tiny_args(data, tmp_path / "knn", knn_data_path=knn_data, knn_k=5, **flags)) == 0
    plain = torch.load(tmp_path / "plain" / "checkpoint.pth", weights_only=True)
    knn = torch.load(tmp_path / "knn" / "checkpoint.pth", weights_only=True)
    for net in ("student", "teacher"):
        assert plain[net].keys() == knn[net].keys()
        assert all(torch.equal(plain[net][k], knn[net][k]) for k in plain[net]), net
    assert torch.equal(plain["dino_loss"]["center"], knn["dino_loss"]["center"])
    log = read_epoch_log(tmp_path / "knn")
    assert [r["epoch"] for r in log] == [0, 1] and all(0 <= r["knn_top1"] <= r["knn_top5"] <= 100 for r in log)
    assert "knn_top1" not in read_epoch_log(tmp_path / "plain")[0]
    assert f"k-NN top-1 {log[1]['knn_top1']:.2f} top-5 {log[1]['knn_top5']:.2f}" in out.getvalue()
    assert knn_epochs(log)["knn_top1"] == ([0.0, 1.0], [log[0]["knn_top1"], log[1]["knn_top1"]])

    # The accuracy logged is eval.knn's on the teacher backbone of the checkpoint (global crop size 32 px).
    code, stdout, _ = run_knn(["--pretrained_weights", str(tmp_path / "knn" / "checkpoint.pth"), "--data_path",
                               str(knn_data), "--nb_knn", "5", "--resize_size", str(round(32 * 256 / 224)),
                               "--crop_size", "32", "--num_workers", "0", "--device", "cpu"])
    assert code == 0
    assert f"5-NN classifier result: Top1: {log[1]['knn_top1']}, Top5: {log[1]['knn_top5']}" in stdout


@pytest.mark.slow
def test_two_process_training_logs_the_knn_of_its_teacher(knn_data, tmp_path):
    data = tmp_path / "images"
    textured_images(data, 8, seed=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "train",
           *tiny_args(data, out, batch_size_per_gpu=2, knn_data_path=knn_data, knn_k=3)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("k-NN top-1") == 1  # rank 0 votes and prints alone
    (record,) = read_epoch_log(out)
    # Both ranks extracted half of the images each; one process on the saved teacher agrees.
    code, stdout, _ = run_knn(["--pretrained_weights", str(out / "checkpoint.pth"), "--data_path", str(knn_data),
                               "--nb_knn", "3", "--resize_size", str(round(32 * 256 / 224)), "--crop_size", "32",
                               "--num_workers", "0", "--device", "cpu"])
    assert code == 0
    assert f"3-NN classifier result: Top1: {record['knn_top1']}, Top5: {record['knn_top5']}" in stdout

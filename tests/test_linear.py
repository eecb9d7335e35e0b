"""Linear probe: features against a transcription of the reference's get_intermediate_layers /
n_last_blocks / avgpool concatenation, the classifier's initialisation, a short run that resumes
exactly, --evaluate and bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval.linear as linear_cli
import eval.linear_run as linear_run
from dino_seg.linear_probe import LinearClassifier, probe_dim, probe_features
from dino_seg.models import build_backbone
from dino_seg.runs import read_linear_log
from ports import free_port
from train_helpers import run_cli, textured_images, torch_threads

REPO = Path(__file__).resolve().parents[1]

SMALL = ["--resize_size", "36", "--crop_size", "32", "--num_workers", "0", "--device", "cpu",
         "--batch_size_per_gpu", "4"]


def reference_features(model, inp, n, avgpool):
    """eval_linear.py's feature code with the reference ViT's get_intermediate_layers, transcribed."""
    def get_intermediate_layers(x, n=1):
        x = model.prepare_tokens(x)
        output = []
        for i, blk in enumerate(model.blocks):
            x = blk(x)
            if len(model.blocks) - i <= n:
                output.append(model.norm(x))
        return output

    intermediate_output = get_intermediate_layers(inp, n)
    output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
    if avgpool:
        output = torch.cat((output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)),
                           dim=-1)
        output = output.reshape(output.shape[0], -1)
    return output


@pytest.mark.parametrize("n,avgpool", [(4, False), (1, False), (1, True), (12, False)])
def test_probe_features_equal_the_reference_concatenation(n, avgpool):
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", 16).eval()
    images = torch.randn(2, 3, 48, 32)
    with torch_threads(1), torch.no_grad():
        got = probe_features(model, images, n, avgpool)
        expected = reference_features(model, images, n, avgpool)
    assert got.shape == (2, probe_dim(model, n, avgpool)) == (2, 192 * (n + int(avgpool)))
    assert torch.equal(got, expected)
    if n == 1 and not avgpool:  # the last block's [CLS] through the norm is the backbone output
        assert torch.allclose(got, model(images), atol=1e-6)


def test_avgpool_with_several_blocks_is_refused():
    model = build_backbone("vit_tiny", 16)
    with pytest.raises(ValueError, match="--avgpool_patchtokens true needs --n_last_blocks 1"):
        probe_features(model, torch.zeros(1, 3, 32, 32), 4, True)


def test_linear_classifier_init():
    torch.manual_seed(0)
    clf = LinearClassifier(1536, 1000)
    assert clf.linear.weight.std().item() == pytest.approx(0.01, rel=0.01)
    assert abs(clf.linear.weight.mean().item()) < 1e-4 and torch.equal(clf.linear.bias, torch.zeros(1000))
    assert set(clf.state_dict()) == {"linear.weight", "linear.bias"}
    assert clf(torch.zeros(3, 1536)).shape == (3, 1000)


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory) -> Path:
    """train/: 12 images of 6 classes, val/: 6 images (40 px textures)."""
    root = tmp_path_factory.mktemp("probe_data")
    textured_images(root / "train", 12, size=40, seed=0, classes=6)
    textured_images(root / "val", 6, size=40, seed=1, classes=6)
    return root


def run_linear(argv: list[str]) -> tuple[int, str, str]:
    return run_cli(linear_cli.main, argv)


def test_short_run_resumes_exactly_and_evaluates(probe_data, tiny_vit_weights, tmp_path, monkeypatch):
    # lr 30: large steps, so that a resume that lost the optimiser, schedule or data order would show.
    flags = ["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(probe_data), "--epochs", "3",
             "--lr", "30", *SMALL]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    code, stdout, stderr = run_linear([*flags, "--output_dir", str(full)])
    assert code == 0, stderr
    assert "Top-1 test accuracy:" in stdout and ("it/s" in stderr or "s/it" in stderr)

    # An interruption during epoch 1: the checkpoint after epoch 0 stays, then the run is started again.
    real = linear_run.train_probe_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(linear_run, "train_probe_epoch", interrupted)
    code, _, stderr = run_linear([*flags, "--output_dir", str(resumed)])
    assert code == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"interrupted: {resumed / 'checkpoint.pth.tar'} holds the last "
                                               "complete epoch, if any; start again with the same --output_dir to "
                                               "resume")
    monkeypatch.setattr(linear_run, "train_probe_epoch", real)
    assert torch.load(resumed / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    code, stdout, _ = run_linear([*flags, "--output_dir", str(resumed)])
    assert code == 0 and "resuming at epoch 1" in stdout

    a = torch.load(full / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(resumed / "checkpoint.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and set(a["state_dict"]) == {"module.linear.weight", "module.linear.bias"}
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["best_acc"] == b["best_acc"] and a["scheduler"]["last_epoch"] == 3
    log_a, log_b = [json.loads(x) for x in (full / "log.txt").read_text().splitlines()], \
        [json.loads(x) for x in (resumed / "log.txt").read_text().splitlines()]
    assert log_a == log_b and [r["epoch"] for r in log_a] == [0, 1, 2]
    # lr 30 * 4 / 256 on a cosine over 3 epochs, stepped per epoch.
    assert [r["train_lr"] for r in log_a] == pytest.approx([30 * 4 / 256 * f for f in (1, 0.75, 0.25)])
    assert {"train_loss", "test_loss", "test_acc1", "test_acc5"} <= log_a[0].keys()
    assert read_linear_log(full) == log_a
    moved = a["state_dict"]["module.linear.weight"].std().item()
    assert moved > 0.02  # trained away from N(0, 0.01)

    # --evaluate reproduces the last epoch's validation from the saved classifier.
    code, stdout, _ = run_linear([*flags, "--output_dir", str(full), "--evaluate"])
    assert code == 0
    assert f"Accuracy of the network on the 6 test images: {log_a[-1]['test_acc1']:.1f}%" in stdout


def test_bad_flags_get_one_line_errors(probe_data, tiny_vit_weights, tmp_path):
    flags = ["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(probe_data), *SMALL]
    code, _, stderr = run_linear([*flags, "--avgpool_patchtokens", "true", "--output_dir", str(tmp_path)])
    assert code == 2 and stderr.strip() == ("error: --avgpool_patchtokens true needs --n_last_blocks 1 (got 4), as "
                                            "in the reference, whose concatenation is defined for one block")
    code, _, stderr = run_linear([*flags, "--evaluate", "--output_dir", str(tmp_path / "none")])
    assert code == 2 and stderr.strip().startswith("error: --evaluate: no classifier at")
    code, _, stderr = run_linear([*flags, "--num_labels", "3"])
    assert code == 2 and stderr.strip() == f"error: --num_labels 3: {probe_data / 'train'} has 6 classes"
    train_run = tmp_path / "train_run"
    train_run.mkdir()
    (train_run / "log.txt").write_text('{"train_loss": 5.0, "train_wd": 0.04, "epoch": 0}\n')
    code, _, stderr = run_linear([*flags, "--output_dir", str(train_run)])
    assert code == 2 and "holds the log.txt of a `python -m train` run" in stderr
    assert (train_run / "log.txt").read_text() == '{"train_loss": 5.0, "train_wd": 0.04, "epoch": 0}\n'


def _other_weights(path: Path) -> Path:
    """Another seeded vit_tiny/16, same architecture as tiny_vit_weights: only its content differs."""
    torch.manual_seed(1)
    torch.save(build_backbone("vit_tiny", 16).state_dict(), path)
    return path


def test_resume_and_evaluate_refuse_a_classifier_of_other_weights(probe_data, tiny_vit_weights, tmp_path):
    from dino_seg.files import file_digest

    common = ["--data_path", str(probe_data), "--epochs", "2", *SMALL]
    out = tmp_path / "out"
    code, _, stderr = run_linear(["--pretrained_weights", str(tiny_vit_weights), *common, "--epochs", "1",
                                  "--output_dir", str(out)])
    assert code == 0, stderr
    ckpt = out / "checkpoint.pth.tar"
    saved = ckpt.read_bytes()
    recorded = torch.load(ckpt, weights_only=True)["probe"]
    assert recorded == {"weights": f"sha256 {file_digest(tiny_vit_weights)}", "checkpoint_key": "teacher",
                        "arch": "vit_tiny", "patch_size": 16, "n_last_blocks": 4, "avgpool_patchtokens": False,
                        "num_labels": 6, "classes": [f"class{i}" for i in range(6)]}

    other = _other_weights(tmp_path / "other.pth")
    expected = (f"error: {ckpt} was trained with other settings (weights sha256 {file_digest(tiny_vit_weights)} -> "
                f"sha256 {file_digest(other)}): remove it to train again, or choose another --output_dir\n")
    for extra in ([], ["--evaluate"]):
        code, stdout, stderr = run_linear(["--pretrained_weights", str(other), *common, "--output_dir", str(out),
                                           *extra])
        assert (code, stderr) == (2, expected) and "Accuracy" not in stdout
    code, _, stderr = run_linear(["--pretrained_weights", str(tiny_vit_weights), *common, "--n_last_blocks", "2",
                                  "--output_dir", str(out)])
    assert code == 2 and "(n_last_blocks 4 -> 2)" in stderr
    assert ckpt.read_bytes() == saved  # nothing was overwritten

    # The same weights under another name are the same weights (identified by content): the run resumes.
    renamed = tmp_path / "renamed.pth"
    renamed.write_bytes(tiny_vit_weights.read_bytes())
    code, stdout, stderr = run_linear(["--pretrained_weights", str(renamed), *common, "--output_dir", str(out)])
    assert code == 0 and "resuming at epoch 1" in stdout, stderr


def test_official_linear_weights_are_evaluated(probe_data, tiny_vit_weights, tmp_path):
    # An official dino_*_linearweights.pth is the reference's checkpoint of the DDP-wrapped classifier:
    # {"epoch", "state_dict": {"module.linear.weight", "module.linear.bias"}, "optimizer", "scheduler", "best_acc"}.
    # Zero weights rank the classes by their bias alone, the same for every image: top-1 is the `target` class,
    # top-5 all but the class of the lowest bias. val/ holds one image of each of the 6 classes, so top-1 is 1/6
    # and top-5 5/6 only if the file's weights were loaded into the classifier (its own initialisation is random).
    flags = ["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(probe_data), "--evaluate", *SMALL]
    dim = 4 * 192  # [CLS] of the last 4 blocks of vit_tiny
    for target in (0, 4):
        bias = -(torch.arange(6) - target).abs().float()  # highest at `target`, lowest unique (class 5, then 0)
        official = tmp_path / f"dino_vittiny16_linearweights_{target}.pth"
        torch.save({"epoch": 100, "best_acc": 16.7, "optimizer": {}, "scheduler": {},
                    "state_dict": {"module.linear.weight": torch.zeros(6, dim), "module.linear.bias": bias}}, official)
        code, stdout, stderr = run_linear([*flags, "--linear_weights", str(official)])
        assert code == 0, stderr
        assert "Accuracy of the network on the 6 test images: 16.7% (top-5 83.3%)" in stdout
    # Official weights of another model (ViT-S/16: 4 x 384 features) do not fit: one line, exit 2.
    wrong = tmp_path / "dino_vitsmall16_linearweights.pth"
    torch.save({"state_dict": {"module.linear.weight": torch.zeros(6, 1536), "module.linear.bias": torch.zeros(6)}},
               wrong)
    code, _, stderr = run_linear([*flags, "--linear_weights", str(wrong)])
    assert code == 2 and stderr.startswith(f"error: {wrong}: `state_dict` does not fit this model") and \
        len(stderr.splitlines()) == 1


@pytest.mark.slow
def test_two_process_gloo_run_validates_as_one_process(probe_data, tiny_vit_weights, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    flags = ["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(probe_data), *SMALL]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "eval.linear", *flags, "--epochs", "2", "--lr", "30",
           "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Top-1 test accuracy:") == 1  # rank 0 alone prints
    ckpt = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["args"]["batch_size_per_gpu"] == 4
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    # lr 30 x 4 images x 2 processes / 256 (the linear scaling rule counts every process), cosine over 2 epochs.
    assert [r["train_lr"] for r in log] == pytest.approx([30 * 8 / 256, 30 * 8 / 256 * 0.5])
    # Each process validates 3 of the 6 val images; the sums over both give what one process finds on all 6.
    code, stdout, stderr = run_linear([*flags, "--evaluate", "--output_dir", str(out)])
    assert code == 0, stderr
    assert f"Accuracy of the network on the 6 test images: {log[-1]['test_acc1']:.1f}% " \
           f"(top-5 {log[-1]['test_acc5']:.1f}%)" in stdout

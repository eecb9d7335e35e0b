"""Unit tests of the training pieces: schedules, loss, head, optimiser helpers, augmentation, data,
flags, distributed detection, checkpoints, logs and the run reader."""

from __future__ import annotations

import argparse
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from dino_seg import runs
from dino_seg.checkpoint import CheckpointError, add_prefix, load_checkpoint, save_checkpoint, strip_prefix
from dino_seg.distributed import detect_launch
from dino_seg.flags import bool_flag
from dino_seg.runs import trim_records
from train.augment import DataAugmentationDINO, GaussianBlur, Solarization
from train.data import ImageFilesDataset, build_loader, find_images
from train.engine import resolve_precision, update_teacher
from train.head import DINOHead, MultiCropWrapper, WeightNormLinear
from train.loss import DINOLoss, collapse_monitors, collapse_warning
from train.main import get_args_parser
from train.optim import LARS, cancel_gradients_last_layer, clip_gradients, get_params_groups
from train.schedules import cosine_scheduler, teacher_temp_schedule
from train_helpers import textured_images

# ---------------------------------------------------------------- schedules


def test_cosine_scheduler_values():
    s = cosine_scheduler(1.0, 0.0, epochs=2, niter_per_ep=5, warmup_epochs=1, start_warmup_value=0.0)
    assert s.shape == (10,)
    np.testing.assert_allclose(s[:5], [0.0, 0.25, 0.5, 0.75, 1.0])  # linspace includes its end
    # Cosine over the 5 remaining iterations, divided by 5 (not 4): it never reaches 0 exactly.
    np.testing.assert_allclose(s[5:], 0.5 * (1 + np.cos(np.pi * np.arange(5) / 5)))
    np.testing.assert_allclose(s[7], 0.6545084971874737)
    up = cosine_scheduler(0.996, 1.0, epochs=1, niter_per_ep=4)
    np.testing.assert_allclose(up, [0.996, 0.996585786437627, 0.998, 0.999414213562373])


def test_teacher_temp_schedule_and_bad_warmup():
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    with pytest.raises(ValueError, match="--warmup_epochs"):
        cosine_scheduler(1.0, 0.0, epochs=2, niter_per_ep=3, warmup_epochs=3)


# ---------------------------------------------------------------- loss


def _reference_loss(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, ncrops: int,
                    t_temp: float, s_temp: float = 0.1) -> float:
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    s_chunks = np.split(student / s_temp, ncrops)
    t_chunks = np.split(softmax((teacher - center) / t_temp), 2)
    terms = []
    for iq, q in enumerate(t_chunks):
        for v, s in enumerate(s_chunks):
            if v != iq:
                m = s.max(-1, keepdims=True)
                logp = s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))
                terms.append((-q * logp).sum(-1).mean())
    return float(np.mean(terms)), len(terms)


def test_dino_loss_matches_pairwise_formula_and_updates_centre():
    torch.manual_seed(0)
    b, k, ncrops = 3, 5, 4
    student = torch.randn(ncrops * b, k)
    teacher = torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                       nepochs=5)
    loss_fn.center.fill_(0.3)
    expected, n_terms = _reference_loss(student.numpy(), teacher.numpy(), 0.3, ncrops, t_temp=0.055)
    assert n_terms == 2 * (ncrops - 1)  # the two same-view pairs are skipped
    loss = loss_fn(student, teacher, epoch=1)  # epoch 1 of the warm-up: temperature 0.055
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # centre: 0.9 * 0.3 + 0.1 * batch mean
    np.testing.assert_allclose(loss_fn.center.numpy()[0], 0.27 + 0.1 * teacher.mean(0).numpy(), rtol=1e-6)
    assert list(loss_fn.state_dict()) == ["center"]


def test_dino_loss_skips_same_view_pairs():
    # Teacher views 0 and 1 are one-hot on classes 0 and 1; student views 0, 1, 2 are confident on
    # classes 0, 1, 2. Only cross-view pairs count, and all of them disagree: loss ~ 4 (logit gap 0.4 / 0.1).
    t = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    s = torch.tensor([[0.4, 0, 0, 0], [0, 0.4, 0, 0], [0, 0, 0.4, 0]])
    loss = DINOLoss(4, 3, 0.04, 0.04, 0, 1)(s, t, 0).item()
    # -log softmax of a logit 4 below the top one among (4, 0, 0, 0): log(e^4 + 3) - 0
    assert loss == pytest.approx(math.log(math.exp(4) + 3), rel=1e-4)
    # with the same-view pairs (loss log(1 + 3 e^-4)) the mean would be much lower


def test_collapse_monitors():
    k = 8
    uniform = torch.full((4, k), 1.0 / k)
    entropy, kl = collapse_monitors(uniform, torch.tensor(math.log(k)))
    assert entropy == pytest.approx(math.log(k), rel=1e-6)
    assert kl == pytest.approx(0.0, abs=1e-6)
    onehot = F.one_hot(torch.zeros(4, dtype=torch.long), k).float()
    assert collapse_monitors(onehot, torch.tensor(1.0))[0] == pytest.approx(0.0, abs=1e-6)
    # KL from the loss equals the mean KL over the loss's (teacher, other student view) pairs
    torch.manual_seed(1)
    ncrops, b = 3, 2
    student, teacher = torch.randn(ncrops * b, k), torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, ncrops, 0.04, 0.04, 0, 1)
    q = loss_fn.teacher_probs(teacher, 0)
    loss = loss_fn(student, teacher, 0)
    logp = F.log_softmax(student / 0.1, dim=-1).chunk(ncrops)
    kls = [(qc * (qc.clamp_min(1e-30).log() - logp[v])).sum(-1).mean()
           for iq, qc in enumerate(q.chunk(2)) for v in range(ncrops) if v != iq]
    assert collapse_monitors(q, loss)[1] == pytest.approx(float(torch.stack(kls).mean()), rel=1e-4)


def test_collapse_warning():
    assert collapse_warning(teacher_entropy=2.0, kl=0.8) is None
    assert "one dimension" in collapse_warning(teacher_entropy=0.01, kl=0.8)
    assert "no longer differ" in collapse_warning(teacher_entropy=5.5, kl=0.001)
    assert "--momentum_teacher 0.99" in collapse_warning(teacher_entropy=5.5, kl=0.001)


# ---------------------------------------------------------------- head


def test_dino_head_keys_shapes_and_fixed_norm():
    head = DINOHead(24, 10, hidden_dim=16, bottleneck_dim=8)
    assert list(head.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
                                       "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"]
    assert head.last_layer.weight_g.shape == (10, 1) and head.last_layer.weight_v.shape == (10, 8)
    assert not head.last_layer.weight_g.requires_grad
    np.testing.assert_allclose(head.last_layer.weight.detach().norm(dim=1).numpy(), np.ones(10), rtol=1e-6)
    assert DINOHead(24, 10, norm_last_layer=False).last_layer.weight_g.requires_grad
    bn_head = DINOHead(24, 10, use_bn=True, hidden_dim=16, bottleneck_dim=8)
    assert isinstance(bn_head.mlp[1], nn.BatchNorm1d) and isinstance(bn_head.mlp[2], nn.GELU)
    out = head(torch.randn(5, 24))
    assert out.shape == (5, 10)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_weight_norm_linear_equals_torch_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(6, 4)
    ours.weight_g.data = torch.rand(4, 1) + 0.5
    theirs = nn.utils.weight_norm(nn.Linear(6, 4, bias=False))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x), theirs(x))


class _MeanBackbone(nn.Module):
    """(B, 3, H, W) -> (B, 3) channel means, recording the batch shapes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3)) * self.scale


def test_multicrop_wrapper_batches_same_resolution_crops():
    backbone = _MeanBackbone()
    head = nn.Linear(3, 2)
    wrapper = MultiCropWrapper(backbone, head)
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4),
             torch.randn(2, 3, 4, 4)]
    out = wrapper(crops)
    assert backbone.calls == [(4, 3, 8, 8), (6, 3, 4, 4)]  # one pass per resolution
    expected = head(torch.cat([c.mean(dim=(2, 3)) * 2.0 for c in crops]))
    torch.testing.assert_close(out, expected)
    assert sorted(wrapper.state_dict()) == ["backbone.scale", "head.bias", "head.weight"]


# ---------------------------------------------------------------- optimiser helpers


def test_params_groups_exclude_biases_and_1d():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2, bias=False))
    model[2].weight.requires_grad = False
    reg, noreg = get_params_groups(model)
    assert [p is model[0].weight for p in reg["params"]] == [True]
    assert {id(p) for p in noreg["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert noreg["weight_decay"] == 0.0


def test_clip_gradients_per_tensor():
    model = nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[3.6, 4.8]])  # norm 6 > 3: scaled to 3
    model.bias.grad = torch.tensor([1.0])  # norm 1: untouched
    norms = clip_gradients(model, 3.0)
    np.testing.assert_allclose(norms.numpy(), [6.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(model.weight.grad.numpy(), [[1.8, 2.4]], rtol=1e-5)
    np.testing.assert_allclose(model.bias.grad.numpy(), [1.0])


def test_cancel_gradients_last_layer():
    head = DINOHead(4, 3, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    head(torch.randn(2, 4)).sum().backward()
    cancel_gradients_last_layer(1, head, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is not None
    cancel_gradients_last_layer(0, head, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is None and head.last_layer.weight_g.grad is None
    assert head.mlp[0].weight.grad is not None


def test_lars_step_matches_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5, eta=0.01)
    w.grad, b.grad = torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])
    opt.step()
    dp = torch.tensor([[1.0, 0.0]]) + 0.5 * torch.tensor([[3.0, 4.0]])  # [[2.5, 2]]
    q = 0.01 * 5.0 / dp.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.1 * dp * q)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))  # 1-d: plain momentum SGD


def test_update_teacher_is_ema():
    student, teacher = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = {k: 0.9 * v + 0.1 * student.state_dict()[k] for k, v in teacher.state_dict().items()}
    update_teacher(student, teacher, 0.9)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, expected[k])


# ---------------------------------------------------------------- augmentation


def _texture(size=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def test_multicrop_shapes_and_normalisation():
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 3, global_crops_size=32, local_crops_size=16)
    crops = aug(_texture())
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 for c in crops)
    assert min(float(c.min()) for c in crops) < 0  # normalised, not in [0, 1]
    with pytest.raises(ValueError, match="--local_crops_scale"):
        DataAugmentationDINO((0.4, 1.0), (0.5, 0.1), 2)


def test_blur_and_solarization_probabilities():
    img = _texture()
    random.seed(0)
    assert np.array_equal(np.asarray(GaussianBlur(p=0.0)(img)), np.asarray(img))
    assert not np.array_equal(np.asarray(GaussianBlur(p=1.0)(img)), np.asarray(img))
    assert np.array_equal(np.asarray(Solarization(1.0)(img)), np.asarray(ImageOps.solarize(img)))
    assert np.array_equal(np.asarray(Solarization(0.0)(img)), np.asarray(img))


# ---------------------------------------------------------------- data


def test_find_images_recursive_and_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for p in ("a/x.png", "a/b/y.JPG", "z.webp", ".hidden/h.png", "a/notes.txt"):
        (tmp_path / p).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a/b/y.JPG", "a/x.png", "z.webp"]
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        find_images(tmp_path / "does_not_exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found in .*empty"):
        find_images(tmp_path / "empty")


def test_unreadable_images_are_replaced_and_reported(tmp_path):
    good = textured_images(tmp_path, 2, classes=1)  # class0/img000.png, class0/img001.png
    bad = tmp_path / "class0" / "img000b.jpg"  # sorts between the two good ones
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "class0" / "img000c.png"
    data = good[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    ds = ImageFilesDataset(tmp_path, transform=lambda im: np.asarray(im).copy())
    assert [p.name for p in ds.paths] == ["img000.png", "img000b.jpg", "img000c.png", "img001.png"]
    img, skipped = ds[1]
    assert skipped == (str(bad), str(truncated))
    np.testing.assert_array_equal(img, np.asarray(Image.open(good[1]).convert("RGB")))
    assert ds[0][1] == ()
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of the 1 images"):
        ImageFilesDataset(bad_only, transform=lambda im: im)[0]


def test_augmentation_seeded_per_sample_and_epoch(tmp_path):
    textured_images(tmp_path, 3)
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 1, global_crops_size=16, local_crops_size=8)
    ds = ImageFilesDataset(tmp_path, aug, seed=5)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = ds[1][0]
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    again = ds[1][0]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ds.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(first, ds[1][0]))


def test_loader_batches_do_not_depend_on_workers(tmp_path):
    textured_images(tmp_path, 8)
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 1, global_crops_size=16, local_crops_size=8)
    batches = {}
    for workers in (0, 2):
        ds = ImageFilesDataset(tmp_path, aug, seed=0)
        loader = build_loader(ds, batch_size=3, num_workers=workers, rank=0, world_size=1, seed=0)
        loader.sampler.set_epoch(3)
        ds.set_epoch(3)
        batches[workers] = [crops for crops, _ in loader]
    assert len(batches[0]) == 2  # 8 images, batch 3, last incomplete batch dropped
    for b0, b2 in zip(batches[0], batches[2]):
        assert [tuple(c.shape) for c in b0] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)]
        assert all(torch.equal(x, y) for x, y in zip(b0, b2))


def test_loader_rejects_batch_larger_than_data(tmp_path):
    textured_images(tmp_path, 3)
    ds = ImageFilesDataset(tmp_path, transform=lambda im: im)
    with pytest.raises(ValueError, match="--batch_size_per_gpu: 4"):
        build_loader(ds, batch_size=4, num_workers=0, rank=0, world_size=1, seed=0)


# ---------------------------------------------------------------- flags, precision, launch


def test_reference_defaults_and_extra_flags():
    args = get_args_parser().parse_args([])
    expected = dict(arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=True, momentum_teacher=0.996,
                    use_bn_in_head=False, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
                    use_fp16=True, weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, batch_size_per_gpu=64,
                    epochs=100, freeze_last_layer=1, lr=0.0005, warmup_epochs=10, min_lr=1e-6, optimizer="adamw",
                    drop_path_rate=0.1, global_crops_scale=(0.4, 1.0), local_crops_number=8,
                    local_crops_scale=(0.05, 0.4), output_dir=".", saveckp_freq=20, seed=0, num_workers=10,
                    dist_url="env://", local_rank=0, global_crops_size=224, local_crops_size=96, bf16=False,
                    device="auto")
    assert {k: getattr(args, k) for k in expected} == expected
    args = get_args_parser().parse_args(["--use_fp16", "false", "--bf16", "True", "--local-rank", "3",
                                         "--global_crops_scale", "0.14", "1"])
    assert (args.use_fp16, args.bf16, args.local_rank, args.global_crops_scale) == (False, True, 3, [0.14, 1.0])
    assert get_args_parser().parse_args(["--local_rank", "2"]).local_rank == 2
    with pytest.raises(argparse.ArgumentTypeError):
        bool_flag("maybe")


def test_resolve_precision():
    cpu = resolve_precision("cpu", use_fp16=True, bf16=False)
    assert (cpu.dtype, cpu.use_scaler) == (None, False) and "fp32" in cpu.note
    assert resolve_precision("cpu", use_fp16=False, bf16=True).dtype == torch.bfloat16
    cuda = resolve_precision("cuda", use_fp16=True, bf16=False)
    assert (cuda.dtype, cuda.use_scaler) == (torch.float16, True)
    assert resolve_precision("cuda", use_fp16=True, bf16=True).use_scaler is False


def test_detect_launch():
    assert detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == ("torchrun", 3, 8, 1)
    assert detect_launch({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"}) == ("slurm", 5, 16, 5)
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == ("none", 0, 1, 0)
    # torchrun inside a SLURM allocation: torchrun's variables win
    assert detect_launch({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})[0] == "torchrun"
    assert detect_launch({}) == ("none", 0, 1, 0)
    # torch.distributed.launch without --use-env: the local rank only comes as --local-rank
    assert detect_launch({"RANK": "3", "WORLD_SIZE": "4"}, local_rank=1) == ("torchrun", 3, 4, 1)


# ---------------------------------------------------------------- checkpoints, logs, run reader


def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)  # cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left
    assert load_checkpoint(path)["epoch"] == 1


def test_load_checkpoint_allows_namespace_args_only(tmp_path):
    official = tmp_path / "official.pth"
    torch.save({"epoch": 3, "args": argparse.Namespace(arch="vit_small", lr=0.0005)}, official)
    assert load_checkpoint(official)["args"] == {"arch": "vit_small", "lr": 0.0005}
    evil = tmp_path / "evil.pth"
    torch.save({"epoch": 3, "obj": random.Random(0)}, evil)
    with pytest.raises(CheckpointError, match="evil.pth: not a readable PyTorch checkpoint .unsupported global"):
        load_checkpoint(evil)


def test_prefix_helpers():
    sd = {"backbone.w": 1, "module.head.b": 2}
    assert add_prefix(sd) == {"module.backbone.w": 1, "module.head.b": 2}
    assert strip_prefix(add_prefix(sd)) == {"backbone.w": 1, "head.b": 2}


def test_trim_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"it": i}) + "\n" for i in range(5)) + '{"it": 5, "lo')
    assert trim_records(path, lambda r: r["it"] < 3) == 3  # two past the resume point and a half line
    assert [json.loads(line)["it"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert trim_records(tmp_path / "missing.jsonl", lambda r: True) == 0


def test_runs_reader(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such training output folder"):
        runs.read_metrics(tmp_path / "nope")
    assert runs.read_metrics(tmp_path) == [] and runs.list_checkpoints(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"it": 0, "loss": 5.5}\n{"it": 1, "loss": 5.0}\n{"it": 2, "lo')
    records = runs.read_metrics(tmp_path)
    assert records == [{"it": 0, "loss": 5.5}, {"it": 1, "loss": 5.0}]
    assert runs.series(records, "loss") == ([0.0, 1.0], [5.5, 5.0])
    (tmp_path / "log.txt").write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    with pytest.raises(ValueError, match="log.txt: line 2 is not JSON"):
        runs.read_epoch_log(tmp_path)
    for name in ("checkpoint.pth", "checkpoint0020.pth", "checkpoint0000.pth", ".checkpoint.pth.x.tmp"):
        (tmp_path / name).write_bytes(b"x")
    ckpts = runs.list_checkpoints(tmp_path)
    assert [(c.path.name, c.epoch, c.is_latest) for c in ckpts] == [
        ("checkpoint0000.pth", 0, False), ("checkpoint0020.pth", 20, False), ("checkpoint.pth", None, True)]


@pytest.mark.parametrize("nodelist, scontrol_out, preset_port", [
    ("gpu-node[03-04]", "gpu-node03\ngpu-node04\n", None), ("gpu-node07", None, "12345")])
def test_slurm_variables_give_rank_world_size_master_address_and_port(tmp_path, monkeypatch, nodelist,
                                                                      scontrol_out, preset_port):
    import stat

    import torch.distributed as dist

    from dino_seg import distributed

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if scontrol_out is not None:  # a stand-in scontrol: `scontrol show hostnames LIST` prints one host a line
        script = bin_dir / "scontrol"
        calls = tmp_path / "calls"
        hosts = " ".join(scontrol_out.split())
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nprintf '%s\\n' {hosts}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir) if scontrol_out is not None else str(tmp_path / "empty"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    if preset_port:
        monkeypatch.setenv("MASTER_PORT", preset_port)
    joined = {}

    def init_process_group(**kwargs):  # stands in for torch's rendezvous: records what it was given
        import os

        joined.update(kwargs, addr=os.environ["MASTER_ADDR"], port=os.environ["MASTER_PORT"])

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "barrier", lambda: None)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.launcher, info.backend) == (3, 4, 1, "slurm", "gloo")
    first = "gpu-node03" if scontrol_out is not None else "gpu-node07"
    assert joined == {"backend": "gloo", "init_method": "env://", "world_size": 4, "rank": 3, "addr": first,
                      "port": preset_port or "29500"}
    if scontrol_out is not None:
        assert (tmp_path / "calls").read_text() == f"show hostnames {nodelist}\n"


def test_slurm_node_list_without_scontrol_is_a_clear_error(tmp_path, monkeypatch):
    from dino_seg.distributed import LaunchError, _slurm_master_addr

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match=r"cannot expand the node list 'n\[1-2\]' without scontrol; export "
                                           r"MASTER_ADDR"):
        _slurm_master_addr({"SLURM_JOB_NODELIST": "n[1-2]"})
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST is missing"):
        _slurm_master_addr({})

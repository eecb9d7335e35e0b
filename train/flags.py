"""The flags of `python -m train`, without importing torch: `--help` and a bad flag answer at once (the
training itself, train/main.py, is imported once the flags parse)."""

from __future__ import annotations

import argparse

from dino_seg.flags import bool_flag
from dino_seg.names import ARCHS

OPTIMIZERS = ("adamw", "sgd", "lars")  # train.optim.build_optimizer's
AUGMENTATIONS = ("fast", "reference")  # train.augment.DataAugmentationDINO's


def get_args_parser() -> argparse.ArgumentParser:
    """The reference `main_dino.py` flags and defaults, plus --global_crops_size, --local_crops_size,
    --bf16 and --device."""
    p = argparse.ArgumentParser("python -m train", description="DINO self-supervised pretraining.")
    # Model
    p.add_argument("--arch", default="vit_small", choices=list(ARCHS) + ["deit_tiny", "deit_small"],
                   help="Backbone (default vit_small); vit_tiny or vit_small for quick experiments.")
    p.add_argument("--patch_size", default=16, type=int, help="ViT patch size, 16 or 8 (default 16). With 8, "
                   "consider --use_fp16 false to avoid instabilities.")
    p.add_argument("--init_weights", default="", type=str,
                   help="Start student and teacher from these backbone weights, with new heads: a preset "
                        "(dino_vits16, dinov2_vits14_reg, dinov3_vits16, ...) or a file of any supported ViT (DINO, "
                        "DINOv2 with or without registers, DINOv3); the architecture comes from the weights "
                        "(--arch and --patch_size are ignored). Continues DINO training on your own images. With "
                        "patch 14, crops are cut down to whole patches (96 -> 84): --local_crops_size 98 avoids it.")
    p.add_argument("--out_dim", default=65536, type=int, help="Output dimension of the DINO head (default "
                   "65536; 1k-8k for small or custom data sets).")
    p.add_argument("--norm_last_layer", default=True, type=bool_flag, help="Weight-normalise the head's last "
                   "layer with its norm fixed to 1 (default true); false is better but can be unstable.")
    p.add_argument("--momentum_teacher", default=0.996, type=float, help="Base teacher EMA momentum, raised "
                   "to 1 by a cosine schedule (default 0.996; higher with small batches, e.g. 0.9995 at 256).")
    p.add_argument("--use_bn_in_head", default=False, type=bool_flag,
                   help="BatchNorm in the projection head (default false).")
    # Teacher temperature
    p.add_argument("--warmup_teacher_temp", default=0.04, type=float,
                   help="Initial teacher temperature (default 0.04); lower it if the loss does not decrease.")
    p.add_argument("--teacher_temp", default=0.04, type=float, help="Teacher temperature after the warm-up "
                   "(default 0.04; above 0.07 is usually unstable).")
    p.add_argument("--warmup_teacher_temp_epochs", default=0, type=int,
                   help="Epochs of linear teacher-temperature warm-up (default 0; 30 for long runs).")
    # Optimisation
    p.add_argument("--use_fp16", default=True, type=bool_flag, help="fp16 mixed precision with loss scaling "
                   "on CUDA (default true, as the reference); ignored (fp32) on CPU and MPS.")
    p.add_argument("--bf16", default=False, type=bool_flag, help="bf16 autocast on any device instead of fp16 "
                   "(default false); takes precedence over --use_fp16.")
    p.add_argument("--weight_decay", default=0.04, type=float, help="Initial weight decay (default 0.04).")
    p.add_argument("--weight_decay_end", default=0.4, type=float,
                   help="Final weight decay of the cosine schedule (default 0.4).")
    p.add_argument("--clip_grad", default=3.0, type=float, help="Per-tensor gradient-norm clipping (default 3.0; "
                   "0 disables).")
    p.add_argument("--batch_size_per_gpu", default=64, type=int,
                   help="Images per process and step (default 64).")
    p.add_argument("--epochs", default=100, type=int, help="Training epochs (default 100).")
    p.add_argument("--freeze_last_layer", default=1, type=int, help="Epochs during which the head's last layer "
                   "is kept fixed (default 1); raise it if the loss does not decrease.")
    p.add_argument("--lr", default=0.0005, type=float, help="Peak learning rate for a total batch of 256, "
                   "scaled linearly with batch_size_per_gpu x processes (default 0.0005).")
    p.add_argument("--warmup_epochs", default=10, type=int, help="Epochs of linear lr warm-up (default 10).")
    p.add_argument("--min_lr", default=1e-6, type=float, help="Learning rate at the end of the cosine (default 1e-6).")
    p.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS),
                   help="adamw (default, for ViTs), sgd, or lars (convnets, large batches).")
    p.add_argument("--drop_path_rate", default=0.1, type=float, help="Stochastic depth of the student (default 0.1).")
    # Multi-crop
    p.add_argument("--global_crops_scale", default=(0.4, 1.0), type=float, nargs="+",
                   help="Area range of the global crops (default 0.4 1.0; 0.14 1.0 without local crops).")
    p.add_argument("--local_crops_number", default=8, type=int,
                   help="Local crops per image (default 8; 0 disables multi-crop).")
    p.add_argument("--local_crops_scale", default=(0.05, 0.4), type=float, nargs="+",
                   help="Area range of the local crops (default 0.05 0.4).")
    p.add_argument("--global_crops_size", default=224, type=int, help="Global crop side in pixels (default 224).")
    p.add_argument("--local_crops_size", default=96, type=int, help="Local crop side in pixels (default 96).")
    p.add_argument("--augmentation", default="fast", choices=AUGMENTATIONS,
                   help="fast (default: the reference's augmentation distribution on uint8 arrays with OpenCV, "
                        "JPEGs decoded at the size the crops need) or reference (its exact PIL pipeline).")
    # Misc
    p.add_argument("--data_path", default="/path/to/imagenet/train/", type=str,
                   help="Folder of training images: an ImageFolder tree or any folder, searched recursively.")
    p.add_argument("--output_dir", default=".", type=str, help="Where checkpoints and logs go; a run started "
                   "again with the same folder resumes from its checkpoint.pth (default .).")
    p.add_argument("--saveckp_freq", default=20, type=int,
                   help="Also keep checkpointNNNN.pth every this many epochs (default 20; 0: never).")
    p.add_argument("--seed", default=0, type=int, help="Random seed (default 0).")
    p.add_argument("--num_workers", default=10, type=int, help="Data-loading workers per process (default 10).")
    p.add_argument("--device", default="auto", type=str,
                   help="auto (cuda > mps > cpu, default), cpu, cuda or mps; under torchrun each process "
                        "takes cuda:LOCAL_RANK.")
    p.add_argument("--dist_url", default="env://", type=str,
                   help="Rendezvous for torch.distributed (default env://, as torchrun sets up).")
    p.add_argument("--local_rank", "--local-rank", default=0, type=int,
                   help="Set by torch.distributed.launch; LOCAL_RANK from the environment wins when set.")
    add_knn_flags(p)
    return p


def add_knn_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--knn_data_path", default=None, type=str,
                        help="ImageFolder root with train/ and val/: report the teacher's k-NN accuracy "
                             "(eval_knn.py's protocol at the global crop size) every --knn_freq epochs.")
    parser.add_argument("--knn_freq", default=1, type=int, help="Epochs between k-NN evaluations (default 1; the "
                        "last epoch is always evaluated).")
    parser.add_argument("--knn_k", default=20, type=int, help="Neighbours of the k-NN vote (default 20).")
    parser.add_argument("--knn_temperature", default=0.07, type=float, help="k-NN temperature (default 0.07).")

"""Linear probe on frozen features, the protocol and flags of the reference eval_linear.py.

    python -m eval.linear --pretrained_weights dino_vits16 --data_path /path/to/imagenet --output_dir out
    torchrun --nproc_per_node 8 -m eval.linear --pretrained_weights dino_vitb16 --data_path /path/to/imagenet
    python -m eval.linear --evaluate --output_dir out --data_path /path/to/imagenet

DATA_PATH is an ImageFolder root with train/<class>/ and val/<class>/. OUTPUT_DIR gets log.txt (one
JSON line per epoch: train_loss, train_lr, test_loss, test_acc1, test_acc5, epoch) and
checkpoint.pth.tar (written atomically after each epoch; a run started again with the same folder
resumes from it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dino_seg.flags import bool_flag
from eval.common import add_image_folder_flags, add_launch_flags, add_weight_flags, run_launched

CHECKPOINT = "checkpoint.pth.tar"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m eval.linear", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n_last_blocks", default=None, type=int, help="Concatenate the [CLS] tokens of the last n "
                   "blocks (default: 4 for ViT-S/ViT-tiny, 1 for ViT-B, as the paper's evaluations).")
    p.add_argument("--avgpool_patchtokens", default=None, type=bool_flag, help="Add the average-pooled patch "
                   "tokens of the last block (default: true for ViT-B, false otherwise, as the paper).")
    add_weight_flags(p, reference_patch_size=16)
    p.add_argument("--epochs", default=100, type=int, help="Training epochs.")
    p.add_argument("--lr", default=0.001, type=float, help="Learning rate for a total batch of 256, scaled "
                   "linearly with batch_size_per_gpu x processes; cosine schedule to 0.")
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="Images per process and step.")
    add_launch_flags(p)
    add_image_folder_flags(p)
    p.add_argument("--val_freq", default=1, type=int, help="Epoch frequency for validation.")
    p.add_argument("--output_dir", default=".", help="Where log.txt and checkpoint.pth.tar go.")
    p.add_argument("--num_labels", default=None, type=int,
                   help="Classifier outputs (default: the number of class folders in train/).")
    p.add_argument("--evaluate", action="store_true", help="Only evaluate a saved classifier: --linear_weights, "
                   "else OUTPUT_DIR/checkpoint.pth.tar.")
    p.add_argument("--linear_weights", default=None, help="With --evaluate: a classifier file (ours or an "
                   "official dino_*_linearweights.pth).")
    p.add_argument("--seed", default=0, type=int, help="Random seed of the data order and augmentation.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from eval.linear_run import run  # torch and the models load only now: --help and bad flags answer at once

    return run_launched(args, lambda info, say: run(args, info, say), interrupted=_interrupted_note(args))


def _interrupted_note(args: argparse.Namespace) -> str:
    if args.evaluate:
        return "nothing was written"
    return (f"{Path(args.output_dir) / CHECKPOINT} holds the last complete epoch, if any; start again with the same "
            "--output_dir to resume")


if __name__ == "__main__":
    raise SystemExit(main())

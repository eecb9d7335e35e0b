"""Weighted k-NN classification on frozen features, the protocol and flags of the reference eval_knn.py.

    python -m eval.knn --pretrained_weights dino_vits16 --data_path /path/to/imagenet --output_dir out
    torchrun --nproc_per_node 4 -m eval.knn --data_path /path/to/imagenet --dump_features feats
    python -m eval.knn --load_features feats --nb_knn 20

DATA_PATH is an ImageFolder root with train/<class>/ and val/<class>/. Prints the reference's lines
(`{k}-NN classifier result: Top1: ..., Top5: ...`) and a table; with --output_dir, knn.json holds
{"<k>": {"top1": %, "top5": %}, ...} plus the arguments, data set sizes, class count and timings.
"""

from __future__ import annotations

import argparse

from dino_seg.flags import bool_flag
from eval.common import add_image_folder_flags, add_launch_flags, add_weight_flags, run_launched


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m eval.knn", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="Images per process and batch.")
    p.add_argument("--nb_knn", default=[10, 20, 100, 200], nargs="+", type=int,
                   help="Numbers of nearest neighbours to use; 20 is usually the best.")
    p.add_argument("--temperature", default=0.07, type=float, help="Temperature of the neighbours' weights "
                   "exp(similarity / T).")
    add_weight_flags(p, reference_patch_size=16)
    p.add_argument("--use_cuda", default=True, type=bool_flag,
                   help="Keep the features and vote on the GPU when --device is CUDA (set false on GPU OOM: "
                        "the vote then runs on the CPU).")
    p.add_argument("--dump_features", default=None, help="Folder where to write trainfeat.pth, testfeat.pth, "
                   "trainlabels.pth and testlabels.pth (L2-normalised features, as the reference).")
    p.add_argument("--load_features", default=None, help="Folder of a feature dump to vote on instead of "
                   "extracting features (read with weights_only=True).")
    add_launch_flags(p)
    add_image_folder_flags(p)
    p.add_argument("--output_dir", default=None, help="Folder for knn.json (nothing is written without it).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from eval.knn_run import run  # torch and the models load only now: --help and bad flags answer at once

    return run_launched(args, lambda info, say: run(args, info.device, info.is_main, say),
                        interrupted="nothing was written (knn.json and feature dumps are written whole, at the end)")


if __name__ == "__main__":
    raise SystemExit(main())

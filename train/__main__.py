"""DINO pretraining: `python -m train --data_path IMAGES --output_dir RUN [reference main_dino.py flags]`.

The same command line runs everywhere; the launcher decides how many processes there are.

One process (CPU, one GPU or Apple MPS; a small run on a laptop CPU):

    python -m train --arch vit_tiny --patch_size 16 --out_dim 4096 --global_crops_size 96 \
        --local_crops_size 48 --batch_size_per_gpu 16 --epochs 20 --warmup_epochs 2 --num_workers 2 \
        --data_path /path/to/images --output_dir runs/tiny

One node with 8 GPUs (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK; NCCL on GPU, gloo on CPU):

    torchrun --nproc_per_node 8 -m train --arch vit_small --data_path /imagenet/train --output_dir runs/vits16

Two nodes with 8 GPUs each (run on both nodes; NODE0 is the first node's address):

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr NODE0 --master_port 29500 -m train ...
    torchrun --nnodes 2 --node_rank 1 --nproc_per_node 8 --master_addr NODE0 --master_port 29500 -m train ...

SLURM (one task per GPU; SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID are read, MASTER_ADDR defaults to
the job's first node and MASTER_PORT to 29500):

    srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 python -m train --data_path /imagenet/train ...

Starting the same command again with the same --output_dir resumes from OUTPUT_DIR/checkpoint.pth
exactly where the last finished epoch left off.
"""

from __future__ import annotations

from train.flags import get_args_parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from train.main import run  # torch and the models load only now: --help and bad flags answer at once

    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

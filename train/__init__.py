"""DINO self-supervised pretraining (`python -m train`): multi-crop, DINO head and loss, teacher EMA,
on one CPU or GPU, several GPUs (torchrun) or several nodes (torchrun or SLURM)."""

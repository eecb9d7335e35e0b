"""DINO self-supervised pretraining (`python -m train`) on one CPU or GPU, or many GPUs and nodes."""

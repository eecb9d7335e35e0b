"""dino_seg: DINO self-supervised ViTs (and DINOv2/v3 backbones) — weights, attention maps, masks and videos,
unsupervised object discovery (LOST, TokenCut, MaskCut), DAVIS propagation and J&F, k-NN and linear probes.

Library modules raise dino_seg.errors.UserError for bad input; the commands (train, eval.*, dino_seg.export)
run under dino_seg.cli.run_command, and the Gradio app lives in dino_seg.app (the only part that imports Gradio)."""

__version__ = "0.1.0"

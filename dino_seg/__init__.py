"""dino_seg: DINO self-supervised ViTs — backbones and weights, attention masks, DAVIS propagation and J&F."""

__version__ = "0.1.0"

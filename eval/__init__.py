"""Evaluation front-ends: `python -m eval.attention` and `python -m eval.davis`."""

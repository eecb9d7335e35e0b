"""Evaluation front-ends, one command each: `python -m eval.attention` (attention maps and masks),
`eval.video_attention` (attention videos), `eval.discover` (unsupervised object discovery and its benchmarks),
`eval.davis` (DAVIS label propagation and J&F), `eval.knn` (k-NN classification) and `eval.linear` (linear probe)."""

"""Gradio app: DINO's attention maps and masks, object discovery (threshold, LOST, TokenCut, MaskCut), DAVIS
label propagation and attention videos, evaluation results and training runs on one page.

    python app.py                                      # 127.0.0.1:7860, official dino_vits16 (or a banner)
    python app.py --pretrained_weights runs/tiny/checkpoint.pth --davis_root DAVIS --results_dir out \
        --train_dir runs/tiny

The tabs live in `dino_seg/app/` (one module per tab, each with module-level handlers and a
`build_tab(cfg, shared)`); this file parses the flags, composes the tabs and launches the page.
"""

from __future__ import annotations

import argparse
import shutil
import sys

import gradio as gr

from dino_seg.app import attention, compare, results, training, video
from dino_seg.app.config import BUNDLED_DAVIS, AppConfig
from dino_seg.app.errors import one_line
from dino_seg.app.model_cache import RANDOM_WEIGHTS, get_model
from dino_seg.app.paths import allowed_roots, private_upload_folder
from dino_seg.app.serve import interrupted, serve
from dino_seg.app.shared import Shared
from dino_seg.app.weights_bar import build_weights_bar
from dino_seg.device import pick_device
from dino_seg.models import ARCHS
from dino_seg.weights import PRESETS, WeightsError

TABS = (attention, compare, video, results, training)  # each module's build_tab adds one tab, in this order


def build_demo(cfg: AppConfig) -> gr.Blocks:
    """The page: the weights bar above the five tabs, each built by its module and bound to `cfg`."""
    with gr.Blocks(title="DINO: attention, video segmentation, results, training", analytics_enabled=False,
                   delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# DINO self-supervised ViTs\nSee what DINO learned: the self-attention of the last block and "
                    "the objects it discovers (threshold, LOST, TokenCut, MaskCut), video object segmentation by "
                    "label propagation and attention videos, DAVIS results and training runs.")
        weights, banner = build_weights_bar(cfg, demo)
        with gr.Tabs() as tabs:
            shared = Shared(demo=demo, weights=weights, banner=banner, tabs=tabs)
            for tab in TABS:
                tab.build_tab(cfg, shared)
    return demo


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python app.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pretrained_weights", default="dino_vits16",
                        help=f"Preset ({', '.join(PRESETS)}), path to a DINO file or `python -m train` checkpoint, "
                             "or 'random' (pipeline check only). Unavailable weights show a banner, not an error.")
    parser.add_argument("--arch", default=None, choices=ARCHS,
                        help="Architecture of random weights; checked against --pretrained_weights when given.")
    parser.add_argument("--patch_size", default=None, type=int, help="Patch size, as --arch.")
    parser.add_argument("--davis_root", default=str(BUNDLED_DAVIS),
                        help="DAVIS root for the Video and Results tabs; the default is the bundled 12-frame example.")
    parser.add_argument("--results_dir", default="", help="A `python -m eval.davis` output folder to open in the Results tab.")
    parser.add_argument("--train_dir", default="", help="A `python -m train` output folder to open in the Training tab.")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to serve on (0.0.0.0 for every interface). On an address other than loopback "
                             "(or with --share) the page opens only uploads and paths under the folders and files "
                             "given by --davis_root, --results_dir, --train_dir and --pretrained_weights.")
    parser.add_argument("--port", default=7860, type=int, help="Port to serve on.")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link (needs internet).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    weights = RANDOM_WEIGHTS if args.pretrained_weights == "random" else args.pretrained_weights
    shared = allowed_roots(args.host, args.share, [args.davis_root, args.results_dir, args.train_dir,
                                                   args.pretrained_weights])
    if shared is not None:
        print(f"public address: path inputs are limited to uploads and {', '.join(shared)}")
    cfg = AppConfig(weights=weights, arch=args.arch, patch_size=args.patch_size, davis_root=args.davis_root,
                    results_dir=args.results_dir, train_dir=args.train_dir, device=str(device), allowed_roots=shared,
                    upload_dir=private_upload_folder())
    try:
        try:  # load once at start-up so the first request is fast; a failure only shows in the banner
            print(f"weights: {get_model(weights, cfg)[1]} on {device}")
        except WeightsError as err:
            print(f"warning: {one_line(err)} (the page shows how to fix this)", file=sys.stderr)
        demo = build_demo(cfg)
    except KeyboardInterrupt:
        shutil.rmtree(cfg.upload_dir, ignore_errors=True)
        return interrupted()
    return serve(demo, args.host, args.port, args.share, cfg.upload_dir)


if __name__ == "__main__":
    raise SystemExit(main())

"""Flags and weight loading shared by the evaluation front-ends."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tqdm import tqdm

from dino_seg.cli import run_command
from dino_seg.errors import UserError
from dino_seg.images import ImageError, list_images
from dino_seg.names import ARCHS, DISCOVERY_METHODS, PRESET_NAMES

if TYPE_CHECKING:  # torch-heavy modules are imported where used: the flags (and --help) need none of them
    from torch import nn

    from dino_seg.distributed import DistInfo
    from dino_seg.sharding import GlobalCounter

RANDOM = "random"
# The bundled example image the image commands read when --image_path is not given.
DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "assets" / "images" / "blackswan.jpg"
T = TypeVar("T")


def add_weight_flags(parser: argparse.ArgumentParser, default_patch_size: int | None = None,
                     reference_patch_size: int = 16, preferred_preset: str | None = None) -> None:
    """The reference scripts' model flags.

    `reference_patch_size` is the patch size of the official weights used when no weights are given:
    the reference's visualize_attention.py defaults to 8, eval_video_segmentation.py to 16.
    `preferred_preset` is the release a script loads for its architecture when it differs from the first
    of PRESETS (video_generation.py loads the 300-epoch ViT-S/8).
    """
    parser.set_defaults(reference_patch_size=reference_patch_size, preferred_preset=preferred_preset)
    parser.add_argument("--pretrained_weights", default="", type=str,
                        help="Preset name (" + ", ".join(PRESET_NAMES) + "), path to an official DINO, DINOv2 or "
                             "DINOv3 file (recognised from its keys) or to a checkpoint of `python -m train`, or "
                             "'random' (pipeline check only: random weights of --arch/--patch_size, by default the "
                             "model of the official weights below). DINOv3 presets are never downloaded: they name "
                             "the licence-gated file in the torch hub cache. Default: the official weights of "
                             "--arch/--patch_size, as the reference scripts do.")
    parser.add_argument("--arch", default=None, choices=ARCHS,
                        help="Architecture; inferred from the weights when not given (vit_small otherwise).")
    parser.add_argument("--patch_size", default=default_patch_size, type=int,
                        help="Patch size; inferred from the weights when not given.")
    parser.add_argument("--checkpoint_key", default="teacher", type=str,
                        help="Network of a full training checkpoint to load: teacher or student.")


def default_model(args: argparse.Namespace) -> tuple[str, int]:
    """(arch, patch size) the flags name, the command's documented default filling what they leave open:
    --arch or vit_small, --patch_size or the patch size of the official weights the reference script loads."""
    return args.arch or "vit_small", args.patch_size or getattr(args, "reference_patch_size", 16)


def _model_label(arch: str, patch: int) -> str:
    return arch if arch == "resnet50" else f"{arch}/{patch}"


def resolve_weights(args: argparse.Namespace) -> tuple[str, str]:
    """(source, description) for the --pretrained_weights / --arch / --patch_size flags; an empty source
    means random weights of `default_model(args)`."""
    arch, patch = default_model(args)
    if args.pretrained_weights == RANDOM:
        return "", f"RANDOM weights {_model_label(arch, patch)} (pipeline check only, not DINO)"
    if args.pretrained_weights:
        return args.pretrained_weights, args.pretrained_weights
    # Like the reference: no weights given means the official ones for this architecture.
    preferred = getattr(args, "preferred_preset", None)
    from dino_seg.weights import PRESETS

    for name in sorted(PRESETS, key=lambda name: name != preferred):
        preset = PRESETS[name]
        if preset.arch == arch and preset.patch_size in (patch, None):
            return name, f"official preset {name}"
    return "", f"RANDOM weights {_model_label(arch, patch)}: there is no official DINO release for this model"


def load_from_args(args: argparse.Namespace, device) -> tuple[nn.Module, str]:
    """Build the backbone named by the flags; raises WeightsError for unusable weights. Random weights are
    those of the model the description names (`default_model`): ViT-S/8 for eval.attention, as documented."""
    from dino_seg.weights import load_model

    source, description = resolve_weights(args)
    arch, patch = (args.arch, args.patch_size) if source else default_model(args)
    model = load_model(source or None, arch=arch, patch_size=patch, checkpoint_key=args.checkpoint_key,
                       device=device)
    licence = getattr(model, "licence", None)  # DINOv3 weights: their licence is named wherever they are used
    return model, f"{description} ({model.name}; {licence})" if licence else description


def collect_images(image_path: str) -> tuple[list[Path], Path]:
    """The images of --image_path (a file, or a folder searched recursively) and the folder their
    output paths are taken relative to; UserError names the flag when there is nothing to read."""
    path = Path(image_path)
    if path.is_dir():
        images = list_images(path, recursive=True)
        if not images:
            raise UserError(f"--image_path {path}: no image files in this folder")
        return images, path
    if path.exists():
        return [path], path.parent
    raise UserError(f"--image_path {path}: no such file or folder")


def each_image(images: list[Path], work: Callable[[Path], T], desc: str, *, enabled: bool = True,
               counter: GlobalCounter | None = None, total: int | None = None) -> Iterator[tuple[Path, T]]:
    """(path, work(path)) for each image under a progress bar. A file that fails with ImageError (it
    cannot be decoded, or is too small to process) is skipped with a warning when the run has several,
    re-raised when it is the run's only one; any other error is not the file's fault and stops the run. `enabled`
    False hides the bar (ranks other than 0).

    Under torchrun, `images` are this rank's share of the run's `total` and `counter` (a GlobalCounter, created
    by every rank) counts the images all ranks are done with: rank 0's bar shows that global count, an image
    counting once the caller has handled it (or it was skipped), and rank 0 waits for the count to reach `total`
    before the last step returns (the gather that follows would wait for the other ranks anyway)."""
    total = len(images) if total is None else total
    with tqdm(total=total, desc=desc, unit="img", disable=total == 1 or not enabled) as bar:
        def tick() -> None:
            bar.update((counter.add() if counter is not None else bar.n + 1) - bar.n)

        for path in images:
            try:
                value = work(path)
            except ImageError as err:
                if total == 1:
                    raise
                named = str(err).startswith(str(path))  # load_image's errors name the file already
                tqdm.write(f"warning: skipped {'' if named else f'{path}: '}{err}")
                tick()
                continue
            yield path, value
            tick()
        while enabled and counter is not None and counter.value() < total:  # the other ranks' images
            bar.update(counter.value() - bar.n)
            time.sleep(0.2)
        if counter is not None:
            bar.update(counter.value() - bar.n)


def _head(value: str) -> int | None:
    return None if value == "mean" else int(value)


def add_discovery_flags(parser: argparse.ArgumentParser) -> None:
    """The discovery flags, named as in LOST's and TokenCut's scripts (also used by eval.davis)."""
    parser.add_argument("--method", default="tokencut", choices=DISCOVERY_METHODS, help="Discovery method.")
    parser.add_argument("--resize", default=None, type=int, nargs="+",
                        help="Resize to H W, or the short side to one value; default: no resize, as the references.")
    parser.add_argument("--tau", default=None, type=float,
                        help="Cosine threshold of the graph (TokenCut 0.2, MaskCut 0.15 when not given).")
    parser.add_argument("--eps", default=1e-5, type=float, help="Affinity of the pairs under tau.")
    parser.add_argument("--k_patches", default=100, type=int, help="LOST: lowest-degree patches that may expand the seed.")
    parser.add_argument("--n_objects", default="3", type=str,
                        help="MaskCut: most objects per image, or 'auto': keep only objects (score 1 - Ncut >= 0.5; "
                             "dino_seg/objectness.py): MaskCut cuts until a cut is no object, the other methods "
                             "give no object rather than a forced one.")
    parser.add_argument("--which_features", default="k", choices=("k", "q", "v"),
                        help="Last-block features the graph is built on.")
    parser.add_argument("--dinoseg_head", default="0", type=str,
                        help="--method attention: the head whose 60%% mask is used (LOST: 0, TokenCut: 4), or 'mean'.")


def discovery_kwargs(args: argparse.Namespace) -> dict:
    """Library keywords from the discovery flags; UserError names the bad flag."""
    try:
        head = _head(args.dinoseg_head)
    except ValueError:
        raise UserError(f"--dinoseg_head: expected a head index or 'mean', got {args.dinoseg_head!r}") from None
    n_objects = args.n_objects
    if n_objects != "auto":
        try:
            n_objects = int(n_objects)
        except ValueError:
            raise UserError(f"--n_objects: expected a number or 'auto', got {args.n_objects!r}") from None
    if args.tau is not None and not 0 < args.tau < 1:
        raise UserError(f"--tau: expected a cosine threshold in (0, 1), got {args.tau}")
    return dict(tau=args.tau, eps=args.eps, k_patches=args.k_patches, n_objects=n_objects,
                which_features=args.which_features, dinoseg_head=head)


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    """--image_path (an image or a folder, the bundled example by default) and --output_dir of the image commands."""
    parser.add_argument("--image_path", default=str(DEFAULT_IMAGE), type=str, help="An image file or a folder of images.")
    parser.add_argument("--output_dir", default=".", help="Where to write the results.")


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """--dist_url, --local_rank and --device of the torchrun-ready evaluations, as `python -m train`."""
    parser.add_argument("--dist_url", default="env://", type=str,
                        help="Rendezvous for torch.distributed (env://, as torchrun sets up).")
    parser.add_argument("--local_rank", "--local-rank", default=0, type=int,
                        help="Set by torch.distributed.launch; LOCAL_RANK from the environment wins when set.")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps; under "
                        "torchrun each process takes cuda:LOCAL_RANK.")


def add_image_folder_flags(parser: argparse.ArgumentParser) -> None:
    """--data_path (an ImageFolder root), --num_workers and the validation transform's sizes."""
    parser.add_argument("--data_path", default="/path/to/imagenet/", type=str,
                        help="ImageFolder root with train/<class>/ and val/<class>/.")
    parser.add_argument("--num_workers", default=10, type=int, help="Data-loading workers per process.")
    parser.add_argument("--resize_size", default=256, type=int,
                        help="Validation: short side after the bicubic resize (the reference's 256).")
    parser.add_argument("--crop_size", default=224, type=int, help="Side of the crops (the reference's 224).")


def run_launched(args: argparse.Namespace, run: Callable[[DistInfo, Callable[[str], None]], int], *,
                 interrupted: str) -> int:
    """Under the command runner (dino_seg.cli.run_command: one-line errors, Ctrl-C exits 130 with
    `interrupted`), join the process group when launched by torchrun or SLURM and call `run(info, say)`
    (`say` prints on rank 0 only)."""
    from dino_seg.distributed import cleanup_distributed, init_distributed

    def launched() -> int:
        info = init_distributed(args.device, args.dist_url, local_rank=args.local_rank)

        def say(message: str) -> None:
            if info.is_main:
                print(message, flush=True)

        try:
            return run(info, say)
        finally:
            cleanup_distributed()

    return run_command(launched, interrupted=interrupted)


def progress(iterable: Iterable, desc: str, *, enabled: bool, unit: str = "batch", leave: bool = True) -> tqdm:
    """A progress bar on stderr with rate and ETA (hidden on ranks other than 0)."""
    return tqdm(iterable, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=leave)


def output_folders(images: list[Path], root: Path | None) -> dict[Path, Path]:
    """Each image's output folder, relative to OUTPUT_DIR: its path under `root` without the suffix
    (`a/frame.jpg` -> `a/frame`), or its stem for a single file. Two images that would share a folder
    (`frame.jpg` and `frame.png` side by side) both get their suffix appended instead (`frame_jpg`,
    `frame_png`), so no input ever overwrites another's outputs."""
    def base(path: Path) -> Path:
        rel = path.relative_to(root) if root is not None else Path(path.name)
        return rel.parent / rel.stem

    counts: dict[Path, int] = {}
    for path in images:
        counts[base(path)] = counts.get(base(path), 0) + 1
    folders: dict[Path, Path] = {}
    taken: set[Path] = set()
    for path in images:
        folder = base(path)
        if counts[folder] > 1:
            folder = folder.parent / f"{folder.name}_{path.suffix.lstrip('.')}"
        candidate, n = folder, 1
        while candidate in taken or (candidate != base(path) and candidate in counts):
            n += 1  # only when names collide even with their suffixes (`x.JPG` and `x.jpg`)
            candidate = folder.parent / f"{folder.name}_{n}"
        taken.add(candidate)
        folders[path] = candidate
    return folders

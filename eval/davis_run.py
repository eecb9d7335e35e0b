"""The work of `python -m eval.davis` (eval/davis.py holds its flags): propagation over the sequences, resume,
scoring and summary. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dino_seg.davis import DavisError, VOID_LABEL, annotation_dir, frame_paths, image_size, \
    list_sequences, read_annotation, write_indexed_png
from dino_seg.distributed import DistInfo
from dino_seg.files import remove_stale_temp, save_text
from dino_seg.images import ImageError, load_image
from dino_seg.metrics import DavisScores, csv_paths, format_table, score_sequence, summarise, write_csvs
from dino_seg.models import is_vit
from dino_seg.propagation import segment_sequence
from dino_seg.provenance import (differences, rank_sequences, read_provenance, remove_rank_provenance,
                                 weights_identity, write_provenance, write_rank_provenance)
from dino_seg.precision import check_precision
from dino_seg.sharding import GlobalCounter, gather_to_main, shard_indices
from dino_seg.weights import PRESETS
from eval.common import discovery_kwargs, load_from_args, resolve_weights


def _sequences(args: argparse.Namespace) -> list[str]:
    if args.sequences:
        names = [s.strip() for s in args.sequences.split(",") if s.strip()]
        if not names:
            raise DavisError("--sequences: no sequence names given")
        list_sequences(args.data_path, args.set, args.resolution)  # checks the root
        return names
    return list_sequences(args.data_path, args.set, args.resolution)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # Unix only
    except ImportError:
        return float("nan")
    # ru_maxrss is in KiB on Linux (bytes on macOS): the whole process's resident peak.
    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20


def _set_summary_scores(results_dir: Path, scores: dict | None, error: str | None = None) -> None:
    """Put `scores` into the folder's summary.json (its timings and settings still hold), or, when scoring
    failed, None with `error` as the reason; an unreadable summary cannot be trusted after a failure and goes."""
    summary_path = results_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (OSError, ValueError):
        if error is not None:
            summary_path.unlink(missing_ok=True)
        return
    if not isinstance(summary, dict):
        return
    summary["scores"] = scores
    if error is None:
        summary.pop("scores_error", None)
    else:
        summary["scores_error"] = error
    save_text(summary_path, json.dumps(summary, indent=2, default=str) + "\n")


def _drop_stale_scores(results_dir: Path, subset: str, reason: str) -> None:
    """The folder's CSVs and summary.json scores no longer describe its masks: remove the CSVs, and
    replace summary.json's scores by the reason."""
    for path in csv_paths(results_dir, subset):
        path.unlink(missing_ok=True)
    _set_summary_scores(results_dir, None, reason)


def _scorable(args: argparse.Namespace, names: list[str]) -> tuple[list[str], str]:
    """The sequences with ground truth to score: davis2017-evaluation scores frames 1 to N-2, so a sequence needs
    at least 3 annotated frames; with fewer (DAVIS test-dev gives only the first) the others are named."""
    scorable, unscored = [], []
    for name in names:
        folder = annotation_dir(args.data_path, name, args.resolution)
        (scorable if len(list(folder.glob("*.png"))) >= 3 else unscored).append(name)
    note = ""
    if unscored:
        shown = ", ".join(unscored[:5]) + (f" and {len(unscored) - 5} more" if len(unscored) > 5 else "")
        note = (f"{'nothing to score' if not scorable else 'not scored'}: {shown} "
                f"{'has' if len(unscored) == 1 else 'have'} ground truth for fewer than 3 frames (only the first, "
                "as in DAVIS test-dev?); J&F needs the annotations of the frames in between")
    return scorable, note


def _score(results_dir: Path, args: argparse.Namespace, names: list[str]) -> DavisScores:
    try:
        per_seq = [score_sequence(results_dir, args.data_path, name, args.resolution)
                   for name in tqdm(names, desc="scoring", unit="seq", file=sys.stderr)]
    except (DavisError, ImageError) as err:
        # A failed (re)scoring must not leave the previous numbers beside masks they may not describe.
        _drop_stale_scores(results_dir, args.set, str(err))
        raise DavisError(f"{err} (no scores written; earlier score files of {results_dir} removed)") from None
    scores = summarise(per_seq)
    if scores.missing:
        shown = ", ".join(str(p) for p in scores.missing[:3])
        more = f" and {len(scores.missing) - 3} more" if len(scores.missing) > 3 else ""
        print(f"warning: {len(scores.missing)} result frame(s) missing, scored as empty masks: {shown}{more}",
              file=sys.stderr)
    global_csv, seq_csv = write_csvs(scores, results_dir, args.set)
    print(f"--------------------------- Global results for {args.set} ---------------------------")
    print(format_table(scores))
    print(f"\nwrote {global_csv} and {seq_csv}")
    return scores


def _previous_timings(path: Path) -> dict[str, dict]:
    """Per-sequence timings of an earlier summary.json in the same folder (empty if none or unreadable)."""
    try:
        timings = json.loads(path.read_text()).get("per_sequence", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in timings.items()
            if isinstance(v, dict) and isinstance(v.get("frames"), int) and isinstance(v.get("seconds"), (int, float))}


def _complete(out_dir: Path, frames: list[Path]) -> bool:
    return all((out_dir / f"{f.stem}.png").is_file() for f in frames)


def run_settings(args: argparse.Namespace, model: torch.nn.Module) -> dict:
    """What decides the masks: recorded in OUTPUT_DIR/provenance.json and compared when a run resumes."""
    source, _ = resolve_weights(args)
    settings = {
        "weights": weights_identity(source, PRESETS),
        "checkpoint_key": args.checkpoint_key if source and source not in PRESETS else None,
        "arch": model.arch,
        "patch_size": model.patch_size,
        "short_side": args.short_side,
        **({"protocol": args.protocol} if args.protocol != "dino" else {}),  # folders of earlier runs stay valid
        **({"precision": args.precision} if getattr(args, "precision", "fp32") != "fp32" else {}),  # likewise
        "n_last_frames": args.n_last_frames,
        "topk": args.topk,
        "size_mask_neighborhood": args.size_mask_neighborhood,
        "resolution": args.resolution,
        "first_frame": getattr(args, "first_frame", "annotation"),
    }
    if settings["first_frame"] == "discover":  # the discovery flags decide the first frame, hence every mask
        settings["method"] = args.method
        settings["discovery"] = {**discovery_kwargs(args), "resize": args.resize}
    return settings


def _check_provenance(output_dir: Path, settings: dict, plan: list, overwrite: bool) -> list[str]:
    """Sequences already complete under `settings` in `output_dir`; raises DavisError if the folder holds
    results of other settings (or of unknown ones) and --overwrite was not given."""
    redo = "pass --overwrite to redo them with the current settings, or choose another --output_dir"
    record = read_provenance(output_dir)
    if record is None:
        previous = [name for name, frames, _ in plan if _complete(output_dir / name, frames)]
        if previous and not overwrite:
            raise DavisError(f"--output_dir {output_dir} holds results ({', '.join(previous[:3])}"
                             f"{', ...' if len(previous) > 3 else ''}) without a record of the settings that "
                             f"produced them: {redo}")
        return []
    diff = differences(record["settings"], settings)
    if diff and not overwrite:
        raise DavisError(f"--output_dir {output_dir} holds results of other settings ({'; '.join(diff)}): {redo}")
    sequences = record.get("sequences")
    return [] if diff or not isinstance(sequences, list) else [str(n) for n in sequences]


def score_results(args: argparse.Namespace) -> int:
    """--results_path: score an existing results folder (rank 0 only), without propagating anything."""
    results = Path(args.results_path)
    if not results.is_dir():
        raise DavisError(f"--results_path: results folder not found: {results}")
    names, note = _scorable(args, _sequences(args))
    if not names:
        _drop_stale_scores(results, args.set, "no ground truth to score against")
        raise DavisError(note)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    scores = _score(results, args, names)
    # A summary of the run that made these masks gets the new scores, not the old ones.
    _set_summary_scores(results, scores.global_scores)
    return 0


def check_inputs(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, list[Path], Path]], dict]:
    """(sequence names, [(name, frames, first-frame annotation)], discovery keywords) after checking the flags
    and every sequence's files, before any weights are loaded or the long run starts (DavisError names what is
    wrong)."""
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise DavisError(f"--output_dir {args.output_dir}: is a file, expected a folder")
    if args.short_side is None:
        args.short_side = 960 if args.protocol == "dinov3" else 480
    for flag in ("n_last_frames", "topk", "bs", "short_side"):
        minimum = {"n_last_frames": 0, "short_side": 64}.get(flag, 1)
        if getattr(args, flag) < minimum:
            raise DavisError(f"--{flag}: expected at least {minimum}, got {getattr(args, flag)}")
    discovery = discovery_kwargs(args)
    names = _sequences(args)
    plan = []
    for name in names:
        frames = frame_paths(args.data_path, name, args.resolution)
        first_gt = annotation_dir(args.data_path, name, args.resolution) / f"{frames[0].stem}.png"
        if not first_gt.is_file():
            raise DavisError(f"missing first-frame annotation {first_gt}")
        if image_size(first_gt) != image_size(frames[0]):
            (gh, gw), (fh, fw) = image_size(first_gt), image_size(frames[0])
            raise DavisError(f"annotation {first_gt} is {gw}x{gh} but frame {frames[0]} is {fw}x{fh}")
        plan.append((name, frames, first_gt))
    return names, plan, discovery


def run(args: argparse.Namespace, info: DistInfo | None = None) -> int:
    """Propagate and score; under torchrun or SLURM (`info`), every rank propagates its share of the
    sequences and rank 0 alone scores and writes the summary."""
    info = info or DistInfo(0, 1, 0, torch.device("cpu"), None, "none")
    if args.results_path:
        return score_results(args) if info.is_main else 0
    names, plan, discovery = check_inputs(args)

    device = info.device
    check_precision(args.precision, device)
    if args.precision != "fp32" and args.protocol != "dino":
        raise DavisError(f"--precision {args.precision}: only with --protocol dino for now (use fp32)")
    model, description = load_from_args(args, device)
    if not is_vit(model):
        raise DavisError("--arch: label propagation needs a ViT (patch features); ResNet-50 has none")
    if description.startswith("RANDOM") and info.is_main:
        print(f"WARNING: {description}: the masks are meaningless", file=sys.stderr)
    if info.is_main:
        print(f"model: {description} on {device}" + (f" (x{info.world_size} processes, {info.backend})"
                                                    if info.distributed else ""), file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = run_settings(args, model)
    recorded = _check_provenance(output_dir, settings, plan, args.overwrite)
    if not args.overwrite:  # sequences finished by the ranks of an interrupted multi-process run
        recorded += [name for name in rank_sequences(output_dir, settings) if name not in recorded]
    # What to run is decided by every rank from the same files, before any rank writes.
    skipped = [name for name, frames, _ in plan
               if not args.overwrite and name in recorded and _complete(output_dir / name, frames)]
    todo = [item for item in plan if item[0] not in skipped]
    mine = [todo[i] for i in shard_indices(len(todo), info.rank, info.world_size)]
    if info.is_main:
        # Temporary files of a run killed mid-write (kill -9) are never completed: remove them.
        stale = remove_stale_temp(output_dir, recursive=False)
        for name, _, _ in plan:
            stale += remove_stale_temp(output_dir / name)
        if stale:
            print(f"removed {len(stale)} stale temporary file(s) of an interrupted run", file=sys.stderr)
        write_provenance(output_dir, settings, recorded)
    if info.distributed:
        torch.distributed.barrier()
    part = propagate_sequences(model, mine, sum(len(frames) - 1 for _, frames, _ in todo), discovery, settings,
                               recorded, args, info)
    parts = gather_to_main(part, info.rank, info.world_size)
    if parts is None:
        return 0  # ranks other than 0: rank 0 records, scores and summarises
    done = [name for name, _, _ in todo if any(name in part["done"] for part in parts)]
    recorded += [name for name in done if name not in recorded]
    write_provenance(output_dir, settings, recorded)
    remove_rank_provenance(output_dir)
    if skipped:
        print(f"skipped {len(skipped)} complete sequence(s) (--overwrite true to redo): {', '.join(skipped)}",
              file=sys.stderr)
    run_facts = {"args": vars(args), "settings": settings, "weights": description, "device": str(device),
                 "world_size": info.world_size, **_timings(parts, done, skipped, names, output_dir, device)}
    return score_and_summarise(args, output_dir, names, run_facts)


def first_frame_labels(model: torch.nn.Module, frames: list[Path], first_gt: Path, args: argparse.Namespace,
                       discovery: dict) -> np.ndarray:
    """The first frame's labels: its annotation, or the objects discovered in it and paired with it."""
    annotation = read_annotation(first_gt)
    if args.first_frame == "discover":
        from dino_seg.pairing import discovered_labels  # discovery and scipy load only when asked for

        annotation = discovered_labels(model, load_image(frames[0]), annotation, args.method,
                                       tuple(args.resize) if args.resize else None, **discovery)
    return annotation


def propagate(model: torch.nn.Module, frames: list[Path], annotation: np.ndarray, args: argparse.Namespace,
              device: torch.device):
    """(frame index, mask) of every later frame, by the chosen protocol."""
    if args.protocol == "dinov3":
        from dino_seg.propagation_v3 import TrackingConfig, segment_sequence_v3  # loaded for this protocol only

        radius = args.size_mask_neighborhood or float("inf")  # 0: every patch, as for --protocol dino
        return segment_sequence_v3(model, frames, annotation, TrackingConfig(
            short_side=args.short_side, context=args.n_last_frames, radius=radius, topk=args.topk))
    return segment_sequence(model, frames, annotation, n_last_frames=args.n_last_frames, topk=args.topk,
                            radius=args.size_mask_neighborhood, bs=args.bs, device=device,
                            short_side=args.short_side, precision=args.precision)


def propagate_sequences(model: torch.nn.Module, mine: list, total: int, discovery: dict, settings: dict,
                        recorded: list[str], args: argparse.Namespace, info: DistInfo) -> dict:
    """This rank's sequences: masks written frame by frame, each finished sequence recorded at once (rank 0 in
    provenance.json, other ranks in their own file) so that an interrupted run resumes; timings returned."""
    output_dir = Path(args.output_dir)
    done, mine_recorded, n_frames, seconds, per_sequence = [], [], 0, 0.0, {}
    counter = GlobalCounter("davis_frames")  # frames written by all ranks: rank 0's progress bar
    with tqdm(total=total, desc="frames", unit="frame", file=sys.stderr,
              disable=not info.is_main or total == 0) as bar:
        for name, frames, first_gt in mine:
            seq_dir = output_dir / name
            bar.set_postfix_str(name, refresh=False)
            annotation = first_frame_labels(model, frames, first_gt, args, discovery)
            start = time.perf_counter()
            masks = propagate(model, frames, annotation, args, info.device)
            write_indexed_png(seq_dir / f"{frames[0].stem}.png", np.where(annotation == VOID_LABEL, 0, annotation))
            for idx, mask in masks:
                write_indexed_png(seq_dir / f"{frames[idx].stem}.png", mask)
                bar.update(counter.add() - bar.n)
            elapsed = time.perf_counter() - start
            per_sequence[name] = {"frames": len(frames) - 1, "seconds": round(elapsed, 3),
                                  "fps": round((len(frames) - 1) / elapsed, 3) if elapsed > 0 else None,
                                  "rank": info.rank}
            seconds += elapsed
            n_frames += len(frames) - 1
            done.append(name)
            if info.is_main:
                if name not in recorded:
                    recorded.append(name)
                    write_provenance(output_dir, settings, recorded)
            else:
                mine_recorded.append(name)
                write_rank_provenance(output_dir, settings, mine_recorded, info.rank)
        while info.is_main and info.distributed and counter.value() < total:  # the other ranks' frames
            bar.update(counter.value() - bar.n)
            time.sleep(0.2)
        bar.update(counter.value() - bar.n)
    return {"done": done, "per_sequence": per_sequence, "frames": n_frames, "seconds": seconds,
            "peak_memory_mb": _peak_memory_mb(info.device)}


def _timings(parts: list[dict], done: list[str], skipped: list[str], names: list[str], output_dir: Path,
             device: torch.device) -> dict:
    """The summary's timing facts over every rank; sequences skipped now keep the timings of the run that
    made them, so the summary covers them all."""
    per_sequence = {k: v for part in parts for k, v in part["per_sequence"].items()}
    n_frames, seconds = sum(part["frames"] for part in parts), sum(part["seconds"] for part in parts)
    peak_mb = max(part["peak_memory_mb"] for part in parts)
    previous = _previous_timings(output_dir / "summary.json")
    for name in skipped:
        if name in previous:
            per_sequence[name] = previous[name]
    timed = [per_sequence[name] for name in names if name in per_sequence]
    all_frames = sum(t["frames"] for t in timed)
    all_seconds = sum(t["seconds"] for t in timed)
    return {
        "sequences_run": done,
        "sequences_skipped": skipped,
        "frames_propagated": n_frames,
        "seconds": round(seconds, 3),
        "fps": round(n_frames / seconds, 3) if seconds > 0 else None,
        "fps_all_sequences": round(all_frames / all_seconds, 3) if all_seconds > 0 else None,
        "per_sequence": {name: per_sequence[name] for name in names if name in per_sequence},
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
    }


def score_and_summarise(args: argparse.Namespace, output_dir: Path, names: list[str], run_facts: dict) -> int:
    """Rank 0's end of a run: J&F of the sequences that have ground truth (stale score files removed when none
    has), then summary.json with `run_facts` and the scores."""
    scorable, note = _scorable(args, names)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    scores = _score(output_dir, args, scorable) if scorable else None
    if scores is None:
        _drop_stale_scores(output_dir, args.set, "no ground truth to score against")
        print(f"wrote the masks of {len(names)} sequence(s) to {output_dir}; no J&F: nothing to score")
    summary = {**run_facts, "scores": scores.global_scores if scores is not None else None}
    if scores is None:
        summary["scores_error"] = "no ground truth to score against"
    elif len(scorable) < len(names):
        summary["sequences_not_scored"] = [name for name in names if name not in scorable]
    save_text(output_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return 0

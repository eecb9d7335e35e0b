"""Attention videos of several inputs in one run (eval.video_attention): the inputs and their output folders, the
record that marks an input complete (resume), and the split of the work over the processes of a group: whole
inputs by rank when there are at least as many inputs as processes, else each input's frame batches."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .distributed import all_gather_objects
from .errors import UserError
from .files import remove_stale_temp, save_text
from .sharding import GlobalCounter, RankFailed, check_all_ranks, gather_to_main, is_agreed, shard
from .video import DEFAULT_FPS, video_info
from .video_attention import (AttentionFrame, BatchSource, folder_batches, jpeg_frames, sharded_attention_batches,
                              video_batches, write_attention_video)

RECORD = "summary.json"  # an input's record, written last: its outputs are complete when it matches the run
SPLITS = ("inputs", "batches")


@dataclass
class VideoInput:
    """One --input_path: a video file, or a folder of JPEG frames."""

    path: Path
    frames: list[Path] | None  # a folder's JPEG frames in name order; None for a video file
    count: int  # frames: a folder's, or what a video's header says (0 when it says nothing)
    rate: float | None = None  # a video's frame rate (DEFAULT_FPS when its header gives none plausible)

    @property
    def is_video(self) -> bool:
        return self.frames is None

    @property
    def stem(self) -> str:
        """The name of its output folder among several inputs (`.` and `..` resolved to the folder's name)."""
        return Path(os.path.abspath(self.path)).stem

    def describe(self) -> str:
        return f"video {self.path} ({self.rate:g} fps)" if self.is_video else f"{self.count} frames of {self.path}"

    def source(self) -> dict:
        """What identifies the input's content cheaply (no decoding): a file's size and modification time, a
        folder's frame names, sizes and modification times. A changed input is not resumed."""
        path = str(Path(os.path.abspath(self.path)))
        if self.is_video:
            stat = self.path.stat()
            return {"path": path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        digest = hashlib.sha256()
        for frame in self.frames:
            stat = frame.stat()
            digest.update(f"{frame.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"path": path, "frames": len(self.frames), "sha256": digest.hexdigest()}

    def frame_names(self, count: int) -> list[str]:
        """The names of the first `count` frames' outputs (attn-<name>.jpg, frames/<name>.jpg)."""
        return [f"frame-{i:04d}" for i in range(count)] if self.is_video else [p.stem for p in self.frames[:count]]

    def batches(self, batch_size: int, frames_dir: Path | None = None) -> Iterator[BatchSource]:
        """Its frames in batches: a video decoded whole (frames written to `frames_dir` when given), a folder's
        batches cut from the files' headers and decoded only by the process that computes them."""
        if self.is_video:
            return video_batches(self.path, batch_size, frames_dir)
        return folder_batches(self.frames, batch_size)


def open_input(path: str | Path) -> VideoInput:
    """An --input_path checked before any weights load: VideoError for a folder without JPEG frames or an
    unreadable video, UserError for a path that does not exist."""
    path = Path(path)
    if path.is_dir():
        frames = jpeg_frames(path)
        return VideoInput(path, frames, len(frames))
    if path.is_file():
        rate, count = video_info(path)
        return VideoInput(path, None, count, rate)
    raise UserError(f"--input_path {path}: no such file or folder")


def output_folders(inputs: Sequence[VideoInput], output_path: Path) -> list[Path]:
    """Each input's output folder: OUTPUT_PATH itself for one input (the reference's layout), else
    OUTPUT_PATH/<input stem>. UserError names two inputs whose outputs would share a folder (compared without
    case: a case-insensitive disk would merge them)."""
    if len(inputs) == 1:
        return [output_path]
    seen: dict[str, VideoInput] = {}
    for inp in inputs:
        other = seen.setdefault(inp.stem.casefold(), inp)
        if other is not inp:
            raise UserError(f"--input_path: {other.path} and {inp.path} would both write to "
                            f"{output_path / inp.stem}; rename one, or run them with different --output_path")
    return [output_path / inp.stem for inp in inputs]


def read_record(folder: Path) -> dict | None:
    """An input's record in its output folder; None when there is none or it cannot be read."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(inp: VideoInput, folder: Path, settings: dict) -> bool:
    """Whether `folder` holds inp's complete outputs made with `settings`: its record (written after every other
    output) names these settings and this input's content, and the videos and every frame's images it lists are
    there."""
    record = read_record(folder)
    if record is None or record.get("settings") != _plain(settings) or record.get("source") != inp.source():
        return False
    count = record.get("frames")
    if not isinstance(count, int) or count < 1 or (not inp.is_video and count != inp.count):
        return False
    videos = [record.get("video")] + ([record.get("masks_video")] if settings.get("masks") else [])
    if not all(isinstance(v, str) and (folder / v).is_file() for v in videos):
        return False
    names = inp.frame_names(count)
    if not all((folder / "attention" / f"attn-{name}.jpg").is_file() for name in names):
        return False
    return not inp.is_video or all((folder / "frames" / f"{name}.jpg").is_file() for name in names)


def _plain(value: dict) -> dict:
    # As JSON gives it back (tuples become lists), so a record compares equal to the settings it was made with.
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class RunOptions:
    """What every input of a run is computed and written with."""

    batch_size: int
    resize: list[int] | None
    threshold: float
    masks: str | None
    fps: float | None  # --fps; None: each input's own rate
    codecs: tuple[tuple[str, str], ...] | None
    weights: str  # how the weights are described (summary.json)
    settings: dict  # what decides the outputs besides the frame rate: recorded, and compared on resume

    def fps_of(self, inp: VideoInput) -> float:
        """The rate of inp's videos: --fps, else the input video's (as the reference), else DEFAULT_FPS."""
        return self.fps or inp.rate or DEFAULT_FPS

    def settings_of(self, inp: VideoInput) -> dict:
        return {**self.settings, "fps": self.fps_of(inp)}


def inputs_to_do(inputs: Sequence[VideoInput], folders: Sequence[Path], options: RunOptions, overwrite: bool,
                 rank: int = 0) -> list[int]:
    """The indices of the inputs to compute: all with `overwrite`, else those without complete outputs of these
    settings. Decided by rank 0 from the files before any rank writes, and taken by every rank (a collective), so
    all agree even where their views of a shared disk differ. Rank 0 also removes the temporary files of an
    interrupted run from those inputs' folders."""
    todo = None
    if rank == 0:
        todo = [i for i, (inp, folder) in enumerate(zip(inputs, folders))
                if overwrite or not is_complete(inp, folder, options.settings_of(inp))]
        for i in todo:  # not recursive: with one input the folder is OUTPUT_PATH, which may be any folder
            for folder in (folders[i], folders[i] / "attention", folders[i] / "frames"):
                remove_stale_temp(folder, recursive=False)
    return all_gather_objects(todo)[0]


def choose_split(n_inputs: int, world_size: int) -> str:
    """"inputs" (whole inputs dealt by rank, no exchange between processes) when every process gets at least one,
    else "batches" (each input's frame batches dealt by rank, rank 0 writing)."""
    return "inputs" if n_inputs >= world_size else "batches"


def produce(model: nn.Module, inp: VideoInput, folder: Path, options: RunOptions, *, rank: int = 0,
            world_size: int = 1, run_world_size: int = 1, batch_rank: int | None = None,
            on_frame: Callable[[], None] | None = None) -> dict | None:
    """Compute inp's attention and, on rank 0 of the (rank, world_size) split of its batches, write its outputs
    into `folder` and its record last; return the record there, None on the other ranks (a collective when
    world_size > 1). `batch_rank`: the process that has the whole input to itself, recorded as the input's and
    every batch's rank (None when its batches are split); `run_world_size`: the run's number of processes."""
    writer = rank == 0
    if writer:  # incomplete from now on, until its record is written again
        (folder / RECORD).unlink(missing_ok=True)
    frames_dir = folder / "frames" if writer and inp.is_video else None
    results = sharded_attention_batches(model, inp.batches(options.batch_size, frames_dir), options.resize, rank,
                                        world_size)
    if not writer:
        for _ in results:  # joins rank 0's gathers; yields nothing here
            pass
        return None
    batches: list[dict] = []  # per batch: the rank that computed it, its first and last frames

    def ordered() -> Iterator[AttentionFrame]:
        for result, index, computed_by in results:
            if len(batches) == index:
                batches.append({"rank": computed_by if batch_rank is None else batch_rank, "first": result.name,
                                "last": result.name, "frames": 0})
            batches[index].update(last=result.name, frames=batches[index]["frames"] + 1)
            yield result

    def frame_written(_: AttentionFrame) -> None:
        if on_frame is not None:
            on_frame()

    fps = options.fps_of(inp)
    video = write_attention_video(ordered(), folder / "video", fps, codecs=options.codecs,
                                  attention_dir=folder / "attention", masks=options.masks,
                                  threshold=options.threshold, on_frame=frame_written)
    record = {"input": str(inp.path), "world_size": run_world_size, "rank": batch_rank, "frames": video.frames,
              "batch_size": options.batch_size, "weights": options.weights, "batches": batches,
              "fps": fps, "video": video.video.name, "fourcc": video.fourcc,
              "masks_video": video.masks_video.name if video.masks_video is not None else None,
              "settings": _plain(options.settings_of(inp)), "source": inp.source()}
    save_text(folder / RECORD, json.dumps(record, indent=2) + "\n")
    return record


def run_inputs(model: nn.Module, inputs: Sequence[VideoInput], folders: Sequence[Path], todo: Sequence[int],
               options: RunOptions, rank: int = 0, world_size: int = 1,
               progress: Callable[[int], None] | None = None) -> dict[int, dict] | None:
    """Compute and write the inputs `todo` over the processes of a group (every rank calls it alike): whole inputs
    dealt by rank (input todo[i] to rank i % world_size) when there are at least world_size of them, else one input
    after another split by frame batches. `progress` is called on rank 0 with the frames done by all ranks so far.
    Returns on rank 0 the records of the inputs made, by input index; None on the other ranks. A failure on any
    rank ends every rank with an error (RankFailed on the ranks that did not fail) instead of leaving them waiting.
    """
    split = choose_split(len(todo), world_size)
    done, finished, failed = GlobalCounter("video_frames"), GlobalCounter("video_ranks"), GlobalCounter("video_failed")
    records: dict[int, dict] = {}
    error = None

    def frame_done() -> None:
        n = done.add()
        if rank == 0 and progress is not None:
            progress(n)
        if split == "inputs" and failed.value():
            raise RankFailed(f"process {rank} of {world_size} stopped: another process failed")

    if split == "inputs":
        try:
            for i in shard(list(todo), rank, world_size):
                # Alone on its input: the batches are this rank's, no exchange with the others.
                records[i] = produce(model, inputs[i], folders[i], options, run_world_size=world_size,
                                     batch_rank=rank, on_frame=frame_done)
        except Exception as err:  # noqa: BLE001 -- reported to every rank below, then raised
            error = err
            failed.add()
        finished.add()
        # Inputs differ in length: the ranks meet in the key-value store, not in a collective that a rank done
        # early would wait in past the process group's timeout.
        while finished.value() < world_size:
            if rank == 0 and progress is not None:
                progress(done.value())
            time.sleep(0.2)
        check_all_ranks(error, rank, world_size)
    else:
        for i in todo:
            error, record = None, None
            try:
                record = produce(model, inputs[i], folders[i], options, rank=rank, world_size=world_size,
                                 run_world_size=world_size, on_frame=frame_done)
            except Exception as err:  # noqa: BLE001
                if is_agreed(err):  # every rank raised it in the same round: no one is left to tell
                    raise
                error = err
            check_all_ranks(error, rank, world_size)  # rank 0's own failures (writing) reach the others
            if record is not None:
                records[i] = record
    if progress is not None and rank == 0:
        progress(done.value())
    parts = gather_to_main(records, rank, world_size)
    if parts is None:
        return None
    return dict(sorted((i, r) for part in parts for i, r in part.items()))


def run_summary(inputs: Sequence[VideoInput], folders: Sequence[Path], output_path: Path, records: dict[int, dict],
                todo: Sequence[int], world_size: int, options: RunOptions) -> dict:
    """OUTPUT_PATH/summary.json of a run over several inputs: world_size, how the work was split, and per input
    (by its folder's name) the rank that made it (null where its frame batches were split, which `batches` then
    gives rank by rank) and whether it was resumed from an earlier run."""
    per_input = {}
    for i, (inp, folder) in enumerate(zip(inputs, folders)):
        record = records.get(i) or read_record(folder) or {}
        entry = {"input": str(inp.path), "output": folder.relative_to(output_path).as_posix(),
                 "rank": record.get("rank"), "frames": record.get("frames"), "resumed": i not in todo}
        if record.get("rank") is None:
            entry["batches"] = record.get("batches")
        per_input[inp.stem] = entry
    return {"world_size": world_size, "split": choose_split(len(todo), world_size) if todo else None,
            "batch_size": options.batch_size, "weights": options.weights, "inputs": per_input}

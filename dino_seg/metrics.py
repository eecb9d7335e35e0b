"""DAVIS J (region IoU) and F (boundary F-measure) scored exactly as davis2017-evaluation, plus its CSV files."""
from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import disk

from dino_seg.files import save_text
from dino_seg.labels import read_label_png
from dino_seg.masks import mask_iou
from dino_seg.davis import DavisError, VOID_LABEL, annotation_paths, list_sequences, read_annotation

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray) -> float:
    """Jaccard index of two binary masks; 1 when both are empty (davis2017-evaluation)."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape")
    return mask_iou(annotation, segmentation, empty=1.0)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map: a pixel differing from its right, bottom or bottom-right neighbour
    (last row: right only; last column: bottom only; the bottom-right corner never) — _seg2bmap."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


@lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    return disk(radius).astype(np.uint8)


def boundary_radius(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Dilation radius in pixels: ceil(bound_th * image diagonal), or bound_th itself when >= 1."""
    return int(bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(shape)))


def f_measure(segmentation: np.ndarray, annotation: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of a binary prediction against a binary ground truth (davis2017-evaluation)."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape")
    kernel = _disk(boundary_radius(segmentation.shape, bound_th))
    fg_boundary = seg2bmap(segmentation)
    gt_boundary = seg2bmap(annotation)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel)
    n_fg = int(fg_boundary.sum())
    n_gt = int(gt_boundary.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(fg_boundary & (gt_dil > 0)) / float(n_fg)
        recall = np.sum(gt_boundary & (fg_dil > 0)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of per-frame values as davis2017-evaluation's utils.db_statistics."""
    values = np.asarray(per_frame_values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
    # Four bins; +1e-10 makes np.round's half-to-even break upwards, as the package does.
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


@dataclass
class SequenceScores:
    """Per-object, per-frame J and F of one sequence (first and last frames excluded)."""

    name: str
    j: np.ndarray  # (n_objects, n_frames)
    f: np.ndarray  # (n_objects, n_frames)
    missing: list[Path] = field(default_factory=list)


@dataclass
class DavisScores:
    """Global and per-object scores, in davis2017-evaluation's columns."""

    global_scores: dict[str, float]
    per_object: list[tuple[str, float, float]]
    missing: list[Path]


def _read_result(path: Path, gt_shape: tuple[int, int], n_objects: int) -> np.ndarray:
    # A 0/255 single-channel result is a DAVIS 2016-style mask of the single object; with more objects,
    # 255 stays an index (and is rejected as above the object count).
    arr = read_label_png(path, what="result", error=DavisError,
                         binary_255="object" if n_objects == 1 else "keep").labels
    if arr.shape != gt_shape:
        raise DavisError(
            f"result {path} is {arr.shape[1]}x{arr.shape[0]} but its ground truth is {gt_shape[1]}x{gt_shape[0]}")
    return arr


def score_sequence(results_dir: str | Path, davis_root: str | Path, sequence: str,
                   resolution: str = "480p", bound_th: float = 0.008, frames: int | None = None) -> SequenceScores:
    """J and F of every object over the ground-truth frames but the first and the last (semi-supervised task).

    Results are read by the ground truth's frame names; a missing result frame counts as an empty mask and is
    listed in `missing`. Void ground-truth pixels count as background and are not excluded, as in the package.
    `frames` scores only the first that many ground-truth frames, as if the sequence ended there (a run
    capped at N frames): frames 1 to N-2 are scored.
    """
    gt_files = annotation_paths(davis_root, sequence, resolution)
    if frames is not None:
        # Fewer than 3 leave no frame between the first and the last; more than there are would silently
        # score the whole sequence under a wrong name.
        if not 3 <= frames <= len(gt_files):
            raise DavisError(f"cannot score the first {frames} frames of {sequence}: it has {len(gt_files)} "
                             "ground-truth frames, and 3 are the fewest (the first and the last are not scored)")
        gt_files = gt_files[:frames]
    first = read_annotation(gt_files[0])
    n_objects = int(np.where(first == VOID_LABEL, 0, first).max())
    scored = gt_files[1:-1]
    j = np.zeros((n_objects, len(scored)))
    f = np.zeros((n_objects, len(scored)))
    missing: list[Path] = []
    for t, gt_file in enumerate(scored):
        gt = read_annotation(gt_file)
        gt = np.where(gt == VOID_LABEL, 0, gt)
        res_file = Path(results_dir) / sequence / gt_file.name
        if res_file.is_file():
            pred = _read_result(res_file, gt.shape, n_objects)
            if pred.max(initial=0) > n_objects:
                raise DavisError(f"result {res_file} holds index {int(pred.max())} but {sequence} has "
                                 f"{n_objects} object(s) in its first ground-truth frame")
        else:
            missing.append(res_file)
            pred = np.zeros_like(gt)
        for k in range(n_objects):
            gt_k = gt == k + 1
            pred_k = pred == k + 1
            j[k, t] = db_eval_iou(gt_k, pred_k)
            f[k, t] = f_measure(pred_k, gt_k, bound_th)
    return SequenceScores(sequence, j, f, missing)


def summarise(sequences: list[SequenceScores]) -> DavisScores:
    """Global means over all objects of all sequences, and per-object means (`<sequence>_<k>`)."""
    stats_j, stats_f, per_object = [], [], []
    missing: list[Path] = []
    for seq in sequences:
        missing.extend(seq.missing)
        for k in range(seq.j.shape[0]):
            sj = db_statistics(seq.j[k])
            sf = db_statistics(seq.f[k])
            stats_j.append(sj)
            stats_f.append(sf)
            per_object.append((f"{seq.name}_{k + 1}", sj[0], sf[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        j = np.array(stats_j, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        f = np.array(stats_f, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    values = [(j[0] + f[0]) / 2.0, j[0], j[1], j[2], f[0], f[1], f[2]]
    return DavisScores(dict(zip(GLOBAL_COLUMNS, (float(v) for v in values))), per_object, missing)


def score_results(results_dir: str | Path, davis_root: str | Path, subset: str = "val",
                  sequences: list[str] | None = None, resolution: str = "480p") -> DavisScores:
    """Score a folder of results (`<results_dir>/<sequence>/<frame>.png`) against a DAVIS root."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DavisError(f"results folder not found: {results_dir}")
    names = sequences if sequences else list_sequences(davis_root, subset, resolution)
    return summarise([score_sequence(results_dir, davis_root, name, resolution) for name in names])


def _fmt(value: float) -> str:
    # pandas' to_csv(float_format="%.3f") writes NaN as an empty field.
    return "" if math.isnan(value) else "%.3f" % value


def csv_paths(folder: str | Path, subset: str = "val") -> tuple[Path, Path]:
    """global_results-<subset>.csv and per-sequence_results-<subset>.csv in `folder`."""
    folder = Path(folder)
    return folder / f"global_results-{subset}.csv", folder / f"per-sequence_results-{subset}.csv"


def write_csvs(scores: DavisScores, out_dir: str | Path, subset: str = "val") -> tuple[Path, Path]:
    """Write global_results-<subset>.csv and per-sequence_results-<subset>.csv like davis2017-evaluation."""
    g = io.StringIO()
    writer = csv.writer(g, lineterminator="\n")
    writer.writerow(GLOBAL_COLUMNS)
    writer.writerow([_fmt(scores.global_scores[c]) for c in GLOBAL_COLUMNS])
    s = io.StringIO()
    writer = csv.writer(s, lineterminator="\n")
    writer.writerow(SEQUENCE_COLUMNS)
    for name, jm, fm in scores.per_object:
        writer.writerow([name, _fmt(jm), _fmt(fm)])
    global_path, seq_path = csv_paths(out_dir, subset)
    save_text(global_path, g.getvalue())
    save_text(seq_path, s.getvalue())
    return global_path, seq_path


def _read_csv(path: Path, header: tuple[str, ...]) -> list[list[str]]:
    try:
        rows = [row for row in csv.reader(io.StringIO(path.read_text())) if row]  # blank lines, as pandas
    except FileNotFoundError:
        raise DavisError(f"scores file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DavisError(f"cannot read scores file {path}: {exc}") from None
    if not rows or tuple(rows[0]) != header:
        raise DavisError(f"{path} does not start with the header {','.join(header)}")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DavisError(f"{path} line {number} has {len(row)} fields, not {len(header)}")
    return rows[1:]


def _parse(field: str, path: Path) -> float:
    if field == "":
        return math.nan  # write_csvs (and pandas) write NaN as an empty field
    try:
        return float(field)
    except ValueError:
        raise DavisError(f"{path}: {field!r} is not a number") from None


def read_csvs(folder: str | Path, subset: str = "val") -> DavisScores:
    """The scores as write_csvs wrote them (3 decimals; empty fields are NaN). The files do not list
    missing result frames, so `missing` is empty."""
    global_path, seq_path = csv_paths(folder, subset)
    global_rows = _read_csv(global_path, GLOBAL_COLUMNS)
    if len(global_rows) != 1:
        raise DavisError(f"{global_path} holds {len(global_rows)} rows of scores, not 1")
    global_scores = {c: _parse(v, global_path) for c, v in zip(GLOBAL_COLUMNS, global_rows[0])}
    seq_rows = _read_csv(seq_path, SEQUENCE_COLUMNS)
    per_object = [(name, _parse(jm, seq_path), _parse(fm, seq_path)) for name, jm, fm in seq_rows]
    return DavisScores(global_scores, per_object, [])


def format_table(scores: DavisScores) -> str:
    """The global row and the per-object rows as aligned text tables."""
    def table(header: tuple[str, ...], rows: list[list[str]]) -> str:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [" ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += [" ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        return "\n".join(lines)

    g = table(GLOBAL_COLUMNS, [["%.3f" % scores.global_scores[c] for c in GLOBAL_COLUMNS]])
    s = table(SEQUENCE_COLUMNS, [[n, "%.3f" % jm, "%.3f" % fm] for n, jm, fm in scores.per_object])
    return f"{g}\n\n{s}"

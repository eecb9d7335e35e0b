"""The Results tab: an eval.davis output folder's scores, per-frame J and F, and ground truth beside prediction."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dino_seg import davis, metrics
from dino_seg.images import load_image
from dino_seg.viz import label_color, overlay_labels

from .components import FrameSlider, ImageView, clears_errors
from .config import AppConfig
from .errors import friendly
from .paths import check_path, check_sequence
from .shared import Shared
from .video import davis_root

TABLE_COLUMNS = ["Sequence", "J&F", "J-Mean", "F-Mean"]  # eval.davis's per-sequence columns with J&F second


def _results_subset(folder: Path) -> str:
    for subset in ("val", "train"):
        if all(p.is_file() for p in metrics.csv_paths(folder, subset)):
            return subset
    raise gr.Error(f"{folder}: no global_results-val.csv / per-sequence_results-val.csv: score it with "
                   f"`python -m eval.davis --results_path {folder} --data_path DAVIS` first")


def jf_chart(per_sequence: pd.DataFrame) -> Figure:
    """Horizontal bars of J&F per sequence object, with J and F beside them."""
    names = list(per_sequence["Sequence"])
    j = per_sequence["J-Mean"].to_numpy(float)
    f = per_sequence["F-Mean"].to_numpy(float)
    y = np.arange(len(names))
    fig = Figure(figsize=(7, max(2.5, 0.32 * len(names) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(y - 0.27, (j + f) / 2, height=0.27, label="J&F", color="#4c72b0")
    ax.barh(y, j, height=0.27, label="J (region)", color="#dd8452")
    ax.barh(y + 0.27, f, height=0.27, label="F (boundary)", color="#55a868")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("J&F, J and F per sequence object")
    ax.grid(axis="x", alpha=0.3)
    return fig


@friendly
def open_results(results_dir: str | None, cfg: AppConfig) -> tuple[str, pd.DataFrame, Figure, dict]:
    """(global scores Markdown, per-sequence table with J&F, chart, sequence choices) of an eval.davis folder."""
    if not (results_dir or "").strip():
        raise gr.Error("Type a results folder: the --output_dir of a `python -m eval.davis` run.")
    folder = Path(check_path(results_dir.strip(), cfg, "results folder"))
    if not folder.is_dir():
        raise gr.Error(f"results folder not found: {results_dir!r} (an --output_dir of python -m eval.davis)")
    if (folder / "JPEGImages").is_dir() and (folder / "Annotations").is_dir():
        raise gr.Error(f"{folder} is a DAVIS dataset (JPEGImages, Annotations), not results: give it as the DAVIS "
                       "root, and open the --output_dir of `python -m eval.davis` here")
    subset = _results_subset(folder)
    scores = metrics.read_csvs(folder, subset)
    global_csv, seq_csv = metrics.csv_paths(folder, subset)
    if not scores.per_object:
        raise gr.Error(f"{seq_csv}: no sequences listed")
    per_sequence = pd.DataFrame(scores.per_object, columns=list(metrics.SEQUENCE_COLUMNS))
    per_sequence.insert(1, "J&F", ((per_sequence["J-Mean"] + per_sequence["F-Mean"]) / 2).round(3))  # TABLE_COLUMNS
    row = scores.global_scores
    text = (f"**J&F-Mean {row['J&F-Mean']:.3f}** · J-Mean {row['J-Mean']:.3f} (recall {row['J-Recall']:.3f}, "
            f"decay {row['J-Decay']:.3f}) · F-Mean {row['F-Mean']:.3f} (recall {row['F-Recall']:.3f}, decay "
            f"{row['F-Decay']:.3f}) · {len(per_sequence)} object(s) · `{global_csv.name}`")
    sequences = list(dict.fromkeys(str(s).rsplit("_", 1)[0] for s in per_sequence["Sequence"]))
    return text, per_sequence, jf_chart(per_sequence), gr.update(choices=sequences, value=sequences[0])


def per_frame_chart(scores: metrics.SequenceScores) -> Figure:
    """J (and F, dashed) of each object over the scored frames."""
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(1, scores.j.shape[1] + 1)  # frame 0 (given) is not scored
    for k in range(scores.j.shape[0]):
        color = np.asarray(label_color(k + 1)) / 255
        ax.plot(x, scores.j[k], "-o", ms=3, color=color, label=f"object {k + 1} J")
        ax.plot(x, scores.f[k], "--", color=color, alpha=0.6, label=f"object {k + 1} F")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("frame")
    ax.set_ylabel("score")
    ax.set_title(f"{scores.name}: per-frame J (solid) and F (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return fig


@friendly
def sequence_scores(results_dir: str | None, root: str | None, sequence: str | None,
                    cfg: AppConfig) -> tuple[Figure | None, dict]:
    """Per-frame J and F of one sequence, and the frame slider's range."""
    if not sequence:
        return None, gr.update()
    root = davis_root(root, cfg)
    sequence = check_sequence(root, sequence, cfg)
    folder = check_path((results_dir or "").strip(), cfg, "results folder")
    scores = metrics.score_sequence(Path(folder), root, sequence)
    n = len(davis.frame_paths(root, sequence))
    return per_frame_chart(scores), gr.update(minimum=0, maximum=n - 1, value=min(1, n - 1), step=1)


@friendly
def compare_frame(results_dir: str | None, root: str | None, sequence: str | None, index: float,
                  cfg: AppConfig) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Ground truth and prediction of one frame, each overlaid on the frame."""
    if not sequence:
        return None, None, ""
    root = davis_root(root, cfg)
    sequence = check_sequence(root, sequence, cfg)
    results_dir = check_path((results_dir or "").strip(), cfg, "results folder")
    frames = davis.frame_paths(root, sequence)
    frame = frames[max(0, min(int(index), len(frames) - 1))]
    image = np.asarray(load_image(frame))
    gt_path = davis.annotation_dir(root, sequence) / f"{frame.stem}.png"
    pred_path = Path((results_dir or "").strip()) / sequence / f"{frame.stem}.png"
    gt = overlay_labels(image, davis.read_annotation(gt_path)) if gt_path.is_file() else None
    pred = overlay_labels(image, davis.read_annotation(pred_path)) if pred_path.is_file() else None
    missing = [what for what, arr in (("ground truth", gt), ("prediction", pred)) if arr is None]
    note = f"{sequence} frame {frame.stem}" + (f" — no {' and no '.join(missing)} for this frame" if missing else "")
    return gt, pred, note


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Results tab's components and events (endpoints /open_results, /sequence_scores, /compare_frame)."""
    with gr.Tab("Results", id="results"):
        with gr.Row():
            results_dir = gr.Textbox(cfg.results_dir, label="eval.davis output folder", scale=3)
            root = gr.Textbox(cfg.davis_root, label="DAVIS root (ground truth)", scale=3)
            open_button = gr.Button("Open", variant="primary", scale=1, elem_id="results-open")
        summary = gr.Markdown(elem_id="results-summary")
        with gr.Row():
            table = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), label="Per-sequence results",
                                 interactive=False, max_height=420)  # its own headers while empty, not 1 2 3
            chart = gr.Plot(label="J&F per sequence", show_label=False)
        with gr.Row():
            # Any name and index are accepted (the handlers check them): their choices and range are set
            # per folder in a session, and API calls must not depend on /open_results having run first.
            sequence = gr.Dropdown(label="Sequence", allow_custom_value=True, scale=1)
            frame = FrameSlider(0, 1, value=1, step=1, label="Frame", scale=3)
        frame_chart = gr.Plot(label="Per-frame scores", show_label=False)
        compare_note = gr.Markdown()
        with gr.Row():
            gt_view = ImageView(label="Ground truth", interactive=False, elem_id="results-gt")
            pred_view = ImageView(label="Prediction", interactive=False, elem_id="results-pred")

    opening, scoring, comparing = (functools.partial(fn, cfg=cfg) for fn in (open_results, sequence_scores,
                                                                            compare_frame))
    clears_errors(open_button.click(opening, results_dir, [summary, table, chart, sequence], api_name="open_results"))
    compare_inputs = [results_dir, root, sequence, frame]
    compare_outputs = [gt_view, pred_view, compare_note]
    # .then: the frame slider may keep its value for a new sequence, and then fires no change event.
    sequence.change(scoring, [results_dir, root, sequence], [frame_chart, frame],
                    api_name="sequence_scores").then(comparing, compare_inputs, compare_outputs,
                                                     api_name="compare_sequence_frame", api_visibility="private")
    frame.release(comparing, compare_inputs, compare_outputs, api_name="compare_frame")
    return {"results_dir": results_dir, "root": root, "open": open_button, "summary": summary, "table": table,
            "chart": chart, "sequence": sequence, "frame": frame, "frame_chart": frame_chart,
            "compare_note": compare_note, "gt_view": gt_view, "pred_view": pred_view}

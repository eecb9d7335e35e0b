"""The Training tab: a `python -m train` folder's curves and checkpoints, any of which the page can use."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from dino_seg import runs

from .components import clears_errors
from .config import AppConfig
from .errors import friendly, one_line
from .paths import check_path
from .shared import Shared
from .weights_bar import check_weights, weight_choices

CHECKPOINT_COLUMNS = ["file", "epoch", "size (MB)", "saved"]
CURVES = (("loss", "loss"), ("lr", "learning rate"), ("wd", "weight decay"), ("momentum", "teacher momentum"),
          ("teacher_temp", "teacher temperature"), ("teacher_entropy", "teacher entropy (collapse: → 0)"),
          ("kl", "KL(teacher ‖ student) (collapse: → 0)"))


def _plot_accuracy(ax, curves: dict[str, tuple[list[float], list[float]]], title: str) -> None:
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, "-o", ms=3, label=label)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("epoch", fontsize="small")
    ax.set_ylabel("%", fontsize="small")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def training_curves(records: list[dict], epochs: list[dict]) -> Figure:
    """One panel per logged quantity over iterations, the per-epoch mean loss, and, when the run has
    them, the k-NN accuracy per epoch (--knn_data_path) and the linear probe's (eval.linear)."""
    knn = runs.knn_epochs(epochs)
    linear = {key: runs.series(epochs, key, x="epoch") for key in runs.LINEAR_KEYS}
    linear = {key: xy for key, xy in linear.items() if xy[0]}
    extra = int(bool(knn)) + int(bool(linear))
    rows = 2 if extra == 0 else 3
    fig = Figure(figsize=(12, 2.7 * rows), layout="constrained")
    axes = fig.subplots(rows, 4)
    for ax, (key, title) in zip(axes.flat, CURVES):
        xs, ys = runs.series(records, key)
        if xs:
            ax.plot(xs, ys, lw=1)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("iteration", fontsize="small")
        ax.grid(alpha=0.3)
    ax = axes.flat[len(CURVES)]
    xs, ys = runs.series(epochs, "train_loss", x="epoch")
    if xs:
        ax.plot(xs, ys, "-o", ms=3)
    else:
        ax.text(0.5, 0.5, "no finished epoch", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_title("mean loss per epoch (log.txt)", fontsize="medium")
    ax.set_xlabel("epoch", fontsize="small")
    ax.grid(alpha=0.3)
    panels = iter(axes.flat[len(CURVES) + 1:])
    if knn:
        _plot_accuracy(next(panels), {k.replace("knn_", ""): xy for k, xy in knn.items()},
                       "k-NN accuracy of the teacher (%)")
    if linear:
        _plot_accuracy(next(panels), {k.replace("test_acc", "top-"): xy for k, xy in linear.items()},
                       "linear probe accuracy (%)")
    for ax in panels:
        fig.delaxes(ax)
    return fig


def evaluation_summary(folder: Path, epochs: list[dict]) -> str:
    """Markdown lines for the folder's feature evaluations: k-NN while training, knn.json, linear probe."""
    lines = []
    knn = [r for r in epochs if isinstance(r.get("knn_top1"), (int, float))]
    if knn:
        last = knn[-1]
        lines.append(f"k-NN while training (epoch {last['epoch']}): top-1 **{last['knn_top1']:.2f}%**, "
                     f"top-5 {last['knn_top5']:.2f}%")
    results = runs.read_knn_results(folder)
    if results:
        lines.append(f"k-NN evaluation ({runs.KNN_RESULTS}):\n\n| k | top-1 (%) | top-5 (%) |\n|---:|---:|---:|\n" +
                     "\n".join(f"| {k} | {v['top1']:.2f} | {v['top5']:.2f} |" for k, v in sorted(results.items())))
    linear = [r for r in epochs if isinstance(r.get("test_acc1"), (int, float))]
    if linear:
        best = max(linear, key=lambda r: r["test_acc1"])
        lines.append(f"Linear probe: best top-1 **{best['test_acc1']:.2f}%** at epoch {best['epoch']} "
                     f"({len(linear)} validated epoch(s))")
    return "\n\n".join(lines)


@friendly
def open_training_run(train_dir: str | None, cfg: AppConfig) -> tuple[str, Figure, pd.DataFrame, dict]:
    """(summary Markdown, curves, checkpoint table, checkpoint choices) of a `python -m train` folder."""
    if not (train_dir or "").strip():
        raise gr.Error("Type a training folder: the --output_dir of a `python -m train` run.")
    folder = Path(check_path(train_dir.strip(), cfg, "training folder"))
    if not folder.is_dir():
        raise gr.Error(f"training folder not found: {train_dir!r} (an --output_dir of python -m train)")
    try:
        records = runs.read_metrics(folder)
        epochs = runs.read_epoch_log(folder)
        evaluations = evaluation_summary(folder, epochs)
    except ValueError as err:
        raise gr.Error(one_line(err)) from None
    checkpoints = runs.list_checkpoints(folder)
    if not records and not epochs and not checkpoints and not evaluations:
        raise gr.Error(f"{folder}: no {runs.METRICS_LOG}, {runs.EPOCH_LOG}, {runs.KNN_RESULTS} or checkpoints: "
                       "not a training folder")
    table = pd.DataFrame([{"file": c.path.name, "epoch": "latest" if c.is_latest else c.epoch,
                           "size (MB)": round(c.size_bytes / 2**20, 1),
                           "saved": pd.Timestamp(c.modified, unit="s").strftime("%Y-%m-%d %H:%M")}
                          for c in checkpoints], columns=CHECKPOINT_COLUMNS)
    last = records[-1] if records else {}
    parts = [f"{len(records)} iteration(s), {len(epochs)} finished epoch(s), {len(checkpoints)} checkpoint(s)"]
    for key in ("loss", "teacher_entropy", "kl"):
        if isinstance(last.get(key), (int, float)):
            parts.append(f"last {key} {last[key]:.4g}")
    choices = [str(c.path) for c in checkpoints]
    return (" · ".join(parts) + (f"\n\n{evaluations}" if evaluations else ""), training_curves(records, epochs), table,
            gr.update(choices=choices, value=choices[-1] if choices else None))


@friendly
def use_checkpoint(path: str | None, cfg: AppConfig) -> tuple[dict, dict, str]:
    """Make a run's checkpoint (its teacher) the weights of the page and go to the Attention tab."""
    if not path:
        raise gr.Error("Open a training folder and pick a checkpoint first.")
    banner = check_weights(path, cfg)
    return gr.update(choices=weight_choices(cfg, [path]), value=path), gr.Tabs(selected="attention"), banner


def build_tab(cfg: AppConfig, shared: Shared) -> dict[str, gr.components.Component]:
    """The Training tab's components and events (endpoints /open_training and /use_checkpoint)."""
    with gr.Tab("Training", id="training"):
        with gr.Row():
            train_dir = gr.Textbox(cfg.train_dir, label="python -m train output folder", scale=4)
            open_button = gr.Button("Open", variant="primary", scale=1, elem_id="training-open")
        summary = gr.Markdown(elem_id="training-summary")
        curves = gr.Plot(label="Training curves", show_label=False)
        with gr.Row():
            table = gr.Dataframe(pd.DataFrame(columns=CHECKPOINT_COLUMNS), label="Checkpoints", interactive=False,
                                 scale=3)  # its own headers while empty, not 1 2 3
            with gr.Column(scale=2):
                # Any path is accepted (use_checkpoint checks it): the choices are set per folder in a
                # session, and /use_checkpoint must not depend on /open_training having run first.
                checkpoint = gr.Dropdown(label="Checkpoint", allow_custom_value=True)
                use_button = gr.Button("Use in the Attention tab", elem_id="use-checkpoint")

    clears_errors(open_button.click(functools.partial(open_training_run, cfg=cfg), train_dir,
                                    [summary, curves, table, checkpoint], api_name="open_training"))
    clears_errors(use_button.click(functools.partial(use_checkpoint, cfg=cfg), checkpoint,
                                   [shared.weights, shared.tabs, shared.banner], api_name="use_checkpoint"))
    return {"train_dir": train_dir, "open": open_button, "summary": summary, "curves": curves, "table": table,
            "checkpoint": checkpoint, "use": use_button}

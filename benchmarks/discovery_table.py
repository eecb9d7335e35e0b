"""A discovery leaderboard: methods x backbones x the benchmarks found under a data root, beside the published numbers.

    python benchmarks/discovery_table.py --data_path datasets --output_dir out/discovery_table
    python benchmarks/discovery_table.py --data_path datasets --methods lost tokencut --benchmarks voc07 ecssd \\
        --backbones dino_vits16 dino_vitb16 path/to/checkpoint.pth

Each (backbone, method, benchmark) cell is one `python -m eval.discover --benchmark ...` run (saliency benchmarks with
--refine, so both TokenCut rows are measured) into OUTPUT_DIR/runs/<backbone>/<method>/<benchmark>/. A cell whose
summary.json exists is not run again, and an unfinished cell continues from its last finished image
(eval.discover --resume): an interrupted table resumes where it stopped, and a new method, backbone or benchmark
only adds its own cells. leaderboard.md and leaderboard.csv are rewritten from every summary.json under
OUTPUT_DIR/runs after each cell. Published numbers are ViT-S/16 DINO (--backbones dino_vits16): LOST and TokenCut's
papers for CorLoc, TokenCut's get_saliency.py results for saliency; they are shown beside every backbone's row for
reference. --backbones takes anything --pretrained_weights takes (presets, files; every family the product loads).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dino_seg.discovery import METHODS  # noqa: E402
from dino_seg.discovery_data import BENCHMARKS, available_benchmarks  # noqa: E402
from dino_seg.files import save_text  # noqa: E402

# (method, benchmark, stage) -> {metric: percent}, ViT-S/16 DINO.
PUBLISHED = {
    ("attention", "voc07", "coarse"): {"CorLoc": 45.8},
    ("attention", "voc12", "coarse"): {"CorLoc": 46.2},
    ("attention", "coco20k", "coarse"): {"CorLoc": 42.1},
    ("lost", "voc07", "coarse"): {"CorLoc": 61.9},
    ("lost", "voc12", "coarse"): {"CorLoc": 64.0},
    ("lost", "coco20k", "coarse"): {"CorLoc": 50.7},
    ("tokencut", "voc07", "coarse"): {"CorLoc": 68.8},
    ("tokencut", "voc12", "coarse"): {"CorLoc": 72.1},
    ("tokencut", "coco20k", "coarse"): {"CorLoc": 58.8},
    ("tokencut", "ecssd", "coarse"): {"maxFbeta": 80.3, "IoU": 71.2, "Acc": 91.8},
    ("tokencut", "ecssd", "refined"): {"maxFbeta": 87.4, "IoU": 77.2, "Acc": 93.4},
    ("tokencut", "duts-te", "coarse"): {"maxFbeta": 67.2, "IoU": 57.6, "Acc": 90.3},
    ("tokencut", "duts-te", "refined"): {"maxFbeta": 75.5, "IoU": 62.4, "Acc": 91.4},
    ("tokencut", "dut-omron", "coarse"): {"maxFbeta": 60.0, "IoU": 53.3, "Acc": 88.0},
    ("tokencut", "dut-omron", "refined"): {"maxFbeta": 69.7, "IoU": 61.8, "Acc": 89.7},
}
SALIENCY_METRICS = ("maxFbeta", "IoU", "Acc")
COLUMNS = ("benchmark", "method", "backbone", "stage", "images", "metric", "measured", "published")


def default_backbones() -> list[str]:
    """DINO ViT-S/16 (the papers' backbone) and every ViT-S preset of the later families the product registers."""
    from dino_seg.weights import PRESETS

    return ["dino_vits16"] + [name for name in PRESETS if re.match(r"dinov[23]\w*_vits", name)]


def backbone_label(backbone: str) -> str:
    """A folder-safe name: a preset as is, a file by its stem."""
    return Path(backbone).stem if ("/" in backbone or backbone.endswith((".pth", ".pt", ".safetensors"))) else backbone


def run_cell(backbone: str, method: str, benchmark: str, data_path: Path, cell: Path, device: str,
             extra: list[str]) -> int:
    """One eval.discover run; its summary.json (written last, atomically) marks the cell done."""
    from eval import discover

    argv = ["--pretrained_weights", backbone, "--method", method, "--benchmark", benchmark, "--data_path",
            str(data_path), "--output_dir", str(cell), "--device", device, "--resume", *extra]
    if BENCHMARKS[benchmark].kind == "saliency":
        argv.append("--refine")
    return discover.main(argv)


def collect(runs: Path) -> list[dict]:
    """Leaderboard rows (COLUMNS) from every runs/<backbone>/<method>/<benchmark>/summary.json."""
    rows = []
    for path in sorted(runs.glob("*/*/*/summary.json")):
        backbone, method, benchmark = path.parent.relative_to(runs).parts
        summary = json.loads(path.read_text())
        kind = BENCHMARKS[benchmark].kind if benchmark in BENCHMARKS else "corloc"
        metrics = SALIENCY_METRICS if kind == "saliency" else ("CorLoc",)
        for stage in ("coarse", "refined"):
            if stage not in summary:
                continue
            published = PUBLISHED.get((method, benchmark, stage), {})
            for metric in metrics:
                value = summary[stage].get(metric)
                rows.append({"benchmark": benchmark, "method": method, "backbone": backbone, "stage": stage,
                             "images": summary["images"], "metric": metric,
                             "measured": None if value is None else round(100 * value, 1),
                             "published": published.get(metric)})
    return rows


def _pair(measured: float | None, published: float | None) -> str:
    m = "-" if measured is None else f"{measured:.1f}"
    return m if published is None else f"{m} ({published:.1f})"


def markdown(rows: list[dict]) -> str:
    """One table per benchmark kind: CorLoc (%) and saliency maxFβ / IoU / Acc (%), published in parentheses."""
    out = []
    corloc = [r for r in rows if r["metric"] == "CorLoc"]
    if corloc:
        benches = [b for b in BENCHMARKS if any(r["benchmark"] == b for r in corloc)]
        out += ["CorLoc (%), published ViT-S/16 DINO in parentheses", "",
                "| method | backbone | " + " | ".join(benches) + " |", "|---|---|" + "---|" * len(benches)]
        for method, backbone in sorted({(r["method"], r["backbone"]) for r in corloc}):
            cells = []
            for b in benches:
                r = next((r for r in corloc if (r["method"], r["backbone"], r["benchmark"]) == (method, backbone, b)),
                         None)
                cells.append("" if r is None else _pair(r["measured"], r["published"]))
            out.append(f"| {method} | {backbone} | " + " | ".join(cells) + " |")
        out.append("")
    sal = [r for r in rows if r["metric"] in SALIENCY_METRICS]
    if sal:
        benches = [b for b in BENCHMARKS if any(r["benchmark"] == b for r in sal)]
        out += ["Saliency maxFβ / IoU / Acc (%), published ViT-S/16 DINO in parentheses", "",
                "| method | backbone | stage | " + " | ".join(benches) + " |", "|---|---|---|" + "---|" * len(benches)]
        for method, backbone, stage in sorted({(r["method"], r["backbone"], r["stage"]) for r in sal},
                                              key=lambda k: (k[0], k[1], k[2] != "coarse")):
            cells = []
            for b in benches:
                got = {r["metric"]: r for r in sal if (r["method"], r["backbone"], r["stage"], r["benchmark"]) ==
                       (method, backbone, stage, b)}
                cells.append(" / ".join(_pair(got[m]["measured"], got[m]["published"]) for m in SALIENCY_METRICS)
                             if got else "")
            out.append(f"| {method} | {backbone} | {stage} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) if out else "No finished run yet.\n"


def write_tables(output_dir: Path) -> list[dict]:
    rows = collect(output_dir / "runs")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    save_text(output_dir / "leaderboard.csv", buf.getvalue())
    save_text(output_dir / "leaderboard.md", markdown(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_path", required=True, help="Root of the benchmarks (eval.discover --data_path).")
    parser.add_argument("--output_dir", default="output/discovery_table")
    parser.add_argument("--methods", nargs="+", default=["attention", "lost", "tokencut", "maskcut"], choices=METHODS)
    parser.add_argument("--backbones", nargs="+", default=default_backbones(),
                        help="Anything --pretrained_weights takes: presets or files. Default: DINO ViT-S/16 and the "
                             "ViT-S presets of the other families (DINOv2, with and without registers, DINOv3).")
    parser.add_argument("--benchmarks", nargs="+", default=None, choices=list(BENCHMARKS),
                        help="Default: every benchmark complete under --data_path.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no_hard", action="store_true", help="VOC: LOST's --no_hard.")
    args = parser.parse_args(argv)
    data_path, output_dir = Path(args.data_path), Path(args.output_dir)
    benches = args.benchmarks or available_benchmarks(data_path)
    if not benches:
        print(f"error: --data_path {data_path}: no complete benchmark found; expected any of: " +
              "; ".join(b.layout for b in BENCHMARKS.values()), file=sys.stderr)
        return 2
    extra = ["--no_hard"] if args.no_hard else []
    failed = []
    cells = [(bb, m, b) for bb in args.backbones for m in args.methods for b in benches]
    for backbone, method, bench in cells:
        cell = output_dir / "runs" / backbone_label(backbone) / method / bench
        if (cell / "summary.json").is_file():
            print(f"[done] {backbone} {method} {bench}")
            continue
        print(f"[run] {backbone} {method} {bench}", flush=True)
        if run_cell(backbone, method, bench, data_path, cell, args.device, extra) != 0:
            failed.append(f"{backbone} {method} {bench}")
        write_tables(output_dir)
    write_tables(output_dir)
    print((output_dir / "leaderboard.md").read_text())
    print(f"written: {output_dir / 'leaderboard.md'} and {output_dir / 'leaderboard.csv'}")
    if failed:
        print("error: failed cells: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

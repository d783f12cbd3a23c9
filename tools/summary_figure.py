"""Top-1 error at the final epoch against the imbalance ratio, ours beside the paper's, for the CIFAR-10-LT rows.

    python tools/summary_figure.py results/cifar10_jpeg [more folders] [--out results/cifar10_jpeg/summary]

One line a row: the core rows (CE, CB-CE, ISDA w/o meta-learning, MetaSAug-CE) and every other row with runs at
two imbalances or more. Ours solid (the mean over seeds; where a cell has several runs, a bar from the lowest to
the highest), the paper's dashed in the same colour. The cells are tools/report.py's grid (``--format grid``):
the same runs, grouped the same way, so the figure and the grid cannot disagree. Writes OUT.png and OUT.pdf
(default: summary.png and summary.pdf in the first folder).
"""
import json
import sys
from pathlib import Path

import matplotlib
from matplotlib.lines import Line2D

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import OneLineParser  # noqa: E402
from figures import COLOURS, PAGE_WIDTH, STYLE, new_figure, save_figure  # noqa: E402
from methods import SHORT_NAMES  # noqa: E402
from tools import report  # noqa: E402

CORE_ROWS = ("CE", "CB-CE", "ISDA w/o meta-learning", "MetaSAug-CE")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # a row's marker as well as its colour: legible in grey
DODGE = 0.012  # decades between neighbouring rows' points, so that rows ending at one value stay visible


def drawn_rows(grid):
    """The grid's rows the figure draws, as (row, cells): the core rows, and the others with runs at two
    imbalances or more."""
    return [(row, cells) for row, cells in grid["rows"]
            if SHORT_NAMES[row] in CORE_ROWS or sum(c["n"] > 0 for c in cells) >= 2]


def draw_row(axes, columns, cells, style, shift):
    """One row: ours solid with min-max bars where a cell has several seeds, the paper's dashed; its points
    ``shift`` decades sideways."""
    ours = [(x * 10 ** shift, c) for x, c in zip(columns, cells) if c["n"]]
    if ours:
        means = [c["final"][0] for _, c in ours]
        spread = [[mean - min(c["seeds"].values()) for (_, c), mean in zip(ours, means)],
                  [max(c["seeds"].values()) - mean for (_, c), mean in zip(ours, means)]]
        axes.errorbar([x for x, _ in ours], means, yerr=spread, **style, linewidth=1.5, capsize=2.5, elinewidth=1)
    paper = [(x * 10 ** shift, c["paper"]) for x, c in zip(columns, cells) if c["paper"] is not None]
    if paper:
        axes.plot(*zip(*paper), **style, linestyle="--", markerfacecolor="white", linewidth=1.2)


def summary_figure(grid, data):
    """The figure of one grid (tools/report.py's ``results_grid``): a page wide, the legend at the right."""
    figure = new_figure(PAGE_WIDTH, 3.2)
    rows = drawn_rows(grid)
    styles = [dict(color=COLOURS[i % len(COLOURS)], marker=MARKERS[i % len(MARKERS)], markersize=4)
              for i in range(len(rows))]
    with matplotlib.rc_context(STYLE):
        axes = figure.add_subplot()
        for i, ((row, cells), style) in enumerate(zip(rows, styles)):
            draw_row(axes, grid["columns"], cells, style, DODGE * (i - (len(rows) - 1) / 2))
        axes.set_xscale("log")
        axes.set_xticks(grid["columns"], [str(c) for c in grid["columns"]])
        axes.minorticks_off()
        axes.set_xlabel("imbalance ratio (largest class / smallest class)")
        axes.set_ylabel("top-1 error (%), final epoch")
        axes.grid(color="0.9", linewidth=0.6)
        axes.set_title("CIFAR-10-LT, ResNet-32")
        handles = [Line2D([], [], **style, linewidth=1.5) for style in styles]
        labels = [SHORT_NAMES[row] for row, _ in rows]
        handles += [Line2D([], [], color="black", linewidth=1.5),
                    Line2D([], [], color="black", linestyle="--", linewidth=1.2)]
        labels += [f"ours, {data}:\nmean over seeds, bar from the\nlowest to the highest seed",
                   "the paper (Li et al., CVPR 2021),\noriginal CIFAR-10"]
        figure.legend(handles, labels, loc="outside right upper", frameon=False)
    return figure


def main(argv=None):
    parser = OneLineParser(prog="summary_figure.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dirs", nargs="+", metavar="runs_dir", help="folders searched for result.json files")
    parser.add_argument("--out", help="the figure's path without extension (default: RUNS_DIR/summary)")
    args = parser.parse_args(argv)
    missing = next((folder for folder in args.runs_dirs if not Path(folder).is_dir()), None)
    if missing is not None:
        print(f"summary_figure.py: error: {missing} is not a folder of runs; give the folder holding the runs' "
              f"result.json files", file=sys.stderr)
        return 2
    paper = json.loads(report.PAPER.read_text())
    try:
        grids = [grid for grid in report.results_grid(report.load_runs(args.runs_dirs), paper)
                 if grid["protocol"] is not None]
    except report.ReportError as error:
        print(f"summary_figure.py: error: {error}", file=sys.stderr)
        return 2
    if len(grids) != 1:
        problem = "no CIFAR-10-LT run" if not grids else f"runs of {len(grids)} protocols"
        print(f"summary_figure.py: error: {problem} under {', '.join(args.runs_dirs)}; give folders of one "
              f"protocol's CIFAR-10-LT runs (report.py --format grid shows each protocol)", file=sys.stderr)
        return 2
    stem = Path(args.out) if args.out else Path(args.runs_dirs[0]) / "summary"
    stem.parent.mkdir(parents=True, exist_ok=True)
    figure = summary_figure(grids[0], report.data_note(args.runs_dirs))
    print("wrote " + " ".join(map(str, save_figure(figure, stem))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

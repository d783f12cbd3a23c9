"""Per-class test accuracy of runs side by side, and each run's difference from the first: the figures behind
the per-class readings of docs/results.md ("gaining 2.7-11.2 points on the six rarest ...").

    python tools/per_class.py results/cifar10_jpeg/imb20/ce_seed1 results/cifar10_jpeg/imb20/metasaug_ce_seed1

Each run is a folder holding a result.json (or the file itself); the figures are its final epoch's (--best: its
best epoch's). Runs must share their classes; rows are in order of the first run's training images, and a class
whose training images differ between runs (another long-tail subset, e.g. --recipe cao2019's) shows each run's.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import OneLineParser  # noqa: E402


class CompareError(ValueError):
    """Runs that cannot be put side by side; the message says why."""


def load(path):
    path = Path(path)
    path = path / "result.json" if path.is_dir() else path
    if not path.is_file():
        raise CompareError(f"{path} is not a result.json or a run folder holding one")
    return path.parent.name, json.loads(path.read_text())


def table(runs, best=False):
    """Markdown lines: class, its training images (each run's, where they differ), each run's accuracy, each later
    run's Δ."""
    key = "best_per_class_accuracy" if best else "per_class_accuracy"
    (first_name, first), *_ = runs
    for name, result in runs:
        if result["class_names"] != first["class_names"]:
            raise CompareError(f"{name} and {first_name} have other classes; compare runs of one dataset")
    names = [name for name, _ in runs]
    out = ["| class | training images | " + " | ".join(names) + "".join(f" | Δ {n}" for n in names[1:]) + " |",
           "|---" * (2 + 2 * len(runs) - 1) + "|"]
    order = sorted(range(len(first["class_names"])), key=lambda c: -first["cls_num_list"][c])
    for c in order:
        accuracy = [result[key][c] for _, result in runs]
        images = " / ".join(dict.fromkeys(str(result["cls_num_list"][c]) for _, result in runs))
        out.append(f"| {first['class_names'][c]} | {images} | "
                   + " | ".join(f"{a:.1f}" for a in accuracy)
                   + "".join(f" | {a - accuracy[0]:+.1f}" for a in accuracy[1:]) + " |")
    errors = [result["best_top1_error" if best else "final_top1_error"] for _, result in runs]
    out.append(f"| top-1 error | | " + " | ".join(f"{e:.2f}" for e in errors)
               + "".join(f" | {e - errors[0]:+.2f}" for e in errors[1:]) + " |")
    return out


def main(argv=None):
    p = OneLineParser(prog="per_class.py", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (or their result.json), the first is the reference")
    p.add_argument("--best", action="store_true", help="the best epoch's figures instead of the final epoch's")
    args = p.parse_args(argv)
    try:
        print("\n".join(table([load(run) for run in args.runs], args.best)))
    except CompareError as error:
        print(f"per_class.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

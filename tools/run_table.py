"""Run every row of one of the paper's CIFAR tables that this repository can produce.

    python tools/run_table.py table1 [--seeds 1 2 3] [--imb 0.01 ...] [--device cuda] [--dry-run] [-- extra flags]

Prints what it will run and how long that takes at the throughput measured by bench/ (see
``tools/throughput.json``), then runs the trainings one after another. Results go to
``<out_root>/<table>/<run name>/`` (TensorBoard, ``result.json``, figures) with checkpoints in
``<out_root>/<table>/checkpoints``; ``python tools/report.py <out_root>/<table>`` summarises them.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_utils import CIFAR_NUM_CLASSES, get_img_num_per_cls  # noqa: E402

# table: dataset, imbalance factors, rows as (run name stem, script, flags)
CE, LDAM = "MetaSAug_CE_train.py", "MetaSAug_LDAM_train.py"
TABLES = {
    "table1": ("cifar10", (0.005, 0.01, 0.02, 0.05, 0.1), [
        ("ce", CE, ["--method", "plain", "--loss", "ce"]),
        ("cb_ce", CE, ["--method", "cb", "--loss", "ce"]),
        ("metasaug_ce", CE, ["--method", "metasaug", "--loss", "ce"]),
        ("focal", CE, ["--method", "plain", "--loss", "focal"]),
        ("cb_focal", CE, ["--method", "cb", "--loss", "focal"]),
        ("metasaug_focal", CE, ["--method", "metasaug", "--loss", "focal"]),
        ("ldam", LDAM, ["--method", "plain"]),
        ("ldam_drw", LDAM, ["--method", "drw"]),
        ("metasaug_ldam", LDAM, ["--method", "metasaug"]),
    ]),
    "table5": ("cifar10", (0.01, 0.02, 0.05), [
        ("metasaug_no_reweight", CE, ["--method", "metasaug_no_reweight", "--loss", "ce"]),
        ("isda", CE, ["--method", "isda", "--loss", "ce"]),
        ("metasaug_ce", CE, ["--method", "metasaug", "--loss", "ce"]),
    ]),
}
TABLES["table2"] = ("cifar100",) + TABLES["table1"][1:]
LAM = {"cifar10": 0.25, "cifar100": 0.75}  # the released default and the released CIFAR-100 command


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", choices=tuple(TABLES))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the paper averages 3 runs")
    p.add_argument("--imb", type=float, nargs="+", default=None, help="imbalance factors (default: the table's)")
    p.add_argument("--rows", nargs="+", default=None, help="run-name stems to keep (default: all rows)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data_root", default=None, help="default data/<dataset>")
    p.add_argument("--out_root", default="runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.epilog = "Flags after a bare -- are passed to every training."
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    args.extra = argv[split + 1:]
    return args


def flag_value(flags, name, default):
    return type(default)(flags[flags.index(name) + 1]) if name in flags else default


def estimated_seconds(dataset, imb, flags, throughput):
    """Training time from images per epoch and the measured images/s of each phase (no evaluation)."""
    classes = CIFAR_NUM_CLASSES[dataset]
    images = sum(get_img_num_per_cls(dataset, imb, flag_value(flags, "--num_meta", 10) * classes))
    batch = flag_value(flags, "--batch-size", 100)
    cap = flag_value(flags, "--max_train_batches", 0)
    if cap:
        images = min(images, cap * batch)
    epochs, meta_start = flag_value(flags, "--epochs", 200), flag_value(flags, "--meta_start", 160)
    augmented = flags[flags.index("--method") + 1] in ("metasaug", "metasaug_no_reweight", "isda")
    meta_epochs = max(0, epochs - meta_start) if augmented else 0
    return images * ((epochs - meta_epochs) / throughput["plain"] + meta_epochs / throughput["metasaug"])


def main(argv=None):
    args = parse_args(argv)
    dataset, default_imbs, rows = TABLES[args.table]
    extra = args.extra
    rows = [r for r in rows if args.rows is None or r[0] in args.rows]
    folder = Path(args.out_root) / args.table
    measured = json.loads((REPO / "tools" / "throughput.json").read_text())
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    throughput = measured.get(device)
    commands, total = [], 0.0
    for stem, script, flags in rows:
        for imb in args.imb or default_imbs:
            for seed in args.seeds:
                name = f"{args.table}_{dataset}_{stem}_imb{imb}_seed{seed}"
                run_flags = (flags + ["--dataset", dataset, "--num_classes", str(CIFAR_NUM_CLASSES[dataset]),
                                      "--imb_factor", str(imb), "--seed", str(seed), "--lam", str(LAM[dataset]),
                                      "--device", args.device, "--data_root", args.data_root or f"data/{dataset}",
                                      "--save_name", name, "--out_dir", str(folder / name),
                                      "--checkpoint_dir", str(folder / "checkpoints")] + extra)
                commands.append([sys.executable, str(REPO / script)] + run_flags)
                if throughput:
                    total += estimated_seconds(dataset, imb, run_flags, throughput)
    for command in commands:
        print(" ".join(command[1:]))
    estimate = (f"about {total / 3600:.1f} h of training at {throughput['plain']:.0f} (plain) and "
                f"{throughput['metasaug']:.0f} (MetaSAug) images/s measured on {throughput['machine']}"
                if throughput else f"no throughput measured for device '{device}' yet")
    print(f"{len(commands)} runs, {estimate}, one after another; results in {folder}", flush=True)
    if args.dry_run:
        return 0
    for command in commands:
        code = subprocess.call(command)
        if code != 0:
            print(f"run failed with exit code {code}: {' '.join(command[1:])}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""TensorBoard logs of committed runs, written from their result.json (results/ keeps no event files).

    python tools/tensorboard_logs.py results/cifar10_jpeg/imb100/metasaug_ce_seed1 [more runs or trees] --out runs/tb
    tensorboard --logdir runs/tb

Each run folder given, or each folder holding a result.json under a tree given, gets a log under --out named by
its path from the given folder's parent (results/cifar10_jpeg -> runs/tb/cifar10_jpeg/imb100/ce_seed1/). A log
holds every scalar the training run logged (trainer.epoch_scalars of each epoch of the run's ``history``: loss,
accuracy, learning rate, images/s, test top-1 and Many/Medium/Few accuracy, the meta step's sizes, the rarest
class's covariance spectrum) at the same step, the 1-based epoch, and the confusion-matrix image of every epoch
whose matrix result.json kept (the last evaluated one). Its wall-clock axis is the run's own training and
evaluation time from epoch 1, as result.json recorded it.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import OneLineParser  # noqa: E402
from figures import confusion_figure, figure_pixels  # noqa: E402
from trainer import epoch_scalars  # noqa: E402


class LogError(ValueError):
    """What was given cannot be written as asked; the message says what to change."""


def run_folders(given):
    """(run folder, its log's path under --out) for every run under the folders ``given``."""
    pairs = []
    for folder in map(Path, given):
        if not folder.is_dir():
            raise LogError(f"{folder} is not a folder; give run folders (holding result.json) or trees of them")
        runs = sorted(path.parent for path in folder.rglob("result.json"))
        if not runs:
            raise LogError(f"{folder} holds no result.json; give run folders or trees of them")
        pairs += [(run, Path(folder.resolve().name) / run.relative_to(folder)) for run in runs]
    logs = [log for _, log in pairs]
    twice = next((log for log in logs if logs.count(log) > 1), None)
    if twice is not None:
        raise LogError(f"two runs would share the log {twice}; give their common parent folder instead")
    return pairs


def check_free(out, pairs):
    """Refuse to add a second set of events to a log TensorBoard would then show twice."""
    taken = next((out / log for _, log in pairs if list((out / log).glob("events.out.tfevents.*"))), None)
    if taken is not None:
        raise LogError(f"{taken} already holds TensorBoard events; remove it or choose another --out")


def write_log(run, logdir):
    """One run's scalars and confusion matrices, from its result.json, as TensorBoard events in ``logdir``."""
    from torch.utils.tensorboard import SummaryWriter
    result = json.loads((run / "result.json").read_text())
    rarest = min(range(len(result["cls_num_list"])), key=result["cls_num_list"].__getitem__)
    writer = SummaryWriter(str(logdir))
    seconds = 0.0
    for entry in result["history"]:
        seconds += entry.get("train_time_s", 0.0) + entry.get("eval_time_s", 0.0)
        for tag, value in epoch_scalars(entry, rarest):
            writer.add_scalar(tag, value, entry["epoch"], walltime=seconds)
        if entry.get("confusion_matrix") is not None:
            figure = confusion_figure(entry["confusion_matrix"], result["class_names"],
                                      f"confusion matrix (%), epoch {entry['epoch']}")
            writer.add_image("figures/confusion_matrix", figure_pixels(figure), entry["epoch"], walltime=seconds,
                             dataformats="HWC")
    writer.close()


def main(argv=None):
    parser = OneLineParser(prog="tensorboard_logs.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (holding result.json) or trees of them")
    parser.add_argument("--out", default="runs/tb", help="the folder `tensorboard --logdir` reads (default runs/tb)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        pairs = run_folders(args.runs)
        check_free(out, pairs)
    except LogError as error:
        print(f"tensorboard_logs.py: error: {error}", file=sys.stderr)
        return 2
    for run, log in pairs:
        write_log(run, out / log)
    print(f"wrote the TensorBoard logs of {len(pairs)} run{'s' * (len(pairs) != 1)} under {out}: "
          f"tensorboard --logdir {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

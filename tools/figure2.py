"""The paper's Figure 2 from a trained network: the rarest class's covariance spectrum (top-5 singular values,
divided by the largest), (a) estimated on balanced CIFAR-10 vs on the long-tailed training set, (b) the
long-tailed estimate vs the covariance MetaSAug's update uses after its meta step.

    python tools/figure2.py NETWORK --data_root data/cifar10 --out DIR [--batches 8] [--meta_lr 0.1 5000]
                            [--runs RESULTS_DIR ...]
    python tools/figure2.py --study results/cifar10_jpeg/imb100/study --data_root data/cifar10 [--batches 8]
    python tools/figure2.py --plot results/cifar10_jpeg/imb200/figure2/figure2.json

NETWORK is what --init_from reads (a first phase: results/.../first_phase_seed1/phase1.pth), a training
checkpoint, or a results folder (model.pth, result.json). The paper does not say which network its figure
used; this one says it (the checkpoint and its epoch are in figure2.json).

(a) The features of every training image (not augmented, the network in eval mode) give each class's exact
covariance: over the whole balanced training set (5,000 images a class) and over the long-tailed subset the
run trained on (24 images of the rarest class at imbalance 200). (b) From the long-tailed estimate,
MetaSAug's step is taken (float64, as tools/meta_step_size.py) on ``--batches`` training batches that hold
the rarest class (its meta-gradient is zero in the others), with the run's class weights, lam, lookahead step
and each ``--meta_lr``; the covariance each step learned is averaged over the batches, and its spectrum drawn
beside the estimate's. ``--runs``: second phases branched from NETWORK (results folders) add to (b) their own
final estimate and the covariance their own meta step learns from it with their final network. Writes
DIR/figure2.json (the numbers, and in ``series`` what each bar is: which network, at which epoch, which
covariance) and the figure from it, DIR/figure2.png and DIR/figure2.pdf.

``--plot JSON``: redraw figure2.png and figure2.pdf beside a figure2.json from its numbers alone (no data, no
network, no GPU), e.g. after a change of the figure's layout.

``--study DIR``: panel (b) for every arm of the meta-step study (each run folder under DIR, as
tools/export_run.py wrote it): the rarest class's spectrum of the arm's final estimate and, for an arm with a
meta step, of the covariance its own step (its meta_lr and lookahead step) learns from that estimate with its
final network, as above; and every class's smallest and largest eigenvalue of the final estimate (below zero:
no longer a covariance, which ``--carry_cv`` allows; the spectra are singular values, the eigenvalues' sizes).
Writes DIR/spectra.json, which tools/report.py's study table reads.
"""
import json
import sys
from pathlib import Path

import matplotlib
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import CheckpointError  # noqa: E402
from cli import OneLineParser, git_commit  # noqa: E402
from data_utils import DataError, augment, batch_generator, load_split, normalize  # noqa: E402
from data_utils import sample_meta_batch  # noqa: E402
from figures import COLOURS, PAGE_WIDTH, STYLE, draw_spectrum, new_figure, save_figure  # noqa: E402
from figures import top_singular_values  # noqa: E402
from loss import EstimatorCV, MetaSAugLoss  # noqa: E402
from methods import METHODS, row_name, short_name  # noqa: E402
from meta_layers import MetaSAug, augmentation_ratio  # noqa: E402
from resnet import ResNet32  # noqa: E402
from tools.meta_step_size import load_run, run_dataset  # noqa: E402
from trainer import learning_rate  # noqa: E402


def rarest_class(data):
    """The index of the class with the fewest long-tailed training images."""
    return min(range(len(data.cls_num_list)), key=data.cls_num_list.__getitem__)


def float64_network(checkpoint, data):
    """The checkpoint's ResNet-32 in float64, and ``rarest_class(data)``."""
    model = ResNet32(len(data.cls_num_list)).double()
    model.load_state_dict(checkpoint["state_dict"])
    return model, rarest_class(data)


def class_covariances(model, images, labels, num_classes, batch=500):
    """Each class's exact (biased) feature covariance over ``images``: the network in eval mode, no augmentation."""
    estimator = EstimatorCV(model.feature_dim, num_classes).double()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            features = model(normalize(images[start:start + batch]).double())[0]
            estimator.update(features, labels[start:start + batch])
    return estimator


def learned_covariance(model, checkpoint, data, estimate, rarest, meta_lr, batches, seed=0):
    """The rarest class's covariance after MetaSAug's step from ``estimate``, averaged over ``batches``
    training batches that hold the class; and the mean relative shift ||learned - estimate|| / ||estimate||."""
    config = checkpoint["config"]
    criterion = MetaSAugLoss(model.feature_dim, len(data.cls_num_list), data.cls_num_list, base="ce",
                             beta=config["beta"] or None).double()
    meta = MetaSAug(model, criterion, meta_lr=meta_lr)
    lookahead_lr = config.get("lookahead_lr") or learning_rate(config["meta_start"], config["lr"],
                                                               config["lr_milestones"])
    ratio = augmentation_ratio(config["lam"], config["meta_start"], config["epochs"])
    model.train()
    learned, shifts, draw = [], [], 0
    while len(learned) < batches:
        generator = batch_generator(seed, "figure2", draw)
        draw += 1
        index = torch.randint(len(data.train_labels), (config["batch_size"],), generator=generator)
        if not (data.train_labels[index] == rarest).any():
            continue
        criterion.estimator.load_state_dict(estimate.state_dict())
        meta_index = sample_meta_batch(len(data.meta_labels), config["batch_size"], generator)
        x = augment(data.train_images[index], generator, dtype=torch.float64)
        x_meta = augment(data.meta_images[meta_index], generator, dtype=torch.float64)
        meta.step(x, data.train_labels[index], x_meta, data.meta_labels[meta_index], lr=lookahead_lr, ratio=ratio)
        covariance = meta.learned_covariance[rarest]
        learned.append(covariance)
        shifts.append(((covariance - estimate.covariance[rarest]).norm() / estimate.covariance[rarest].norm()).item())
    return torch.stack(learned).mean(0), sum(shifts) / len(shifts), lookahead_lr


def shift_text(shift):
    """A relative shift as a reader takes it in: 0.33, 6.6e-6."""
    if shift >= 0.01:
        return f"{shift:.2f}"
    mantissa, exponent = f"{shift:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def legend(series, shift=None):
    """A bar's legend in words, from figure2.json's ``series`` entry: which network, at which epoch, which
    covariance, and for a learned one its meta_lr and how far it moved from the estimate."""
    text = f"{series['network']}, epoch {series['epoch']}: {series['covariance']}"
    if "images" in series:
        text += f" ({series['images']:,} image{'s' * (series['images'] != 1)})"
    if "meta_lr" in series:
        text += f", meta_lr {series['meta_lr']:g}"
    return text + (f" (shift {shift_text(shift)})" if shift is not None else "")


def panel_series(record, panel):
    """One panel's bars keyed by their legend words."""
    return {legend(record["series"][key], record["relative_shift"].get(key)): values
            for key, values in record[panel].items()}


def draw(record, stem):
    """figure2.png and figure2.pdf from figure2.json's numbers: the two panels side by side, a page wide, under
    them one legend, a line a covariance; a covariance in both panels has one colour and one line."""
    name = record["rarest_class"]
    panels = {key: panel_series(record, key) for key in ("panel_a", "panel_b")}
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    colour = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}
    figure = new_figure(PAGE_WIDTH, 2.6 + 0.16 * len(labels))
    titles = (f"(a) '{name}': balanced vs long-tailed estimate", f"(b) '{name}': estimated vs learned by a meta step")
    with matplotlib.rc_context(STYLE):
        axes = figure.subplots(1, 2, width_ratios=[1, 1.75])
        for ax, (key, series), title in zip(axes, panels.items(), titles):
            draw_spectrum(ax, series, title, [colour[label] for label in series])
        handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
        figure.legend([handles[label] for label in labels], labels, loc="outside lower left", frameon=False)
    return save_figure(figure, stem)


def network_name(checkpoint):
    """The network the figure starts from, in words: a first phase (what every second phase branches from), or
    the row of the run it is the end of."""
    config = checkpoint["config"]
    if checkpoint["epoch"] == config["meta_start"]:
        return "first phase"
    return short_name(row_name(config["method"], checkpoint["base_loss"], config.get("recipe", "released")))


def series_of_network(name, epoch, balanced_images, rarest_images, meta_lrs):
    """``series`` entries of the bars drawn from the network the figure starts from, ``name`` at ``epoch``."""
    network = dict(network=name, epoch=epoch)
    long_tailed = dict(network, covariance="long-tailed estimate", images=rarest_images)
    series = {"balanced CIFAR-10": dict(network, covariance="balanced CIFAR-10 estimate", images=balanced_images),
              "long-tailed": long_tailed, "estimated (no meta-learning)": long_tailed}
    for meta_lr in meta_lrs:
        series[f"learned, meta_lr {meta_lr:g}"] = dict(
            network, covariance="learned by a meta step from the long-tailed estimate", meta_lr=meta_lr)
    return series


def series_of_run(run, entry):
    """``series`` entries of a second phase's bars (``run_spectra``'s ``entry``): its row, its final epoch."""
    name = Path(run).name
    network = dict(network=entry["row"], epoch=entry["epoch"], run=str(run))
    series = {f"{name}: estimated": dict(network, covariance="estimated")}
    if "learned" in entry:
        series[f"{name}: learned, meta_lr {entry['meta_lr']:g}"] = dict(
            network, covariance="learned by its meta step from its estimate", meta_lr=entry["meta_lr"])
    return series


def figure2(network, data_root, out, batches, meta_lrs, runs=()):
    checkpoint = load_run(network, criterion=False)
    config = checkpoint["config"]
    data = run_dataset(config, data_root)
    model, rarest = float64_network(checkpoint, data)
    num_classes = len(data.cls_num_list)
    images, labels, _ = load_split(data_root, "train", config["dataset"], workers=4)
    balanced = class_covariances(model, images, labels, num_classes)
    long_tailed = class_covariances(model, data.train_images, data.train_labels, num_classes)
    name = data.class_names[rarest]
    panel_a = {"balanced CIFAR-10": top_singular_values(balanced.covariance[rarest]),
               "long-tailed": top_singular_values(long_tailed.covariance[rarest])}
    panel_b, shifts = {"estimated (no meta-learning)": panel_a["long-tailed"]}, {}
    balanced_images = int((labels == rarest).sum())
    series = series_of_network(network_name(checkpoint), checkpoint["epoch"], balanced_images,
                               data.cls_num_list[rarest], meta_lrs)
    for meta_lr in meta_lrs:
        covariance, shift, lookahead_lr = learned_covariance(model, checkpoint, data, long_tailed, rarest, meta_lr,
                                                             batches)
        label = f"learned, meta_lr {meta_lr:g}"
        panel_b[label], shifts[label] = top_singular_values(covariance), shift
    for run in runs:  # second phases branched from the network: their own estimate, and what their step learned
        entry, run_name = run_spectra(run, data, subset_key(config), batches), Path(run).name
        series.update(series_of_run(run, entry))
        panel_b[f"{run_name}: estimated"] = entry["estimated"]
        if "learned" in entry:
            label = f"{run_name}: learned, meta_lr {entry['meta_lr']:g}"
            panel_b[label], shifts[label] = entry["learned"], entry["relative_shift"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(network=str(network), network_epoch=checkpoint["epoch"], runs=[str(run) for run in runs],
                  dataset=config["dataset"],
                  imb_factor=config["imb_factor"], rarest_class=name, rarest_class_images=data.cls_num_list[rarest],
                  balanced_images=balanced_images,
                  panel_a=panel_a, panel_b=panel_b, series=series, relative_shift=shifts, batches=batches,
                  lookahead_lr=lookahead_lr, lam=config["lam"],
                  ratio=augmentation_ratio(config["lam"], config["meta_start"], config["epochs"]),
                  command=" ".join(["python", "tools/figure2.py", *sys.argv[1:]]), commit=git_commit())
    (out / "figure2.json").write_text(json.dumps(record, indent=1) + "\n")
    draw(record, out / "figure2")
    return record


def plot(json_path):
    """figure2.png and figure2.pdf beside ``json_path``, drawn from its numbers alone."""
    json_path = Path(json_path)
    try:
        record = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path} is not JSON ({error}); give a figure2.json this tool wrote") from None
    if not isinstance(record, dict):
        raise ValueError(f"{json_path} is not a figure2.json; give one this tool wrote")
    missing = [key for key in ("rarest_class", "panel_a", "panel_b", "series", "relative_shift") if key not in record]
    unnamed = [key for panel in ("panel_a", "panel_b") for key in record.get(panel, {})
               if key not in record.get("series", {})]
    if missing or unnamed:
        raise ValueError(f"{json_path} lacks {', '.join(missing + unnamed)}; rewrite it with the command in its "
                         f"'command' field")
    return draw(record, json_path.with_suffix(""))


def subset_key(config):
    """What decides a run's long-tailed training and meta sets."""
    return tuple(config.get(key, "released") for key in ("dataset", "num_meta", "imb_factor", "imb_profile",
                                                          "num_classes", "subset"))


def run_spectra(run_dir, data, subset, batches):
    """A finished second phase's rarest-class spectrum: its final estimate and, with a meta step, what the run's
    own step (its meta_lr and lookahead step) learns from that estimate with its final network. ``data`` is the
    dataset of ``subset`` (a ``subset_key``), which the run must have trained on."""
    checkpoint = load_run(run_dir)
    config = checkpoint["config"]
    if subset_key(config) != subset:
        raise CheckpointError(f"{run_dir} trained on another long-tailed subset ({subset_key(config)} vs "
                              f"{subset}); give runs of one subset")
    model, rarest = float64_network(checkpoint, data)
    estimate = EstimatorCV(model.feature_dim, len(data.cls_num_list)).double()
    estimate.load_state_dict({key.split(".", 1)[1]: value for key, value in checkpoint["criterion"].items()
                              if key.startswith("estimator.")})
    eigenvalues = torch.linalg.eigvalsh(estimate.covariance)
    entry = dict(epoch=checkpoint["epoch"], row=short_name(row_name(config["method"], checkpoint["base_loss"],
                                                                   config.get("recipe", "released"))),
                 estimated=top_singular_values(estimate.covariance[rarest]),
                 smallest_eigenvalue=eigenvalues[:, 0].tolist(), largest_eigenvalue=eigenvalues[:, -1].tolist())
    if METHODS[config["method"]].meta_step:
        covariance, shift, lookahead_lr = learned_covariance(model, checkpoint, data, estimate, rarest,
                                                             config["meta_lr"], batches)
        entry.update(learned=top_singular_values(covariance), meta_lr=config["meta_lr"], relative_shift=shift,
                     lookahead_lr=lookahead_lr)
    return entry


def study_spectra(study_dir, data_root, batches):
    """``run_spectra`` of every run under ``study_dir`` (one subset: the study's arms share a first phase)."""
    results = sorted(Path(study_dir).glob("*/result.json"))
    if not results:
        raise CheckpointError(f"{study_dir} holds no run folder with a result.json")
    config = json.loads(results[0].read_text())["config"]
    data = run_dataset(config, data_root)
    rarest = rarest_class(data)
    runs = {path.parent.name: run_spectra(path.parent, data, subset_key(config), batches) for path in results}
    record = dict(rarest_class=data.class_names[rarest], rarest_class_images=data.cls_num_list[rarest],
                  batches=batches, runs=runs,
                  command=" ".join(["python", "tools/figure2.py", *sys.argv[1:]]), commit=git_commit())
    (Path(study_dir) / "spectra.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv=None):
    parser = OneLineParser(prog="figure2.py", description=__doc__.splitlines()[0])
    parser.add_argument("network", nargs="?", help="a first phase (phase1.pth), a training checkpoint or a results "
                        "folder")
    parser.add_argument("--data_root", help="the CIFAR-10 images (train/ and test/); not with --plot")
    parser.add_argument("--out", help="folder for figure2.json, figure2.png and figure2.pdf")
    parser.add_argument("--study", help="instead of NETWORK: the meta-step study's folder; writes its spectra.json")
    parser.add_argument("--plot", metavar="JSON", help="instead of NETWORK: redraw figure2.png and figure2.pdf beside "
                        "this figure2.json from its numbers alone")
    parser.add_argument("--runs", nargs="+", default=[],
                        help="results folders of second phases branched from NETWORK: panel (b) adds each one's "
                        "final estimate and what its own meta step learns from it")
    parser.add_argument("--batches", type=int, default=8, help="training batches holding the rarest class")
    parser.add_argument("--meta_lr", type=float, nargs="+", default=[0.1, 5000.0],
                        help="meta step sizes for panel (b): the released 0.1, and the study's largest")
    args = parser.parse_args(argv)
    modes = sum(mode is not None for mode in (args.network, args.study, args.plot))
    if modes != 1 or (args.network is not None) != (args.out is not None):
        parser.error("give NETWORK with --out, or --study DIR, or --plot JSON")
    if (args.plot is None) == (args.data_root is None):
        parser.error("--plot needs no --data_root; NETWORK and --study need one")
    try:
        if args.plot:
            print("wrote " + " ".join(map(str, plot(args.plot))))
            return 0
        if args.study:
            print(json.dumps(study_spectra(args.study, args.data_root, args.batches)["runs"], indent=1))
            return 0
        record = figure2(args.network, args.data_root, args.out, args.batches, args.meta_lr, args.runs)
    except (CheckpointError, DataError, OSError, ValueError) as error:
        print(f"figure2.py: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: record[k] for k in ("rarest_class", "panel_a", "panel_b", "relative_shift")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

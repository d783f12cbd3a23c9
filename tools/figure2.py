"""The paper's Figure 2 from a trained network: the rarest class's covariance spectrum (top-5 singular values,
divided by the largest), (a) estimated on balanced CIFAR-10 vs on the long-tailed training set, (b) the
long-tailed estimate vs the covariance MetaSAug's update uses after its meta step.

    python tools/figure2.py NETWORK --data_root data/cifar10 --out DIR [--batches 8] [--meta_lr 0.1 5000]
                            [--runs RESULTS_DIR ...]
    python tools/figure2.py --study results/cifar10_jpeg/imb100/study --data_root data/cifar10 [--batches 8]

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
DIR/figure2.png and DIR/figure2.json.

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

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import CheckpointError  # noqa: E402
from cli import OneLineParser, git_commit  # noqa: E402
from data_utils import DataError, augment, batch_generator, load_split, normalize  # noqa: E402
from data_utils import sample_meta_batch  # noqa: E402
from figures import save_spectrum_png, top_singular_values  # noqa: E402
from loss import EstimatorCV, MetaSAugLoss  # noqa: E402
from methods import METHODS  # noqa: E402
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


def draw(record, path):
    """figure2.png from figure2.json's numbers: the two panels side by side."""
    name, counts = record["rarest_class"], f"{record['rarest_class_images']} vs {record['balanced_images']} images"
    panels = [save_spectrum_png(record["panel_a"], None, f"(a) '{name}': balanced vs long-tailed ({counts})"),
              save_spectrum_png(record["panel_b"], None, f"(b) '{name}': estimated vs after the meta step")]
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, canvas.height - panel.height))  # the x axes on one line
        x += panel.width
    canvas.save(path)


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
    for meta_lr in meta_lrs:
        covariance, shift, lookahead_lr = learned_covariance(model, checkpoint, data, long_tailed, rarest, meta_lr,
                                                             batches)
        label = f"learned, meta_lr {meta_lr:g}"
        panel_b[label], shifts[label] = top_singular_values(covariance), shift
    for run in runs:  # second phases branched from the network: their own estimate, and what their step learned
        entry, run_name = run_spectra(run, data, subset_key(config), batches), Path(run).name
        panel_b[f"{run_name}: estimated"] = entry["estimated"]
        if "learned" in entry:
            label = f"{run_name}: learned, meta_lr {entry['meta_lr']:g}"
            panel_b[label], shifts[label] = entry["learned"], entry["relative_shift"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(network=str(network), network_epoch=checkpoint["epoch"], runs=[str(run) for run in runs],
                  dataset=config["dataset"],
                  imb_factor=config["imb_factor"], rarest_class=name, rarest_class_images=data.cls_num_list[rarest],
                  balanced_images=int((labels == rarest).sum()),
                  panel_a=panel_a, panel_b=panel_b, relative_shift=shifts, batches=batches,
                  lookahead_lr=lookahead_lr, lam=config["lam"],
                  ratio=augmentation_ratio(config["lam"], config["meta_start"], config["epochs"]),
                  command=" ".join(["python", "tools/figure2.py", *sys.argv[1:]]), commit=git_commit())
    (out / "figure2.json").write_text(json.dumps(record, indent=1) + "\n")
    draw(record, out / "figure2.png")
    return record


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
    entry = dict(epoch=checkpoint["epoch"], estimated=top_singular_values(estimate.covariance[rarest]),
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
    parser.add_argument("--data_root", required=True, help="the CIFAR-10 images (train/ and test/)")
    parser.add_argument("--out", help="folder for figure2.png and figure2.json")
    parser.add_argument("--study", help="instead of NETWORK: the meta-step study's folder; writes its spectra.json")
    parser.add_argument("--runs", nargs="+", default=[],
                        help="results folders of second phases branched from NETWORK: panel (b) adds each one's "
                        "final estimate and what its own meta step learns from it")
    parser.add_argument("--batches", type=int, default=8, help="training batches holding the rarest class")
    parser.add_argument("--meta_lr", type=float, nargs="+", default=[0.1, 5000.0],
                        help="meta step sizes for panel (b): the released 0.1, and the study's largest")
    args = parser.parse_args(argv)
    if (args.study is None) == (args.network is None) or (args.network is not None) != (args.out is not None):
        parser.error("give NETWORK with --out, or --study DIR")
    try:
        if args.study:
            print(json.dumps(study_spectra(args.study, args.data_root, args.batches)["runs"], indent=1))
            return 0
        record = figure2(args.network, args.data_root, args.out, args.batches, args.meta_lr, args.runs)
    except (CheckpointError, DataError, OSError) as error:
        print(f"figure2.py: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: record[k] for k in ("rarest_class", "panel_a", "panel_b", "relative_shift")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

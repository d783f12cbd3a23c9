"""How far MetaSAug's meta step moves the covariance away from ISDA's estimate, on a trained checkpoint.

    python tools/meta_step_size.py CHECKPOINT_OR_RESULT --data_root data/cifar10 [--batches 20] [--lookahead_lr 0.001 0.1]

CHECKPOINT_OR_RESULT is a training checkpoint (<save_name>_ckpt.pth.tar) or a folder tools/export_run.py wrote
(results/...: model.pth, criterion.pth and result.json).

For a few training batches (augmented as in training) and balanced meta batches, takes MetaSAug's step at each
lookahead step size asked for, each from the checkpoint's estimator (the network is not updated), and prints per
step size what the training runs log per epoch (meta_layers.MetaStepMonitor, in float64): the relative change
||Sigma_learned - Sigma_ISDA|| / ||Sigma_ISDA|| (Frobenius norm) of every class's covariance, averaged over the
batches that hold the class (an absent class's meta-gradient is zero: '-' if no batch held it), the same change
relative to the estimator's own update by the batch, and the relative change of the augmented training loss.
Why: the meta-gradient is
-lr * d/dSigma <grad_theta L, v>, so it scales with the lookahead step, which the released schedule sets to
the learning rate (0.001 from epoch 161 on): if the learned covariance stays within a hair of ISDA's,
MetaSAug trains as ISDA does.
"""
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from cli import OneLineParser  # noqa: E402
from data_utils import DataError, augment, batch_generator, build_dataset, sample_meta_batch  # noqa: E402
from loss import MetaSAugLoss  # noqa: E402
from meta_layers import MetaSAug, MetaStepMonitor, augmentation_ratio  # noqa: E402
from resnet import ResNet32  # noqa: E402


def meta_step_figures(checkpoint, data, lookahead_lr, batches, seed=0):
    """MetaStepMonitor's summary of ``batches`` meta steps, each from the checkpoint's estimator."""
    config = checkpoint["config"]
    num_classes = len(data.cls_num_list)
    model = ResNet32(num_classes).double()  # float64: a shift of 1e-7 is float32's rounding of the covariance
    model.load_state_dict(checkpoint["state_dict"])
    model.train()
    criterion = MetaSAugLoss(model.feature_dim, num_classes, data.cls_num_list, base=checkpoint["base_loss"],
                             beta=config["beta"] or None, max_m=config["max_m"], gamma=config["gamma"])
    criterion.double().load_state_dict(checkpoint["criterion"])
    estimate = copy.deepcopy(criterion.estimator.state_dict())
    monitor = MetaStepMonitor()
    meta = MetaSAug(model, criterion, meta_lr=config["meta_lr"], monitor=monitor)
    ratio = augmentation_ratio(config["lam"], checkpoint["epoch"] - 1, config["epochs"])
    for batch in range(batches):
        criterion.estimator.load_state_dict(estimate)
        generator = batch_generator(seed, "diagnostic", batch)
        index = torch.randint(len(data.train_labels), (config["batch_size"],), generator=generator)
        meta_index = sample_meta_batch(len(data.meta_labels), config["batch_size"], generator)
        x, y = augment(data.train_images[index], generator, dtype=torch.float64), data.train_labels[index]
        x_meta = augment(data.meta_images[meta_index], generator, dtype=torch.float64)
        y_meta = data.meta_labels[meta_index]
        meta.step(x, y, x_meta, y_meta, lr=lookahead_lr, ratio=ratio)
    return monitor.summary()


def per_class_text(values):
    return " ".join("-" if value is None else f"{value:.1e}" for value in values)


def load_run(path, criterion=True):
    """A training checkpoint (with the loss module's state, unless ``criterion`` is False: a first phase's
    phase1.pth has none), or the same fields gathered from an exported results folder."""
    path = Path(path)
    if not path.is_dir():
        checkpoint = load_checkpoint(path)
        needed = ("config", "state_dict") + ("criterion",) * criterion
        if any(key not in checkpoint for key in needed):
            raise CheckpointError(f"{path} is not a training checkpoint of this repository"
                                  + (" with the loss module's state" if criterion else ""))
        return checkpoint
    if not (path / "criterion.pth").is_file() or not (path / "result.json").is_file():
        raise CheckpointError(f"{path} lacks criterion.pth or result.json; export the run with tools/export_run.py")
    result = json.loads((path / "result.json").read_text())
    return {"state_dict": load_checkpoint(path / "model.pth"), "criterion": load_checkpoint(path / "criterion.pth"),
            "config": result["config"], "base_loss": result["base_loss"], "epoch": result["final_epoch"]}


def run_dataset(config, data_root):
    """The long-tailed training set, meta set and test set a run's config names, built from ``data_root``."""
    return build_dataset(data_root, config["dataset"], config["num_meta"], config["imb_factor"],
                         config["imb_profile"], config["num_classes"], False, 4, config.get("subset", "released"))


def main(argv=None):
    parser = OneLineParser(prog="meta_step_size.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a CIFAR training checkpoint of this repository "
                        "(<save_name>_ckpt.pth.tar) or a results folder written by tools/export_run.py")
    parser.add_argument("--data_root", required=True, help="the run's training images")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--lookahead_lr", type=float, nargs="+", default=[0.001, 0.1],
                        help="lookahead step sizes (the released schedule: 0.1 before epoch 160, 0.001 after)")
    args = parser.parse_args(argv)
    try:
        checkpoint = load_run(args.checkpoint)
        config = checkpoint["config"]
        data = run_dataset(config, args.data_root)
    except (CheckpointError, DataError, OSError) as error:
        print(f"meta_step_size.py: error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    print(f"{args.checkpoint}: epoch {checkpoint['epoch']}, meta_lr {config['meta_lr']}, {args.batches} batches; "
          f"relative change of each class's covariance by the meta step (class 0 = most images)")
    for lr in args.lookahead_lr:
        figures = meta_step_figures(checkpoint, data, lr, args.batches)
        print(f"lookahead lr {lr:g}: covariance {per_class_text(figures['meta_step_shift_per_class'])} | "
              f"vs the estimator's update {per_class_text(figures['meta_step_shift_vs_estimator_per_class'])} | "
              f"training loss {figures['meta_step_relative_loss_change']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The flags of the CIFAR training scripts: parsing, recipes, checks, and what a checkpoint's flags must share
with a run that resumes or branches from it."""
from dataclasses import dataclass, field
from pathlib import Path

from checkpoint import CheckpointError
from cli import (HelpFormatter, OneLineParser, UsageError, add_device_flag, add_run_file_flags, flag_clashes, require,
                 require_rates, str2bool, training_config)
from data_utils import CAO2019_MEAN, CAO2019_STD, CIFAR_MEAN, CIFAR_NUM_CLASSES, CIFAR_STD, SUBSETS, check_imb_factor
from loss import BASE_LOSSES
from meta_layers import LOOKAHEADS, META_GRADIENTS
from methods import METHODS, meta_stepping, method_help


# What a checkpoint's flags must share with the run that continues it (--resume: "run") or that branches from
# it (--init_from: "first phase", the flags the epochs before --meta_start depend on; with first_phase_loss
# they decide whether a run may branch from another's first phase), or both. Every other flag is FREE to
# differ: paths, devices, logging, the meta-gradient's route. tests/test_methods.py checks that each flag of
# the parser is in one of the two.
MUST_MATCH = {
    **dict.fromkeys(("dataset", "num_classes", "num_meta", "imb_factor", "imb_profile", "seed", "batch_size",
                     "epochs", "lr", "lr_milestones", "momentum", "nesterov", "weight_decay", "meta_start",
                     "channels_last", "amp", "max_train_batches", "max_test_batches", "recipe", "subset"),
                  "both"),
    # eval_every changes what is evaluated, never what trains (tests/test_run_table.py: bit-identical weights), so
    # a first phase evaluated every fifth epoch serves a branch evaluated every epoch.
    **dict.fromkeys(("lam", "meta_lr", "loss", "gamma", "max_m", "beta", "lookahead", "method", "lookahead_lr",
                     "carry_cv", "branch_seed", "eval_every"), "run"),
    **dict.fromkeys(("compile", "test_batch_size"), "first phase"),
}
FREE = ("no_cuda", "split", "print_freq", "gpu", "save_name", "idx", "data_root", "download", "device", "workers",
        "checkpoint_dir", "out_dir", "resume", "overwrite", "stop_after", "init_from", "first_phase_only",
        "meta_gradient", "help")
RESUME_MUST_MATCH = tuple(name for name, scope in MUST_MATCH.items() if scope != "first phase")
PHASE1_MUST_MATCH = tuple(name for name, scope in MUST_MATCH.items() if scope != "run")


def first_phase_loss(method, base, beta, max_m, gamma):
    """What the epochs before --meta_start minimise, in words: runs with equal text compute the same first phase.

    An augmented method trains plain cross-entropy there whatever its base loss (as released); the others
    their base loss (BASE_LOSSES' words), class-balanced if the method weights every epoch.
    """
    method = METHODS[method]
    if method.augmented:
        return "cross-entropy"
    text = BASE_LOSSES[base].describe(gamma=gamma, max_m=max_m)
    return f"class-balanced (beta {beta}) {text}" if method.weights == "class-balanced" and beta else text


@dataclass(frozen=True)
class Recipe:
    """A training recipe: the flag defaults it sets (a flag given on the command line still wins) and
    what it fixes beyond flags."""
    schedule: str                     # in words, as a results table states it ({lam}: the dataset's default)
    flags: dict = field(default_factory=dict)
    normed_classifier: bool = False   # resnet.NormedLinear instead of a linear layer
    logit_scale: float = 1.0          # logits x s before the softmax (loss.classification_loss)
    warmup_epochs: int = 0            # linear learning-rate warm-up: lr x (epoch + 1) / warmup_epochs
    lr_from_next_epoch: bool = True   # the released off-by-one: the rate of 0-based epoch e is set from e + 1
    pad_mode: str = "reflect"         # of the random crop's 4-pixel padding
    mean: tuple = CIFAR_MEAN
    std: tuple = CIFAR_STD


RECIPES = {
    # MetaSAug's released scripts: every flag default of this file.
    "released": Recipe("released schedule (200 epochs, second phase from 161, lr x0.01 at 160 and 180, batch 100, "
                       "lam {lam})"),
    # Cao et al. (2019), LDAM-DRW's released cifar_train.py and models/resnet_cifar.py, which the paper
    # ran for its LDAM and LDAM-DRW rows: batch 128, weight decay 2e-4, no Nesterov, a 5-epoch linear
    # warm-up, lr x0.01 at 0-based epochs 160 and 180, a normalised last layer with s = 30, zero-padded
    # crops, their normalisation and long-tail subset, DRW (beta 0.9999) from epoch 160.
    "cao2019": Recipe("Cao et al.'s recipe (--recipe cao2019: 200 epochs, lr x0.01 at 160 and 180, batch 128, "
                      "weight decay 2e-4, no Nesterov, 5-epoch warm-up, normalised classifier with s 30, their "
                      "long-tail subset; LDAM-DRW re-weights from 161)",
                      flags=dict(batch_size=128, weight_decay=2e-4, nesterov=False, lr_milestones=[160, 180],
                                 meta_start=160, beta=0.9999, max_m=0.5, subset="cao2019"),
                      normed_classifier=True, logit_scale=30.0, warmup_epochs=5, lr_from_next_epoch=False,
                      pad_mode="constant", mean=CAO2019_MEAN, std=CAO2019_STD),
}


def build_parser(prog, description, losses):
    p = OneLineParser(prog=prog, description=description, formatter_class=HelpFormatter)
    released = p.add_argument_group("flags of the released script (same meaning and default)")
    released.add_argument("--dataset", default="cifar100", choices=("cifar10", "cifar100"))
    released.add_argument("--batch-size", dest="batch_size", type=int, default=100, help="training batch size")
    released.add_argument("--num_classes", type=int, default=None,
                          help="default: the dataset's (10 for cifar10, 100 for cifar100, as released)")
    released.add_argument("--num_meta", type=int, default=10, help="meta (validation) images per class")
    released.add_argument("--imb_factor", type=float, default=0.005,
                          help="smallest/largest class size: 0.01 is 'imbalance 100'")
    released.add_argument("--test-batch-size", dest="test_batch_size", type=int, default=100,
                          help="evaluation batch size")
    released.add_argument("--epochs", type=int, default=200, help="training epochs")
    released.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.1, help="initial learning rate")
    released.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    released.add_argument("--nesterov", type=str2bool, default=True, help="Nesterov momentum (true/false)")
    released.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=5e-4,
                          help="SGD weight decay")
    released.add_argument("--no-cuda", dest="no_cuda", action="store_true", help="same as --device cpu")
    released.add_argument("--split", type=int, default=1000, help="unused, as in the released script")
    released.add_argument("--seed", type=int, default=42, help="model init, data order, augmentation")
    released.add_argument("--print-freq", "-p", dest="print_freq", type=int, default=100,
                          help="iterations between progress lines")
    released.add_argument("--lam", type=float, default=0.25,
                          help="augmentation strength; ratio = lam * epoch / epochs")
    released.add_argument("--gpu", type=int, default=0, help="CUDA device index (with --device auto|cuda)")
    released.add_argument("--meta_lr", type=float, default=0.1, help="step size of the covariance update")
    released.add_argument("--save_name", default="name", help="name of the run's checkpoints and out_dir")
    released.add_argument("--idx", default="0", help="run index, recorded in result.json")

    added = p.add_argument_group("added by this repository")
    added.add_argument("--method", choices=tuple(METHODS), default="metasaug", help=method_help())
    added.add_argument("--subset", choices=SUBSETS, default="released",
                       help="long-tail subset: 'released' (MetaSAug's: meta set removed first, numpy seed 6, "
                            "random seed 42) or 'cao2019' (LDAM-DRW's: numpy seed 0, whole training split)")
    if len(losses) > 1:
        added.add_argument("--loss", choices=losses, default=losses[0],
                           help="base loss of the MetaSAug phase ('focal': Table 1 'MetaSAug with focal loss')")
        p.set_defaults(recipe="released")
    else:
        p.set_defaults(loss=losses[0])
        added.add_argument("--recipe", choices=tuple(RECIPES), default="released",
                           help="released: MetaSAug's recipe (every default here); cao2019: Cao et al.'s LDAM-DRW "
                                "code, as the paper ran its LDAM and LDAM-DRW rows (--method plain or drw): "
                                "batch 128, weight decay 2e-4, no Nesterov (flags given still win), a 5-epoch "
                                "warm-up, lr x0.01 at 0-based epochs 160 and 180, a normalised classifier with "
                                "s = 30, zero-padded crops, their normalisation, --subset cao2019")
    added.add_argument("--gamma", type=float, default=1.0, help="focal loss exponent")
    added.add_argument("--max_m", type=float, default=0.5, help="largest LDAM margin")
    added.add_argument("--beta", type=float, default=0.9999, help="class-balanced weights' beta")
    added.add_argument("--data_root", default=None,
                       help="image folders {train,test}/<class>/* or torchvision's CIFAR python files "
                            "(default data/<dataset>)")
    added.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data_root")
    added.add_argument("--imb_profile", default="exp", choices=("exp", "step"), help="long-tail profile")
    add_device_flag(added)
    added.add_argument("--meta_start", type=int, default=160, help="first epoch of the MetaSAug phase")
    added.add_argument("--lr_milestones", type=int, nargs="*", default=[160, 180],
                       help="epochs where lr is multiplied by 0.01 (applied from epoch+1, as released)")
    added.add_argument("--workers", type=int, default=4, help="threads decoding the image files")
    add_run_file_flags(added, "checkpoints",
                       "<save_name>_ckpt.pth.tar (last epoch) and <save_name>_best.pth.tar go here")
    added.add_argument("--init_from", default=None,
                       help="start the second phase from another run's <save_name>_phase1.pth.tar (same first "
                            "phase: data, seed, schedule and first-phase loss must match); ends bit-identical "
                            "to training from scratch. Ignored with --resume, whose checkpoint holds the branch")
    added.add_argument("--max_train_batches", type=int, default=None, help="cap on iterations per epoch")
    added.add_argument("--max_test_batches", type=int, default=None, help="cap on evaluation batches")
    added.add_argument("--first_phase_only", action="store_true",
                       help="stop after writing <save_name>_phase1.pth.tar (the end of epoch --meta_start - 1), "
                            "for other runs to branch from with --init_from")
    added.add_argument("--eval_every", type=int, default=1,
                       help="evaluate first-phase epochs every N epochs (1: every epoch, as released); the "
                            "second phase, the first phase's last epoch and the last epoch are always evaluated")
    added.add_argument("--lookahead", choices=LOOKAHEADS, default="all", help="parameters of the lookahead step")
    added.add_argument("--lookahead_lr", type=float, default=None,
                       help="the lookahead's step size as a constant (released: the current learning rate)")
    added.add_argument("--carry_cv", action="store_true",
                       help="a variant, not the released method: the covariance learned at each step replaces the "
                            "estimator's for later steps (released: every step starts from the estimate)")
    added.add_argument("--branch_seed", type=int, default=0,
                       help="N > 0: epochs from --meta_start on draw their data order, augmentation and meta "
                            "batches from stream N, so one first phase gives independent second phases "
                            "(0: the stream of --seed, as every run before this flag)")
    added.add_argument("--meta_gradient", choices=META_GRADIENTS, default="jvp",
                       help="exact fast path, or the released double backward")
    added.add_argument("--channels_last", type=str2bool, default=True,
                       help="NHWC memory format for the network (faster convolutions on CPU and GPU)")
    added.add_argument("--amp", action="store_true",
                       help="bf16 autocast of the training and evaluation passes (opt-in: changes the numerics)")
    added.add_argument("--compile", action="store_true",
                       help="torch.compile the network for the plain phase and evaluation (opt-in)")
    return p


def validate_args(args):
    """Check the flags and fill the defaults that depend on others; UsageError on a value that cannot work."""
    other = next((name for name, count in CIFAR_NUM_CLASSES.items() if count == args.num_classes), args.dataset)
    if other != args.dataset:  # a run recorded as one dataset, trained on another
        raise UsageError(f"--num_classes {args.num_classes} is {other}'s class count but --dataset is {args.dataset}; "
                         f"pass --dataset {other} (the class count follows from it)")
    args.num_classes = args.num_classes or CIFAR_NUM_CLASSES[args.dataset]
    args.out_dir = args.out_dir or str(Path("runs") / args.save_name)
    require(args, positive=("batch_size", "test_batch_size", "epochs", "num_classes", "print_freq", "eval_every"),
            non_negative=("workers", "branch_seed"), caps=("max_train_batches", "max_test_batches"))
    require_rates(args)
    check_imb_factor(args.imb_factor)
    method = METHODS[args.method]
    if RECIPES[args.recipe].normed_classifier and method.augmented:
        raise UsageError(f"--recipe {args.recipe} trains Cao et al.'s baselines (--method plain, drw or cb): its "
                         f"normalised classifier has no ISDA augmentation; use --recipe released for --method "
                         f"{args.method}")
    if args.subset == "cao2019" and method.meta_step:
        raise UsageError(f"--subset cao2019 keeps every training image of the head class, so no meta set can be "
                         f"held out for --method {args.method}; use --subset released")
    if not method.meta_step and (args.lookahead_lr is not None or args.carry_cv):
        raise UsageError(f"--lookahead_lr and --carry_cv change the meta step, which --method {args.method} does not "
                         f"take; use --method {' or '.join(meta_stepping())}")
    if args.lookahead_lr is not None and args.lookahead_lr <= 0:
        raise UsageError(f"--lookahead_lr must be positive, got {args.lookahead_lr}")
    if args.first_phase_only and not 1 <= args.meta_start <= args.epochs:
        raise UsageError(f"--first_phase_only needs a first phase: 1 <= --meta_start <= --epochs, got "
                         f"--meta_start {args.meta_start} and --epochs {args.epochs}")


def second_phase_warning(args):
    """A line for a run whose second phase, the point of its --method, never comes (None when it does or
    when the method has none: plain and cb train the same way every epoch)."""
    if args.epochs > args.meta_start or not METHODS[args.method].second_phase:
        return None
    return (f"warning: --epochs {args.epochs} <= --meta_start {args.meta_start}: the second phase of --method "
            f"{args.method} never runs; lower --meta_start to train it")


def run_checkpoints(args):
    """The checkpoint files of the run --save_name: last, best and first phase."""
    return [Path(args.checkpoint_dir) / f"{args.save_name}_{kind}.pth.tar" for kind in ("ckpt", "best", "phase1")]


def check_init_from(args, checkpoint):
    """Refuse a checkpoint that is not the end of the first phase this run would train."""
    path = args.init_from
    config = training_config(checkpoint, "--init_from", path, "a first-phase checkpoint of this repository")
    clashes = flag_clashes(args, config, PHASE1_MUST_MATCH)
    theirs = first_phase_loss(config["method"], checkpoint.get("base_loss", config.get("loss")), config.get("beta"),
                              config.get("max_m"), config.get("gamma"))
    ours = first_phase_loss(args.method, args.loss, args.beta, args.max_m, args.gamma)
    if theirs != ours:
        clashes.append(f"first-phase loss {ours} vs {theirs}")
    if clashes:
        raise CheckpointError(f"--init_from {path} is another first phase ({'; '.join(clashes)}); pass its "
                              f"values or train this run from scratch")
    if (checkpoint["epoch"], checkpoint["iteration"]) != (args.meta_start, 0):
        raise CheckpointError(f"--init_from {path} holds the state after {checkpoint['epoch']} epochs and "
                              f"{checkpoint['iteration']} iterations, not the end of the first phase "
                              f"({args.meta_start} epochs); use the run's <save_name>_phase1.pth.tar")


def parse_args(prog, description, losses, argv=None):
    """The flags, with the defaults of the --recipe they name."""
    return parse_with_recipe(build_parser(prog, description, losses), argv)


def parse_with_recipe(parser, argv):
    """``parser``'s parse of ``argv`` with the defaults of the --recipe it names: the one parse of the scripts
    and of the sweeps that plan them, so a plan compares a checkpoint with the flags its run really has."""
    args = parser.parse_args(argv)
    if RECIPES[args.recipe].flags:
        parser.set_defaults(**RECIPES[args.recipe].flags)
        args = parser.parse_args(argv)
    return args

"""MetaSAug on ImageNet-LT and iNaturalist 2017/2018 (stage 2), and the stage-1 network it starts from.

Stage 2 (default, the paper's recipe): a frozen ResNet feature extractor from a stage-1 checkpoint
(cRT "uniform sampling", ``--model_file``); only the linear classifier is trained, with MetaSAug
(diagonal covariance, lookahead on the classifier with step = lr, class-balanced weights).
Stage 1 (``--stage 1``): plain cross-entropy training of the whole network with instance-balanced
sampling (cRT's recipe: SGD, cosine learning rate), written in the cRT layout stage 2 reads.

Single process:   python ImageNet_iNat/train.py --dataset ImageNet_LT --data_root data/ImageNet ...
Several GPUs:     torchrun --nproc_per_node 4 ImageNet_iNat/train.py ...   (see ImageNet_iNat/README.md)
"""
import argparse
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # the repository's shared modules (cli, loss, meta_layers, ...)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from checkpoint import CheckpointError, RunLock, RunState, load_checkpoint, save_checkpoint, save_json  # noqa: E402
from cli import (HelpFormatter, OneLineParser, StopRequest, UsageError, add_device_flag,  # noqa: E402
                 add_run_file_flags, check_resume, clear_files, duration, files_to_clear, git_commit,
                 interrupt_message, one_line, require, require_rates, resolve_device, str2bool)
from dataloader import DATASETS, DataError, epoch_train_keys, load_data, step_meta_indices, step_meta_keys  # noqa: E402
from dist_utils import (GlobalBatchEstimatorCV, average_gradients, broadcast_from_rank0,  # noqa: E402
                        gather_equal, init_distributed, launched_world, max_deviation_from_rank0,
                        sum_over_ranks, shutdown)
from evaluation import evaluate, format_shots, make_loader  # noqa: E402
from loss import MetaSAugLoss  # noqa: E402
from meta_layers import MetaSAug, augmentation_ratio  # noqa: E402
from networks import ARCHS, FeatureClassifier, crt_state, load_backbone, load_weights, released_state  # noqa: E402

PROG = "ImageNet_iNat/train.py"

# Recipes: the defaults of --batch_size, --epochs, --lr, --lr_milestones, --nesterov and --weight-decay for
# each (recipe, stage, dataset), every value with its source. "released" produced the released checkpoints:
# MetaSAug's train.sh for stage 2 on every dataset, cRT's "uniform sampling" configs for stage 1. "paper"
# follows the paper's text (Sec. 4.3 ImageNet-LT, Sec. 4.4 iNaturalist) and says how each value it does not
# state was chosen. A flag given on the command line still wins. Empty --lr_milestones: constant (stage 2)
# or cosine (stage 1) learning rate; otherwise x0.1 at each milestone.
NOT_STATED = "not stated in the paper: "
RELEASED_STAGE2 = dict(batch_size=(256, "MetaSAug train.sh"), epochs=(20, "MetaSAug train.sh"),
                       lr=(3e-4, "MetaSAug train.sh (constant; also the lookahead step)"),
                       lr_milestones=([], "MetaSAug train.sh: no decay"), nesterov=(True, "MetaSAug train.py"),
                       weight_decay=(5e-4, "MetaSAug train.py"))
CRT_STAGE1 = dict(batch_size=(512, "cRT stage_1 config"), lr=(0.2, "cRT stage_1 config"),
                  lr_milestones=([], "cRT stage_1 config: cosine to --end_lr"), nesterov=(False, "cRT stage_1 config"))
PAPER_INAT_STAGE2 = dict(batch_size=(64, "paper Sec. 4.4"),
                         lr=(1e-4, "paper Sec. 4.4: 'decay the learning rate to 0.0001' in the meta-learning stage"),
                         lr_milestones=([], NOT_STATED + "constant, as released"),
                         epochs=(20, NOT_STATED + "the released 20"), nesterov=(True, NOT_STATED + "the released value"),
                         weight_decay=(5e-4, NOT_STATED + "the released value"))
PAPER_INAT_STAGE1 = dict(batch_size=(64, "paper Sec. 4.4"), lr=(0.01, "paper Sec. 4.4"),
                         lr_milestones=([], NOT_STATED + "cRT's cosine"), nesterov=(False, NOT_STATED + "cRT's"),
                         weight_decay=(1e-4, NOT_STATED + "cRT's iNaturalist value"))
RECIPES = {
    **{("released", 2, dataset): RELEASED_STAGE2 for dataset in DATASETS},
    ("released", 1, "ImageNet_LT"): dict(CRT_STAGE1, epochs=(90, "cRT ImageNet_LT stage_1 config"),
                                         weight_decay=(5e-4, "cRT ImageNet_LT stage_1 config")),
    ("released", 1, "iNaturalist18"): dict(CRT_STAGE1, epochs=(200, "cRT iNaturalist18 stage_1 config"),
                                           weight_decay=(1e-4, "cRT iNaturalist18 stage_1 config")),
    ("released", 1, "iNaturalist17"): dict(CRT_STAGE1, epochs=(200, "no cRT config for iNat 2017: its iNat 2018 one"),
                                           weight_decay=(1e-4, "no cRT config for iNat 2017: its iNat 2018 one")),
    ("paper", 1, "ImageNet_LT"): dict(batch_size=(64, "paper Sec. 4.3"),
                                      lr=(0.025, NOT_STATED + "cRT's 0.2 scaled to batch 64"),
                                      lr_milestones=([60, 80], "paper Sec. 4.3: x0.1 at epochs 60 and 80"),
                                      epochs=(90, NOT_STATED + "cRT's 90 (the decays need more than 80)"),
                                      nesterov=(False, NOT_STATED + "cRT's"), weight_decay=(5e-4, "paper Sec. 4.1")),
    ("paper", 2, "ImageNet_LT"): dict(RELEASED_STAGE2, batch_size=(64, "paper Sec. 4.3"),
                                      lr=(3e-4, NOT_STATED + "the released value"),
                                      epochs=(20, NOT_STATED + "the released 20")),
    ("paper", 1, "iNaturalist17"): dict(PAPER_INAT_STAGE1, epochs=(90, NOT_STATED + "cRT's ImageNet count")),
    ("paper", 1, "iNaturalist18"): dict(PAPER_INAT_STAGE1, epochs=(200, NOT_STATED + "cRT's iNaturalist count")),
    ("paper", 2, "iNaturalist17"): PAPER_INAT_STAGE2,
    ("paper", 2, "iNaturalist18"): PAPER_INAT_STAGE2,
}
# The backbone the paper's stage 1 starts from (Sec. 4.4, following Jamal et al.): give it as --pretrained.
PAPER_PRETRAINING = {"ImageNet_LT": "none (random initialisation, as cRT)",
                     "iNaturalist17": "ImageNet (a torchvision ResNet state_dict)",
                     "iNaturalist18": "ImageNet, then iNaturalist 2017 (a stage-1 checkpoint of iNaturalist17)"}
def recipes_markdown():
    """The recipe table of ImageNet_iNat/README.md (a test keeps the two equal)."""
    flags = ("batch_size", "epochs", "lr", "lr_milestones", "nesterov", "weight_decay")
    lines = ["| recipe | stage | dataset | " + " | ".join(f"`--{f}`" for f in flags) + " |",
             "|---" * (len(flags) + 3) + "|"]
    for (recipe, stage, dataset), values in RECIPES.items():
        lines.append(f"| {recipe} | {stage} | {dataset} | " + " | ".join(
            f"{values[f][0]} ({values[f][1]})" for f in flags) + " |")
    return "\n".join(lines)


# Flags whose change would make a resumed run another experiment (--epochs may be raised).
RESUME_MUST_MATCH = ("stage", "dataset", "num_classes", "num_meta", "arch", "batch_size", "lr", "momentum",
                     "nesterov", "weight_decay", "seed", "lam", "meta_lr", "beta", "image_size",
                     "sync_covariance", "max_train_batches", "end_lr", "recipe", "lr_milestones", "pretrained")


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      formatter_class=HelpFormatter)
    released = p.add_argument_group("flags of the released script (defaults: the published recipe)")
    released.add_argument("--dataset", default="ImageNet_LT", choices=tuple(DATASETS),
                          help="the long-tailed set (default as scripts/train.sh and the released ImageNet-LT command)")
    released.add_argument("--data_root", default=None,
                          help="folder the split files' relative image paths start from (default data/<dataset>)")
    released.add_argument("--batch_size", type=int, default=None,
                          help="GLOBAL batch size: split evenly over all torchrun processes (as released, "
                               "where 256 on 4 GPUs meant 64 per GPU); default: the --recipe's")
    released.add_argument("--num_classes", type=int, default=None,
                          help="default: the dataset's (1000 / 8142 / 5089)")
    released.add_argument("--num_meta", type=int, default=None,
                          help="meta images per class; default as released: 10 (ImageNet_LT, from the val "
                               "split), 2 (iNaturalist18), 5 (iNaturalist17) (both from the training list)")
    released.add_argument("--test_batch_size", type=int, default=512, help="global evaluation batch size")
    released.add_argument("--epochs", type=int, default=None, help="default: the --recipe's")
    released.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                          help="learning rate, also the lookahead step; default: the --recipe's")
    released.add_argument("--workers", type=int, default=8, help="DataLoader processes per training process")
    released.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    released.add_argument("--nesterov", type=str2bool, default=None,
                          help="Nesterov momentum (true/false); default: the --recipe's")
    released.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=None,
                          help="SGD weight decay; default: the --recipe's")
    released.add_argument("--seed", type=int, default=42, help="data order, meta batches, augmentation, init")
    released.add_argument("--print-freq", "-p", dest="print_freq", type=int, default=100,
                          help="steps between progress lines")
    released.add_argument("--lam", type=float, default=0.25, help="augmentation strength; ratio = lam * epoch / epochs")
    released.add_argument("--meta_lr", type=float, default=0.1, help="step size of the covariance update")
    released.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                          help="ignored (torch.distributed.launch compatibility; LOCAL_RANK is read)")

    added = p.add_argument_group("added by this repository")
    added.add_argument("--recipe", choices=("released", "paper"), default="released",
                       help="defaults of --batch_size, --epochs, --lr, --lr_milestones, --nesterov, --weight-decay: "
                            "'released' (MetaSAug's train.sh for stage 2, cRT's configs for stage 1; what produced "
                            "the released checkpoints) or 'paper' (the paper's Sec. 4.3/4.4, per dataset); every "
                            "value and its source in ImageNet_iNat/README.md, Recipes, and on the first line of the log")
    added.add_argument("--lr_milestones", type=int, nargs="*", default=None,
                       help="epochs where the learning rate is multiplied by 0.1; empty: constant (stage 2) or "
                            "cosine (stage 1); default: the --recipe's")
    added.add_argument("--pretrained", default=None,
                       help="stage 1: initialise the backbone from this file (an ImageNet-pretrained torchvision "
                            "ResNet state_dict, or a stage-1 checkpoint of another dataset); its classifier is "
                            "not used. No download.")
    added.add_argument("--stage", type=int, choices=(1, 2), default=2,
                       help="2: MetaSAug on the classifier of a frozen stage-1 network; 1: plain CE training "
                            "of the whole network (cRT uniform sampling), cRT checkpoint layout")
    added.add_argument("--split_dir", default=str(HERE / "data"),
                       help="folder of the split files (or of <dataset>/ subfolders holding them); "
                            "default ImageNet_iNat/data")
    added.add_argument("--model_file", default=None,
                       help="stage-1 checkpoint (cRT layout, e.g. resnet50_uniform_e90.pth, a MetaSAug "
                            "checkpoint or a torchvision ResNet state_dict); required for stage 2")
    added.add_argument("--arch", default="resnet50", choices=ARCHS,
                       help="feature extractor (2048-d); resnet18 (512-d) is for tests and smoke runs only")
    add_device_flag(added, "auto: this rank's GPU when CUDA is available")
    added.add_argument("--no-cuda", dest="no_cuda", action="store_true", help="same as --device cpu")
    added.add_argument("--image_size", type=int, default=224,
                       help="crop size; the test resize is image_size * 256/224 (tiny values for tests)")
    added.add_argument("--sync_covariance", action=argparse.BooleanOptionalAction, default=True,
                       help="update every rank's covariance estimator with the global batch (identical on "
                            "all ranks); --no-sync_covariance: each rank its own shard, as released")
    added.add_argument("--cache_meta_features", action=argparse.BooleanOptionalAction, default=True,
                       help="stage 2, ImageNet_LT: compute the meta set's features once (its transform is "
                            "deterministic and the backbone frozen: same values, half the backbone work)")
    added.add_argument("--amp", action="store_true", help="bf16 autocast of the backbone (CUDA only)")
    added.add_argument("--beta", type=float, default=0.9999, help="class-balanced weights' beta (stage 2)")
    added.add_argument("--end_lr", type=float, default=0.0, help="stage 1: final learning rate of the cosine")
    added.add_argument("--save_name", default=None, help="checkpoint and run name (default <dataset>_<arch>_stage<N>)")
    add_run_file_flags(added, "checkpoints/ImageNet_iNat",
                       "<save_name>_ckpt.pth.tar, rewritten at the end of every epoch")
    added.add_argument("--max_train_batches", type=int, default=None, help="cap on steps per epoch (smoke runs)")
    added.add_argument("--max_test_batches", type=int, default=None, help="cap on evaluation batches (smoke runs)")
    return p


def recipe_values(args):
    """{flag: (value, source)} that the --recipe sets for this stage and dataset."""
    return RECIPES[args.recipe, args.stage, args.dataset]


def resolve_args(args, world_size):
    """Fill the recipe's, stage's and dataset's defaults and check the values; UsageError on a bad one."""
    for name, (value, _) in recipe_values(args).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.pretrained and args.stage != 1:
        raise UsageError("--pretrained initialises stage 1; stage 2 starts from --model_file")
    if args.pretrained and args.model_file:
        raise UsageError("--pretrained (the backbone only) and --model_file (the whole network) exclude each other")
    spec = DATASETS[args.dataset]
    args.num_classes = args.num_classes or spec.num_classes
    args.num_meta = spec.num_meta if args.num_meta is None else args.num_meta
    args.data_root = args.data_root or str(Path("data") / args.dataset)
    args.save_name = args.save_name or f"{args.dataset}_{args.arch}_stage{args.stage}"
    args.out_dir = args.out_dir or str(Path("runs") / args.save_name)
    if args.no_cuda:
        args.device = "cpu"
    require(args, positive=("batch_size", "test_batch_size", "epochs", "num_classes", "print_freq", "image_size"),
            non_negative=("workers", "num_meta"), caps=("max_train_batches", "max_test_batches"))
    require_rates(args)
    if args.batch_size % world_size:
        raise UsageError(f"--batch_size {args.batch_size} is the global batch and must be divisible by the "
                         f"{world_size} processes")
    if args.stage == 2 and args.num_meta < 1:
        raise UsageError("--num_meta must be at least 1 for stage 2")
    if args.stage == 2 and not args.model_file and not args.resume:
        raise UsageError("stage 2 needs --model_file (a stage-1 checkpoint, e.g. resnet50_uniform_e90.pth; "
                         "see ImageNet_iNat/README.md) or --resume")


def check_resume_epochs(args, state):
    """--epochs may be raised on --resume, not lowered below what the checkpoint has trained."""
    if args.epochs < state["epoch"]:
        raise CheckpointError(f"--resume {args.resume} has already trained {state['epoch']} epochs; "
                              f"--epochs {args.epochs} is fewer")


def cosine_lr(epoch, epochs, base_lr, end_lr):
    """cRT's per-epoch cosine annealing (CosineAnnealingLR with T_max = epochs)."""
    return end_lr + (base_lr - end_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


class Run:
    """One stage-1 or stage-2 run on this process's share of the data.

    ``data`` is a ``dataloader.LTData``; ``ctx`` the process group (``dist_utils.DistContext``);
    ``resume_state`` a checkpoint of this run to continue, ``init_state`` the stage-1 checkpoint
    (``--model_file``) stage 2 starts from (both already checked against ``args``).
    """

    def __init__(self, args, data, ctx, resume_state=None, init_state=None):
        self.args, self.ctx, self.data = args, ctx, data
        self.device = ctx.device
        self.stage2 = args.stage == 2
        self.per_rank = args.batch_size // ctx.world_size
        self.memory_format = torch.channels_last
        torch.manual_seed(args.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = FeatureClassifier(args.arch, args.num_classes, frozen=self.stage2, amp=args.amp)
        if init_state is not None and args.pretrained:
            load_backbone(self.model, init_state, args.pretrained)
        elif init_state is not None:
            load_weights(self.model, init_state, args.model_file, args.num_classes)
        if resume_state is not None:
            load_weights(self.model, resume_state, args.resume, args.num_classes)
        self.model.to(self.device, memory_format=self.memory_format)
        trained = self.model.fc.parameters() if self.stage2 else self.model.parameters()
        self.optimizer = torch.optim.SGD(trained, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                         weight_decay=args.weight_decay)
        self.net = self.model
        if not self.stage2 and ctx.distributed:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
        self.criterion = self.meta = None
        if self.stage2:
            beta = None if args.beta == 0 else args.beta
            self.criterion = MetaSAugLoss(self.model.feature_dim, args.num_classes, data.cls_num_list, base="ce",
                                          diagonal=True, beta=beta)
            if args.sync_covariance and ctx.distributed:
                self.criterion.estimator = GlobalBatchEstimatorCV(self.model.feature_dim, args.num_classes, True, ctx)
            self.criterion.to(self.device)
            self.meta = MetaSAug(self.model, self.criterion, meta_lr=args.meta_lr, classifier="fc",
                                 lookahead="classifier")
        # epoch_sums are this rank's; after a mid-epoch resume rank 0 starts from the global sums of the
        # interrupted part, the other ranks from zero
        self.state = RunState()
        if resume_state is not None:
            self.optimizer.load_state_dict(resume_state["optimizer"])
            if self.stage2:
                self.criterion.load_state_dict(resume_state["criterion"])
                self.criterion.to(self.device)
            self.state = RunState.from_checkpoint(resume_state)
            if not ctx.is_main:
                self.state.epoch_sums = [0.0, 0, 0]
        commit = git_commit()
        if commit not in self.state.commits[-1:]:
            self.state.commits.append(commit)
        self.images = data.images()
        self.meta_cache = None
        self.checkpoint_path = Path(args.checkpoint_dir) / f"{args.save_name}_ckpt.pth.tar"
        self.first_epoch = self.state.epoch
        self.last_eval = None

    # -- logging helpers ---------------------------------------------------------------------
    def log(self, message, error=False):
        """Rank 0's lines for the person watching: stdout (stderr for ``error``) and the run's train.log."""
        if self.ctx.is_main:
            print(message, file=sys.stderr if error else sys.stdout, flush=True)
            with open(Path(self.args.out_dir) / "train.log", "a") as handle:
                handle.write(message + "\n")

    # -- one step ----------------------------------------------------------------------------
    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    def _meta_batch(self, batch, epoch, step):
        if self.meta_cache is not None:
            index = torch.tensor(step_meta_indices(len(self.data.meta), self.per_rank, self.args.seed, epoch,
                                                   step, self.ctx.rank), device=self.device)
            return self.meta_cache[0][index], self.meta_cache[1][index]
        return self._to_device(*batch["meta"])

    def train_step(self, batch, epoch, step, lr, ratio, stop):
        x, y = self._to_device(*batch["train"])
        if self.stage2:
            x_meta, y_meta = self._meta_batch(batch, epoch, step)
            loss, logits = self.meta.step(x, y, x_meta, y_meta, lr=lr, ratio=ratio)
        else:
            _, logits = self.net(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = loss.item()
        flags = (stop.due(), not math.isfinite(loss_value))
        if self.stage2:
            stop_count, bad_count = average_gradients(self.model.fc.parameters(), self.ctx, *flags)
        else:
            stop_count, bad_count = sum_over_ranks(self.ctx, *flags)
        if bad_count:
            raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, step {step + 1} on "
                                     f"{int(bad_count)} rank(s); stopped, the last checkpoint "
                                     f"{self.checkpoint_path} is kept (try a lower --lr or --lam)")
        self.optimizer.step()
        correct = int((logits.detach().argmax(1) == y).sum())
        return loss_value, correct, len(y), stop_count > 0

    # -- the run ------------------------------------------------------------------------------
    def _cache_meta_features(self):
        """ImageNet-LT's meta images get the deterministic test transform: their frozen features are
        computed once (sharded over the ranks, gathered) instead of at every step."""
        indices = list(range(len(self.data.meta)))
        mine = [("meta", i, None) for i in indices[self.ctx.rank::self.ctx.world_size]]
        per_rank = -(-len(indices) // self.ctx.world_size)
        features, labels = [], []
        self.model.eval()
        with torch.no_grad():
            for batch in make_loader(self.images, [mine[s:s + self.per_rank] for s in range(0, len(mine),
                                                                                               self.per_rank)],
                                     self.args.workers, self.device):
                x, y = self._to_device(*batch["meta"])
                features.append(self.model(x)[0])
                labels.append(y)
        self.model.train()
        dim = self.model.feature_dim
        features = torch.cat(features) if features else torch.zeros(0, dim, device=self.device)
        labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=self.device)
        # pad to the same length on every rank, gather, and undo the round-robin sharding
        pad = per_rank - len(features)
        features = torch.cat([features, features.new_zeros(pad, dim)])
        labels = torch.cat([labels, labels.new_zeros(pad)])
        all_features = gather_equal(features, self.ctx).view(self.ctx.world_size, per_rank, dim)
        all_labels = gather_equal(labels, self.ctx).view(self.ctx.world_size, per_rank)
        order = torch.tensor(indices, device=self.device)
        self.meta_cache = (all_features[order % self.ctx.world_size, order // self.ctx.world_size],
                           all_labels[order % self.ctx.world_size, order // self.ctx.world_size])

    def schedule(self, epoch):
        """(optimizer lr, lookahead step size, augmentation ratio) of 0-based ``epoch``: x0.1 at each of
        --lr_milestones; without milestones stage 2 keeps the released constant rate and stage 1 follows cRT's
        cosine. The lookahead's step is the optimizer's rate, as released."""
        args = self.args
        if args.lr_milestones:
            lr = args.lr * 0.1 ** sum(epoch >= m for m in args.lr_milestones)
        else:
            lr = args.lr if self.stage2 else cosine_lr(epoch, args.epochs, args.lr, args.end_lr)
        return lr, lr, augmentation_ratio(args.lam, epoch, args.epochs)

    def fit(self, stop):
        args, state, ctx = self.args, self.state, self.ctx
        started = time.time() - state.elapsed
        writer = None
        if ctx.is_main:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(args.out_dir)
        if self.stage2 and args.cache_meta_features and self.data.meta_is_deterministic:
            self._cache_meta_features()
        self.log(f"recipe {args.recipe}, stage {args.stage}, {args.dataset}: " + "; ".join(
            f"{name} {getattr(args, name)} ({source if getattr(args, name) == value else 'given'})"
            for name, (value, source) in recipe_values(args).items()))
        self.log(f"stage {args.stage} | {args.dataset} | {len(self.data.train)} training images, "
                 f"{len(self.data.meta)} meta, {len(self.data.evaluation)} evaluation | {ctx.world_size} "
                 f"process(es) on {self.device.type}, {self.per_rank} images per process and step")
        if state.epoch or state.iteration:
            self.log(f"resumed at epoch {state.epoch + 1}, step {state.iteration + 1} from {args.resume}")
        for epoch in range(state.epoch, args.epochs):
            lr, lookahead_lr, ratio = self.schedule(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batches = epoch_train_keys(len(self.data.train), self.per_rank, ctx.world_size, ctx.rank,
                                       args.seed, epoch)[:args.max_train_batches]
            first = state.iteration
            steps = []
            for step in range(first, len(batches)):
                keys = list(batches[step])
                if self.stage2 and self.meta_cache is None:
                    keys += step_meta_keys(self.data, self.per_rank, args.seed, epoch, step, ctx.rank)
                steps.append(keys)
            self.net.train()
            tick = time.time()
            for step, batch in enumerate(make_loader(self.images, steps, args.workers, self.device), start=first):
                loss, correct, seen, stopping = self.train_step(batch, epoch, step, lookahead_lr, ratio, stop)
                state.add_batch(loss, correct, seen)
                if (step + 1) % args.print_freq == 0 or stopping:
                    self.log(f"  epoch {epoch + 1} step {step + 1}/{len(batches)} loss {loss:.4f}")
                if stopping:
                    state.epoch_time += time.time() - tick
                    return self._interrupted(stop, started, writer)
            state.epoch_time += time.time() - tick
            self._end_epoch(epoch, lr, started, writer)
        return self._finish(started, writer)

    def _consistency(self):
        """Largest deviation of any rank from rank 0 (classifier; stage 2 also the covariance)."""
        report = dict(classifier=max_deviation_from_rank0(list(self.model.fc.parameters()), self.ctx))
        if not self.stage2:
            # DDP broadcasts rank 0's BatchNorm statistics at each forward; after the last step every
            # rank holds its own: evaluate and save rank 0's everywhere
            broadcast_from_rank0([b for b in self.model.buffers() if b.is_floating_point()], self.ctx)
        else:
            estimator = self.criterion.estimator
            report["covariance"] = max_deviation_from_rank0([estimator.covariance], self.ctx)
            if self.args.sync_covariance:
                # all ranks updated with the same global batches; copying rank 0's statistics removes
                # the last-bit differences of non-deterministic GPU kernels (a no-op on the CPU)
                broadcast_from_rank0([estimator.covariance, estimator.mean, estimator.amount], self.ctx)
        return report

    def _end_epoch(self, epoch, lr, started, writer):
        args, state, ctx = self.args, self.state, self.ctx
        loss_sum, correct, seen = sum_over_ranks(ctx, *state.epoch_sums)
        train_time = state.epoch_time
        consistency = self._consistency() if ctx.distributed else None
        result = evaluate(self.model, self.data, self.images, ctx, args.test_batch_size, args.max_test_batches,
                          args.workers, self.memory_format)
        entry = dict(epoch=epoch, lr=lr, ratio=self.schedule(epoch)[2], train_loss=loss_sum / seen,
                     train_acc=100.0 * correct / seen, train_images=int(seen), train_time_s=train_time,
                     images_per_s=seen / train_time if train_time > 0 else None,
                     test_top1=result["top1"], shot_accuracy=result["shots"], rank_max_deviation=consistency)
        state.end_epoch(entry, time.time() - started)
        self.last_eval = result
        if not ctx.is_main:
            return
        done = epoch + 1 - self.first_epoch
        eta = state.elapsed / max(done, 1) * (args.epochs - epoch - 1)
        self.log(f"Epoch {epoch + 1}/{args.epochs} | loss {entry['train_loss']:.4f} | train acc "
                 f"{entry['train_acc']:.2f} | test top-1 {result['top1']:.2f} (many/medium/few "
                 f"{format_shots(result['shots'])}) | lr {lr:g} | {entry['images_per_s'] or 0:.1f} img/s | elapsed "
                 f"{duration(state.elapsed)} | ETA {duration(eta)}")
        scalars = {"train/loss": entry["train_loss"], "train/accuracy": entry["train_acc"], "test/top1": result["top1"],
                   "lr": lr, "train/images_per_s": entry["images_per_s"] or 0.0}
        scalars.update({f"test/{k}_shot": v for k, v in result["shots"].items() if v is not None})
        for name, value in scalars.items():
            writer.add_scalar(name, value, epoch + 1)  # the 1-based epoch, as printed
        writer.flush()
        save_checkpoint(self._checkpoint(), self.checkpoint_path)

    def _checkpoint(self):
        """The run state and the weights: the released stage-2 layout, or cRT's for stage 1."""
        checkpoint = dict(self.state.to_checkpoint(), optimizer=self.optimizer.state_dict(), stage=self.args.stage,
                          config=vars(self.args), cls_num_list=self.data.cls_num_list,
                          world_size=self.ctx.world_size)
        if self.stage2:
            checkpoint["state_dict"] = released_state(self.model)
            checkpoint["criterion"] = self.criterion.state_dict()
        else:
            checkpoint["state_dict_best"] = crt_state(self.model)  # the last epoch's weights (no selection)
            checkpoint["best_epoch"] = self.state.epoch - 1
        return checkpoint

    def _interrupted(self, stop, started, writer):
        self.state.elapsed = time.time() - started
        self.state.epoch_sums = sum_over_ranks(self.ctx, *self.state.epoch_sums)
        code = stop.exit_code() if stop.due() else 128 + signal.SIGTERM  # another rank was stopped
        if not self.ctx.is_main:
            return code
        save_checkpoint(self._checkpoint(), self.checkpoint_path)
        writer.close()
        self.log(interrupt_message(stop, self.state, "step", self.checkpoint_path), error=True)
        return code

    def _finish(self, started, writer):
        args, state = self.args, self.state
        if self.last_eval is None:  # resumed after the last epoch: evaluate once more (all ranks)
            self.last_eval = evaluate(self.model, self.data, self.images, self.ctx, args.test_batch_size,
                                      args.max_test_batches, args.workers, self.memory_format)
        if not self.ctx.is_main:
            return 0
        writer.close()
        history = [dict(h, epoch=h["epoch"] + 1) for h in state.history]  # 1-based, as printed
        final = history[-1]
        images = sum(h["train_images"] for h in history)
        train_time = sum(h["train_time_s"] for h in history)
        result = dict(config=vars(args), commit=state.commits[0], commits=state.commits, seed=args.seed, stage=args.stage,
                      dataset=args.dataset, arch=args.arch, world_size=self.ctx.world_size,
                      device=self.device.type, cls_num_list=self.data.cls_num_list,
                      epoch_numbering="1-based: epoch 1 is the first epoch trained, final_epoch = --epochs; "
                                      "history[].epoch likewise",
                      final_epoch=final["epoch"], final_top1=final["test_top1"],
                      final_top1_error=100 - final["test_top1"],
                      per_class_accuracy=self.last_eval["per_class"], shot_accuracy=final["shot_accuracy"],
                      evaluated_images=self.last_eval["count"], evaluation_split_images=len(self.data.evaluation),
                      wall_time_s=time.time() - started, train_time_s=train_time,
                      train_images_per_s=images / train_time if train_time > 0 else None,
                      rank_max_deviation=final["rank_max_deviation"],
                      checkpoint=str(self.checkpoint_path), history=history)
        path = Path(args.out_dir) / "result.json"
        save_json(result, path)
        self.log(f"final top-1 error {result['final_top1_error']:.2f} (epoch {final['epoch']}), "
                 f"{result['train_images_per_s'] or 0:.1f} training images/s; wrote {path} and {self.checkpoint_path}")
        return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    world_size, rank, local_rank = launched_world()
    ctx = None
    try:
        resolve_args(args, world_size)
        device = resolve_device(args.device, local_rank % max(torch.cuda.device_count(), 1))
        with RunLock(args.checkpoint_dir, args.save_name) if rank == 0 else nullcontext():  # rank 0 writes
            stale = files_to_clear(args, [Path(args.checkpoint_dir) / f"{args.save_name}_ckpt.pth.tar"])
            data = load_data(args.dataset, args.data_root, args.split_dir, args.num_classes, args.num_meta,
                             args.image_size)
            resume_state = init_state = None
            if args.resume:
                resume_state = load_checkpoint(args.resume)
                check_resume(args, resume_state, RESUME_MUST_MATCH, PROG)
                check_resume_epochs(args, resume_state)
            elif args.model_file or args.pretrained:
                init_state = load_checkpoint(args.pretrained or args.model_file)
            ctx = init_distributed(device)
            run = Run(args, data, ctx, resume_state, init_state)
            del resume_state, init_state
            if ctx.is_main:
                clear_files(stale, args.save_name)
            return run.fit(StopRequest(args.stop_after))
    except (UsageError, DataError, CheckpointError) as error:
        prefix = f"[rank {rank}] " if world_size > 1 else ""
        print(f"{PROG}: error: {prefix}{one_line(error)}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as error:
        if rank == 0:
            print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
        return 3
    finally:
        shutdown(ctx)


if __name__ == "__main__":
    sys.exit(main())

"""The long-tailed CIFAR training run shared by MetaSAug_CE_train.py and MetaSAug_LDAM_train.py.

The schedule is the released one: plain cross-entropy until ``--meta_start``, then MetaSAug with
class-balanced weights and ``ratio = lam * epoch / epochs``; the optimizer's learning rate is set
from ``epoch + 1`` (the released off-by-one) while the lookahead uses ``epoch``. Every epoch's data
order and every batch's augmentation are derived from ``(seed, epoch, iteration)``, so a resumed
run, mid-epoch included, repeats the uninterrupted one exactly. What each ``--method`` computes is its
record in methods.py; the flags are cifar_flags.py's, the time estimates timing.py's.
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from checkpoint import (CheckpointError, RunLock, RunState, load_checkpoint, load_model_state, save_checkpoint,
                        save_json)
from cifar_flags import (RECIPES, RESUME_MUST_MATCH, check_init_from, parse_args, run_checkpoints,
                         second_phase_warning, validate_args)
from cli import (StopRequest, UsageError, check_resume, clear_files, duration, files_to_clear, git_commit,
                 interrupt_message, resolve_device)
from data_utils import (DataError, augment, batch_generator, build_dataset, epoch_batches, index_fingerprint,
                        normalize, sample_meta_batch, stream_seed)
from figures import (confusion_figure, confusion_matrix, figure_pixels, save_figure, spectrum_figure,
                     top_singular_values)
from loss import MetaSAugLoss, classification_loss
from meta_layers import MetaSAug, MetaStepMonitor, augmentation_ratio
from methods import METHODS, row_name, short_name
from metrics import evaluation_subset, per_class_accuracy, predict, shot_accuracy, top1_accuracy
from resnet import ResNet32
from timing import epoch_seconds, estimated_seconds, evaluates, measured_throughput

def learning_rate(epoch, base_lr, milestones):
    return base_lr * 0.01 ** sum(epoch >= m for m in milestones)


def epoch_scalars(entry, rarest):
    """The TensorBoard scalars of one history entry, as (tag, value): what a run logs each epoch, and what
    tools/tensorboard_logs.py writes again from a result.json's history."""
    scalars = [("train/loss", entry["train_loss"]), ("train/accuracy", entry["train_acc"]), ("lr", entry["lr"])]
    if "images_per_s" in entry:
        scalars.append(("train/images_per_s", entry["images_per_s"]))
    if entry.get("test_top1") is not None:
        scalars += [("test/top1", entry["test_top1"]),
                    *((f"test/{k}_shot", v) for k, v in entry["shot_accuracy"].items() if v is not None)]
    scalars += [(f"meta_step/{key[len('meta_step_'):]}", value) for key, value in entry.items()
                if key.startswith("meta_step_") and isinstance(value, float)]
    if entry.get("meta_step_shift_per_class") and entry["meta_step_shift_per_class"][rarest] is not None:
        scalars.append(("meta_step/shift_rarest_class", entry["meta_step_shift_per_class"][rarest]))
    scalars += [(f"covariance_rarest_class/{name}_s{i + 1}", value)
                for name, values in entry.get("covariance_spectrum", {}).items() for i, value in enumerate(values)]
    return scalars


def spectrum_series(spectrum, row, epoch):
    """A run's spectrum (trainer.Run._covariance_spectrum) keyed by legend words: the row, the 1-based epoch and
    which covariance."""
    covariance = {"isda": "estimated", "meta_learned": "learned by its meta step"}
    return {f"{row}, epoch {epoch}: {covariance[name]}": values for name, values in spectrum.items()}


class Run:
    """One training run: state, the two phases' iteration, evaluation, checkpoints and logs.

    ``data`` is a ``data_utils.LongTailData`` (moved to the run's device here); ``resume_state`` a
    checkpoint of this run to continue, ``init_state`` another run's first-phase checkpoint to branch
    from (both already checked against ``args``).
    """

    def __init__(self, args, data, resume_state=None, init_state=None):
        self.args = args
        self.recipe = RECIPES[args.recipe]
        self.device = resolve_device("cpu" if args.no_cuda else args.device, args.gpu)
        self.data = data.to(self.device)
        self.train_index_sha256 = index_fingerprint(data.train_indices)
        if init_state is not None and init_state.get("train_index_sha256") not in (None, self.train_index_sha256):
            raise CheckpointError(f"--init_from {args.init_from} trained on another long-tail subset of "
                                  f"{args.data_root} (train_index_sha256 differs); train this run from scratch")
        self.rarest = min(range(len(data.cls_num_list)), key=data.cls_num_list.__getitem__)
        self.out_dir = Path(args.out_dir or Path("runs") / args.save_name)
        self.last_path = Path(args.checkpoint_dir) / f"{args.save_name}_ckpt.pth.tar"
        self.best_path = Path(args.checkpoint_dir) / f"{args.save_name}_best.pth.tar"
        self.phase1_path = Path(args.checkpoint_dir) / f"{args.save_name}_phase1.pth.tar"

        torch.manual_seed(args.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = ResNet32(args.num_classes, normed=self.recipe.normed_classifier).to(
            self.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=args.momentum,
                                         nesterov=args.nesterov, weight_decay=args.weight_decay)
        self.method = METHODS[args.method]
        beta = None if args.beta == 0 or self.method.weights == "none" else args.beta
        self.criterion = MetaSAugLoss(ResNet32.feature_dim, args.num_classes, data.cls_num_list, base=args.loss,
                                      beta=beta, max_m=args.max_m, gamma=args.gamma).to(self.device)
        self.meta = None
        if self.method.meta_step:
            self.meta = MetaSAug(self.model, self.criterion, meta_lr=args.meta_lr, lookahead=args.lookahead,
                                 meta_gradient=args.meta_gradient, carry_covariance=args.carry_cv,
                                 monitor=MetaStepMonitor())
        self.forward_model = torch.compile(self.model) if args.compile else self.model
        self.state = RunState()
        if resume_state is not None:
            self._restore(resume_state)
        elif init_state is not None:
            self._restore(init_state, criterion=False)
        commit = git_commit()
        if commit not in self.state.commits[-1:]:
            self.state.commits.append(commit)

    def _restore(self, checkpoint, criterion=True):
        """Continue from ``checkpoint``; a branch (``criterion=False``) keeps its own loss, whose estimator the
        first phase never touches and whose class weights and margins may differ from the first phase's run."""
        load_model_state(self.model, checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if criterion:
            self.criterion.load_state_dict(checkpoint["criterion"])
            if self.meta is not None:
                self.meta.monitor.load_state(checkpoint.get("meta_step_sums"))
        self.state = RunState.from_checkpoint(checkpoint)

    def schedule(self, epoch):
        """(optimizer lr, lookahead step size, augmentation ratio) of 0-based ``epoch``. Released recipe: the
        optimizer's rate is taken at ``epoch + 1``, the lookahead's at ``epoch`` (the released off-by-one);
        cao2019: the rate of ``epoch`` after a linear warm-up."""
        args, recipe = self.args, self.recipe
        lr = learning_rate(epoch + recipe.lr_from_next_epoch, args.lr, args.lr_milestones)
        if epoch < recipe.warmup_epochs:
            lr *= (epoch + 1) / recipe.warmup_epochs
        lookahead_lr = args.lookahead_lr if args.lookahead_lr is not None else learning_rate(epoch, args.lr,
                                                                                             args.lr_milestones)
        return lr, lookahead_lr, augmentation_ratio(args.lam, epoch, args.epochs)

    def stream(self, epoch):
        """The seed of 0-based ``epoch``'s random streams (order, augmentation, meta batches): --seed's, or from
        --meta_start on --branch_seed's own when it is not 0."""
        args = self.args
        if args.branch_seed and epoch >= args.meta_start:
            return stream_seed(args.seed, "branch", args.branch_seed)
        return args.seed

    def _checkpoint(self):
        """The released checkpoint keys, plus the run state and what --resume and --init_from check."""
        return dict(self.state.to_checkpoint(), state_dict=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(), criterion=self.criterion.state_dict(),
                    config=vars(self.args), cls_num_list=self.data.cls_num_list, base_loss=self.args.loss,
                    train_index_sha256=self.train_index_sha256,
                    meta_step_sums=None if self.meta is None else self.meta.monitor.state())

    def augmented_batch(self, images, labels, index, seed, *keys):
        """Images ``index`` augmented on the device; ``seed`` and ``keys`` name the random stream (same keys,
        same batch)."""
        generator = batch_generator(seed, *keys, device=self.device)
        recipe = self.recipe
        images = augment(images[index], generator, mean=recipe.mean, std=recipe.std, pad_mode=recipe.pad_mode)
        return images.contiguous(memory_format=self.memory_format), labels[index]

    def epoch_batches(self, epoch):
        """The index batches of 0-based ``epoch`` in its stream's order, capped by --max_train_batches."""
        return epoch_batches(len(self.data.train_labels), self.args.batch_size, self.stream(epoch), epoch,
                             device=self.device)[:self.args.max_train_batches]

    def train_step(self, epoch, iteration, index, lookahead_lr, ratio):
        """One iteration: the batch ``index`` augmented, the meta batch where a meta step is taken, the update."""
        x, y = self.augmented_batch(self.data.train_images, self.data.train_labels, index, self.stream(epoch),
                                    "augment", epoch, iteration)
        return self.update(x, y, epoch, lookahead_lr, ratio, self.meta_batch(epoch, iteration))

    def meta_batch(self, epoch, iteration):
        """The balanced meta batch of an iteration, augmented (None where no meta step is taken)."""
        if self.meta is None or epoch < self.args.meta_start:
            return None
        seed = self.stream(epoch)
        generator = batch_generator(seed, "meta", epoch, iteration, device=self.device)
        meta_index = sample_meta_batch(len(self.data.meta_labels), self.args.batch_size, generator)
        return self.augmented_batch(self.data.meta_images, self.data.meta_labels, meta_index, seed, "meta_augment",
                                    epoch, iteration)

    def update(self, x, y, epoch, lookahead_lr, ratio, meta_batch=None):
        """One optimizer step on a prepared batch: (loss, correct, images), the first two as tensors."""
        with self.autocast():
            loss, logits = self._loss(x, y, epoch, lookahead_lr, ratio, meta_batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (logits.argmax(1) == y).sum(), len(y)

    def autocast(self):
        """bf16 autocast where --amp asks for it, a no-op context otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.amp)

    def _loss(self, x, y, epoch, lookahead_lr, ratio, meta_batch):
        """The training loss of ``--method`` in this epoch's phase, and the logits."""
        method, second_phase = self.method, epoch >= self.args.meta_start
        if method.augmented and not second_phase:
            _, logits = self.forward_model(x)
            loss = F.cross_entropy(logits, y)
        elif method.augmented and not method.meta_step:  # ISDA: the estimate before this batch, then the update
            features, logits = self.forward_model(x)
            estimator = self.criterion.estimator
            covariance = estimator.covariance.clone()
            estimator.update(features.detach(), y)
            loss = self.criterion(logits, self.model.linear.weight, y, covariance, ratio)
        elif not method.augmented:
            _, logits = self.forward_model(x)
            reweight = method.weights == "class-balanced" or (method.weights == "deferred" and second_phase)
            loss = classification_loss(logits, y, self.args.loss, self.criterion.class_weights if reweight else None,
                                       self.criterion.constant, self.args.gamma, self.recipe.logit_scale)
        else:
            loss, logits = self.meta.step(x, y, *meta_batch, lr=lookahead_lr, ratio=ratio)
        return loss, logits

    def evaluate(self):
        subset = evaluation_subset(len(self.data.test_labels), self.args.test_batch_size,
                                   self.args.max_test_batches).to(self.device)
        labels = self.data.test_labels[subset]
        with self.autocast():
            predictions = predict(self.forward_model, self.data.test_images[subset], self.args.test_batch_size,
                                  lambda images: normalize(images, self.recipe.mean, self.recipe.std).contiguous(
                                      memory_format=self.memory_format))
        per_class = per_class_accuracy(predictions, labels, self.args.num_classes)
        confusion = confusion_matrix(predictions, labels, self.args.num_classes)
        return top1_accuracy(predictions, labels), per_class, confusion

    def log(self, message, error=False):
        """A line for the person watching: stdout (stderr for ``error``) and the run's train.log."""
        print(message, file=sys.stderr if error else sys.stdout, flush=True)
        with open(self.out_dir / "train.log", "a") as handle:
            handle.write(message + "\n")

    def phase_name(self, epoch):
        if epoch >= self.args.meta_start and self.method.label:
            return self.method.label + " (covariance carried over)" * self.args.carry_cv
        return "plain CE" if self.method.augmented else self.args.loss

    def epoch_seconds(self):
        """(first-phase epoch, second-phase epoch, evaluation) seconds expected on this run's device."""
        return epoch_seconds(self.state.history, self.device, self.method.meta_step, self.args.meta_start,
                             *self.epoch_images())

    def epoch_images(self):
        """(training images per epoch, test images per evaluation) under the caps."""
        args = self.args
        images = len(self.data.train_labels)
        if args.max_train_batches:
            images = min(images, args.max_train_batches * args.batch_size)
        return images, len(evaluation_subset(len(self.data.test_labels), args.test_batch_size, args.max_test_batches))

    def remaining_seconds(self, next_epoch, last_epoch=None):
        """Seconds to train 0-based epochs next_epoch .. last_epoch - 1 (default: to the end), per phase."""
        first, second, evaluation = self.epoch_seconds()
        if first is None:
            return None
        return estimated_seconds(self.args, next_epoch, last_epoch or self.last_epoch, (first, second), evaluation)

    @property
    def last_epoch(self):
        """The 0-based epoch this invocation stops before: the end, or the first phase's end."""
        return self.args.meta_start if self.args.first_phase_only else self.args.epochs

    def fit(self, stop):
        args, state = self.args, self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(self.out_dir))
        started = time.time() - state.elapsed
        images, test_images = self.epoch_images()
        self.log(f"training {len(self.data.train_labels)} images per epoch, class counts {self.data.cls_num_list}, "
                 f"meta set {len(self.data.meta_labels)}, test {test_images}, device {self.device}")
        if args.resume:
            self.log(f"resumed at epoch {state.epoch + 1}, iteration {state.iteration + 1} from {args.resume}")
        elif args.init_from:
            self.log(f"branching at epoch {state.epoch + 1} from the first phase in {args.init_from}")
        total = self.remaining_seconds(state.epoch)
        if total is not None:
            timed_here = any("train_time_s" in h and h.get("device") == str(self.device) for h in state.history)
            source = ("this run's own timing on this device" if timed_here else
                      f"the throughput measured on {measured_throughput(self.device.type)['machine']} "
                      f"(throughput.json); the ETA of each epoch line uses this run's timing")
            if self.device.type == "cpu":
                threads = torch.get_num_threads()
                source += (f"; on {threads} CPU thread{'s' * (threads != 1)} (OMP_NUM_THREADS sets the count; other "
                           f"work on this machine slows the run)")
            self.log(f"expected: about {duration(total)} for epochs {state.epoch + 1}-{self.last_epoch} "
                     f"({', '.join(self.phase_plan(state.epoch))}), from {source}")
        for epoch in range(state.epoch, self.last_epoch):
            lr, lookahead_lr, ratio = self.schedule(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batches = self.epoch_batches(epoch)
            losses = []
            tick = time.time()
            for iteration in range(state.iteration, len(batches)):
                loss, correct, seen = self.train_step(epoch, iteration, batches[iteration], lookahead_lr, ratio)
                losses.append(loss)
                state.add_batch(loss, correct, seen)
                if state.iteration % args.print_freq == 0 or stop.due():
                    self._check_finite(losses, epoch, iteration + 1 - len(losses))
                    losses = []
                    self.log(f"  epoch {epoch + 1} iter {iteration + 1}/{len(batches)} loss {loss.item():.4f}")
                if stop.due():
                    state.epoch_time += time.time() - tick
                    return self._interrupted(stop, started)
            self._check_finite(losses, epoch, len(batches) - len(losses))
            state.epoch_time += time.time() - tick
            self._end_epoch(epoch, lr, started, writer)
        writer.close()
        self._write_figures()
        if args.first_phase_only:
            self.log(f"first phase done (epochs 1-{args.meta_start}): branch runs from it with --init_from "
                     f"{self.phase1_path}")
            return 0
        return self._write_result(started)

    def phase_plan(self, first_epoch):
        """The phases of 0-based epochs first_epoch .. last_epoch - 1, as "epochs 1-160 plain CE" parts."""
        parts, start = [], first_epoch
        for epoch in range(first_epoch, self.last_epoch + 1):
            if epoch == self.last_epoch or self.phase_name(epoch) != self.phase_name(start):
                parts.append(f"epochs {start + 1}-{epoch} {self.phase_name(start)}")
                start = epoch
        return parts

    def _check_finite(self, losses, epoch, first_iteration):
        if not losses:
            return
        finite = torch.isfinite(torch.stack(losses))
        if not finite.all():
            bad = first_iteration + int((~finite).nonzero()[0]) + 1  # counted from 1, as in "iter k/N"
            raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, iteration {bad}; "
                                     f"stopped, the last good checkpoint {self.last_path} is kept "
                                     f"(try a lower --lr or --lam)")

    def _end_epoch(self, epoch, lr, started, writer):
        args, state = self.args, self.state
        loss_sum, correct, seen = state.epoch_sums
        train_loss, train_acc = float(loss_sum) / seen, 100.0 * float(correct) / seen
        spectrum = self._covariance_spectrum()
        entry = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, covariance_spectrum=spectrum,
                     train_time_s=state.epoch_time, images_per_s=float(seen) / max(state.epoch_time, 1e-9),
                     device=str(self.device))
        if self.meta is not None:
            entry.update(self.meta.monitor.summary())
        is_best = False
        if evaluates(epoch, args.epochs, args.meta_start, args.eval_every):
            tick = time.time()
            top1, per_class, confusion = self.evaluate()
            entry["eval_time_s"] = time.time() - tick
            is_best = state.best_epoch is None or top1 > state.best_acc1
            if is_best:
                state.best_acc1, state.best_epoch = top1, epoch
            shots = shot_accuracy(per_class, self.data.cls_num_list)
            for old in state.history:  # the confusion matrix is kept for the last evaluated epoch only
                old.pop("confusion_matrix", None)
            entry.update(test_top1=top1, per_class_accuracy=per_class, shot_accuracy=shots,
                         confusion_matrix=confusion.tolist())
        state.end_epoch(entry, time.time() - started)
        remaining = self.remaining_seconds(epoch + 1)
        test = (f"test top-1 {entry['test_top1']:.2f} (best {state.best_acc1:.2f}, epoch {state.best_epoch + 1})"
                if "test_top1" in entry else "not evaluated")
        self.log(f"Epoch {epoch + 1}/{args.epochs} {self.phase_name(epoch)} | loss {train_loss:.4f} | train acc "
                 f"{train_acc:.2f} | {test} | lr {lr:g} | {entry['images_per_s']:.0f} img/s | elapsed "
                 f"{duration(state.elapsed)} | ETA {duration(remaining or 0)}")
        step = epoch + 1  # TensorBoard's x axis: the 1-based epoch, as printed
        for name, value in epoch_scalars(entry, self.rarest):
            writer.add_scalar(name, value, step)
        if "test_top1" in entry:
            figure = confusion_figure(confusion, self.data.class_names, f"confusion matrix (%), epoch {step}")
            writer.add_image("figures/confusion_matrix", figure_pixels(figure), step, dataformats="HWC")
        writer.flush()
        checkpoint = self._checkpoint()
        save_checkpoint(checkpoint, self.last_path)
        if is_best:
            save_checkpoint(checkpoint, self.best_path)
        if epoch == args.meta_start - 1:
            save_checkpoint(checkpoint, self.phase1_path)

    def _covariance_spectrum(self):
        """Fig. 2: top-5 normalised singular values of the rarest class's covariance (ISDA's
        estimate, and the meta-learned one of the epoch's last iteration), once there is one."""
        spectrum = {}
        if self.criterion.estimator.amount[self.rarest] > 0:
            spectrum["isda"] = top_singular_values(self.criterion.estimator.covariance[self.rarest])
        if self.meta is not None and self.meta.learned_covariance is not None:
            spectrum["meta_learned"] = top_singular_values(self.meta.learned_covariance[self.rarest])
        return spectrum

    def _write_figures(self):
        """Fig. 4 of the last evaluated epoch and Fig. 2 of the last epoch as PNG and PDF files in --out_dir, once
        this invocation has trained its epochs (TensorBoard has the confusion matrix and the spectrum's values
        epoch by epoch; drawing both files every epoch would cost a GPU run a tenth of its time)."""
        history = self.state.history
        evaluated = next((h for h in reversed(history) if h.get("confusion_matrix") is not None), None)
        if evaluated is not None:
            self._save_confusion_figure(evaluated)
        if history and history[-1]["covariance_spectrum"]:
            self._save_spectrum_figure(history[-1])

    def _save_confusion_figure(self, entry):
        title = f"confusion matrix (%), epoch {entry['epoch'] + 1}"
        save_figure(confusion_figure(entry["confusion_matrix"], self.data.class_names, title),
                    self.out_dir / "confusion_matrix")

    def _save_spectrum_figure(self, entry):
        row = short_name(row_name(self.args.method, self.args.loss, self.args.recipe))
        name, images = self.data.class_names[self.rarest], self.data.cls_num_list[self.rarest]
        title = f"rarest class '{name}' ({images} training images)"
        series = spectrum_series(entry["covariance_spectrum"], row, entry["epoch"] + 1)
        save_figure(spectrum_figure(series, title), self.out_dir / "covariance_spectrum")

    def _interrupted(self, stop, started):
        self.state.elapsed = time.time() - started
        save_checkpoint(self._checkpoint(), self.last_path)
        self.log(interrupt_message(stop, self.state, "iteration", self.last_path), error=True)
        return stop.exit_code()

    def _write_result(self, started):
        args, state = self.args, self.state
        history = [dict(h, epoch=h["epoch"] + 1) for h in state.history]  # 1-based, as printed
        final = history[-1]
        best_epoch = None if state.best_epoch is None else state.best_epoch + 1
        best = next((h for h in history if h["epoch"] == best_epoch), final)
        result = dict(config=vars(args), commit=state.commits[0], commits=state.commits, seed=args.seed,
                      base_loss=args.loss, device=str(self.device), cls_num_list=self.data.cls_num_list,
                      train_index_sha256=self.train_index_sha256, class_names=self.data.class_names,
                      epoch_numbering="1-based: epoch 1 is the first epoch trained, final_epoch = --epochs; "
                                      "best_epoch, evaluated_epochs and history[].epoch likewise",
                      final_epoch=final["epoch"], final_top1_error=100 - final["test_top1"],
                      best_epoch=best["epoch"], best_top1_error=100 - best["test_top1"],
                      per_class_accuracy=final["per_class_accuracy"], shot_accuracy=final["shot_accuracy"],
                      best_per_class_accuracy=best["per_class_accuracy"], best_shot_accuracy=best["shot_accuracy"],
                      confusion_matrix=final["confusion_matrix"], covariance_spectrum=final["covariance_spectrum"],
                      evaluated_epochs=[h["epoch"] for h in history if "test_top1" in h],
                      test_images=self.epoch_images()[1], test_set_images=len(self.data.test_labels),
                      wall_time_s=time.time() - started, history=history)
        path = self.out_dir / "result.json"
        save_json(result, path)
        self.log(f"final top-1 error {result['final_top1_error']:.2f} (epoch {final['epoch']}), "
                 f"best {result['best_top1_error']:.2f} (epoch {best['epoch']}); wrote {path}")
        return 0


def main(prog, description, losses, argv=None):
    args = parse_args(prog, description, losses, argv)
    try:
        validate_args(args)
        resolve_device("cpu" if args.no_cuda else args.device, args.gpu)
        with RunLock(args.checkpoint_dir, args.save_name):
            stale = files_to_clear(args, run_checkpoints(args))
            warning = second_phase_warning(args)
            if warning:
                print(f"{prog}: {warning}", file=sys.stderr, flush=True)
            resume_state = init_state = None
            if args.resume:
                resume_state = load_checkpoint(args.resume)
                check_resume(args, resume_state, RESUME_MUST_MATCH, prog)
            elif args.init_from:
                init_state = load_checkpoint(args.init_from)
                check_init_from(args, init_state)
            args.data_root = args.data_root or str(Path("data") / args.dataset)
            data = build_dataset(args.data_root, args.dataset, args.num_meta, args.imb_factor, args.imb_profile,
                                 args.num_classes, args.download, args.workers, args.subset)
            run = Run(args, data, resume_state, init_state)
            del resume_state, init_state
            clear_files(stale, args.save_name)
            return run.fit(StopRequest(args.stop_after))
    except (UsageError, DataError, CheckpointError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 3

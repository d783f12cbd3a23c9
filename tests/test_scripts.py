"""End-to-end tests of the command-line scripts on a tiny generated image-folder dataset.

The training scripts and MetaSAug_test.py run as subprocesses with ``sys.executable``, exactly as
a user runs them. The many bad-input cases call the same ``main`` functions in-process (a fresh
interpreter costs seconds of torch import each); a few of them also go through the real scripts.
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (CE, ENV, EPOCHS, ITERATIONS, LDAM, NUM_CLASSES, REPO_ROOT, TEST, TIMEOUT, assert_ok,
                      assert_one_line_error, assert_tensors_equal, call_main, command, load, make_tree, run_script,
                      run_together, snapshot, train_flags, training_run, untimed)

import MetaSAug_test
import cifar_flags
import trainer
from checkpoint import RunLock, load_model_state
from data_utils import load_split, normalize
from metrics import per_class_accuracy, predict, top1_accuracy
from resnet import ResNet32

# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree10(tmp_path_factory):
    """10 classes, as MetaSAug_test.py --dataset cifar10 requires."""
    return make_tree(tmp_path_factory.mktemp("data") / "tree10", 10, train=6, test=10, seed=1)


@pytest.fixture(scope="module")
def ce_run(tree4, tmp_path_factory):
    """One uninterrupted CE run, shared: end-to-end checks, reference of the resume test, bad --resume."""
    base = tmp_path_factory.mktemp("ce")
    run = training_run(CE, train_flags(tree4, base), base)
    assert_ok(run.proc)
    return run


# ---------------------------------------------------------------------------------------------
# 1. The training scripts end to end
# ---------------------------------------------------------------------------------------------

VARIANTS = {
    "ce-focal": (CE, ["--loss", "focal"]),
    "ldam": (LDAM, []),
    "lookahead-classifier": (CE, ["--lookahead", "classifier"]),
    "double-backward": (LDAM, ["--meta_gradient", "double_backward"]),
}

EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+) (.+?) \| loss (\S+) \| train acc (\S+) \| test top-1 (\S+) "
                        r"\(best (\S+), epoch (\d+)\) \| lr (\S+) \| (\d+) img/s \| elapsed (\S+) (min|h) \| "
                        r"ETA (\S+) (min|h)$")
RESUME_KEYS = {"iteration", "best_epoch", "criterion", "history", "epoch_sums", "elapsed", "config",
               "cls_num_list"}


def check_complete_run(run, iterations=ITERATIONS):
    assert_ok(run.proc)
    # Checkpoints: the released keys plus what --resume needs, loadable without pickle code.
    assert run.ckpt.is_file() and run.best.is_file()
    state = load(run.ckpt)
    assert {"epoch", "state_dict", "best_acc1", "optimizer"} | RESUME_KEYS <= set(state)
    assert state["epoch"] == EPOCHS and state["iteration"] == 0
    model = ResNet32(NUM_CLASSES)
    load_model_state(model, state["state_dict"])
    best = load(run.best)
    assert best["epoch"] == best["best_epoch"] + 1 and best["best_acc1"] == state["best_acc1"]

    # result.json
    result = json.loads((run.out / "result.json").read_text())
    for key in ("config", "commit", "seed", "final_top1_error", "best_top1_error", "best_epoch",
                "per_class_accuracy", "shot_accuracy", "wall_time_s", "history"):
        assert key in result, key
    assert result["config"] == state["config"] and result["config"]["epochs"] == EPOCHS
    in_git = (REPO_ROOT / ".git").exists()  # a copy of the code outside git records no commit
    assert (re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", result["commit"]) if in_git else result["commit"] is None)
    assert result["commits"] == [result["commit"]]
    assert result["seed"] == 42
    history = result["history"]
    assert result["epoch_numbering"].startswith("1-based")
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)) == result["evaluated_epochs"]
    assert result["final_epoch"] == EPOCHS
    accuracies = [h["test_top1"] for h in history]
    assert result["final_top1_error"] == pytest.approx(100 - accuracies[-1])
    assert result["best_epoch"] == accuracies.index(max(accuracies)) + 1 == best["best_epoch"] + 1
    assert result["best_top1_error"] == pytest.approx(100 - max(accuracies))
    assert best["best_acc1"] == pytest.approx(max(accuracies))
    assert len(result["per_class_accuracy"]) == NUM_CLASSES
    assert set(result["shot_accuracy"]) == {"many", "medium", "few"}
    assert result["wall_time_s"] > 0
    assert result["test_images"] == result["test_set_images"] == NUM_CLASSES * 10
    assert all(h["train_time_s"] > 0 and h["images_per_s"] > 0 and h["eval_time_s"] > 0 for h in history)
    assert list(run.out.glob("events.out.tfevents.*")), "no TensorBoard events file"

    # The log (stdout, and the same lines in train.log): one progress line per iteration (--print-freq 1),
    # one summary line per epoch, every epoch counted from 1.
    lines = run.proc.stdout.splitlines()
    assert (run.out / "train.log").read_text().splitlines() == lines
    assert lines[1].startswith("expected: about ") and f"epochs 1-{EPOCHS} (epochs 1-1 " in lines[1]
    progress = [line for line in lines if line.startswith("  epoch ")]
    assert len(progress) == EPOCHS * iterations
    assert progress[0].startswith(f"  epoch 1 iter 1/{iterations} loss ")
    assert progress[iterations].startswith(f"  epoch 2 iter 1/{iterations} loss ")
    summaries = [EPOCH_LINE.match(line) for line in lines if line.startswith("Epoch ")]
    assert len(summaries) == EPOCHS and all(summaries), lines
    for match, entry in zip(summaries, history):
        assert int(match[1]) == entry["epoch"] and int(match[2]) == EPOCHS
        assert float(match[4]) == pytest.approx(entry["train_loss"], abs=1e-4)
        assert float(match[5]) == pytest.approx(entry["train_acc"], abs=5e-3)
        assert float(match[6]) == pytest.approx(entry["test_top1"], abs=5e-3)
        assert float(match[9]) == pytest.approx(entry["lr"])
        assert int(match[10]) == round(entry["images_per_s"])
    assert summaries[-1][13] == "0.0" and lines[-1].startswith("final top-1 error ")  # nothing left: ETA 0
    return state, result


def test_ce_run_end_to_end(ce_run):
    check_complete_run(ce_run)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_variant_end_to_end(variant, tree4, tmp_path):
    script, extra = VARIANTS[variant]
    run = training_run(script, train_flags(tree4, tmp_path) + extra + ["--max_train_batches", 4], tmp_path)
    state, result = check_complete_run(run, iterations=4)
    assert result["base_loss"] == ("ldam" if script == LDAM else "focal" if "focal" in extra else "ce")
    for flag, value in zip(extra[::2], extra[1::2]):  # the variant's flags reached the run
        assert str(state["config"][flag.lstrip("-")]) == value == str(result["config"][flag.lstrip("-")])


def test_ce_run_tensorboard_scalars(ce_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    history = json.loads((ce_run.out / "result.json").read_text())["history"]
    events = EventAccumulator(str(ce_run.out))
    events.Reload()
    top1 = events.Scalars("test/top1")
    assert [e.step for e in top1] == list(range(1, EPOCHS + 1))  # the 1-based epoch, as printed
    assert [e.value for e in top1] == pytest.approx([h["test_top1"] for h in history], abs=1e-4)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([h["lr"] for h in history])


# ---------------------------------------------------------------------------------------------
# 2. The released command line
# ---------------------------------------------------------------------------------------------

RELEASED_LDAM = ("--gpu 0 --lr 0.1 --lam 0.75 --imb_factor 0.05 --dataset cifar100 --num_classes 100 "
                 "--save_name MetaSAug_cifar100_LDAM_imb0.05 --idx 1")

# Defaults of the authors' MetaSAug_LDAM_train.py (BIT-DA/MetaSAug).
RELEASED_DEFAULTS = dict(dataset="cifar100", batch_size=100, num_meta=10, imb_factor=0.005,
                         test_batch_size=100, epochs=200, lr=0.1, momentum=0.9, nesterov=True,
                         weight_decay=5e-4, no_cuda=False, split=1000, seed=42, print_freq=100, lam=0.25,
                         gpu=0, meta_lr=0.1, save_name="name", idx="0")
ADDED_DEFAULTS = dict(meta_start=160, lr_milestones=[160, 180], checkpoint_dir="checkpoints", lookahead="all",
                      meta_gradient="jvp", resume=None)


def test_released_ldam_command_line_parses_unchanged():
    args = cifar_flags.build_parser(LDAM, "d", ("ldam",)).parse_args(RELEASED_LDAM.split())
    assert (args.gpu, args.lr, args.lam, args.imb_factor, args.dataset, args.num_classes, args.save_name,
            args.idx) == (0, 0.1, 0.75, 0.05, "cifar100", 100, "MetaSAug_cifar100_LDAM_imb0.05", "1")
    assert args.loss == "ldam"  # the LDAM script's one base loss, no --loss flag


@pytest.mark.parametrize("losses", [("ce", "focal"), ("ldam",)], ids=["ce", "ldam"])
def test_released_and_added_flags_and_defaults(losses):
    args = vars(cifar_flags.build_parser("prog", "d", losses).parse_args([]))
    assert {k: args[k] for k in RELEASED_DEFAULTS} == RELEASED_DEFAULTS
    assert {k: args[k] for k in ADDED_DEFAULTS} == ADDED_DEFAULTS
    assert args["loss"] == losses[0]
    assert args["num_classes"] is None  # the dataset's: 100 for the released default cifar100
    parsed = cifar_flags.build_parser("prog", "d", losses).parse_args([])
    cifar_flags.validate_args(parsed)
    assert parsed.num_classes == 100
    parsed = cifar_flags.build_parser("prog", "d", losses).parse_args(["--dataset", "cifar10"])
    cifar_flags.validate_args(parsed)
    assert parsed.num_classes == 10


def test_released_flag_aliases():
    args = cifar_flags.build_parser("prog", "d", ("ce", "focal")).parse_args(
        "--learning-rate 0.05 --wd 1e-4 -p 7 --batch-size 64 --test-batch-size 50 --no-cuda --nesterov false".split())
    assert (args.lr, args.weight_decay, args.print_freq, args.batch_size, args.test_batch_size, args.no_cuda,
            args.nesterov) == (0.05, 1e-4, 7, 64, 50, True, False)


# ---------------------------------------------------------------------------------------------
# 3. Learning-rate schedule and the released off-by-one
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch, optimizer_lr, lookahead_lr", [
    (0, 0.1, 0.1), (158, 0.1, 0.1), (159, 1e-3, 0.1), (160, 1e-3, 1e-3),
    (178, 1e-3, 1e-3), (179, 1e-5, 1e-3), (180, 1e-5, 1e-5), (199, 1e-5, 1e-5)])
def test_learning_rate_schedule_and_off_by_one(epoch, optimizer_lr, lookahead_lr):
    # The released loop calls adjust_learning_rate(optimizer, epoch + 1); the lookahead uses epoch.
    assert trainer.learning_rate(epoch + 1, 0.1, [160, 180]) == pytest.approx(optimizer_lr, rel=1e-12)
    assert trainer.learning_rate(epoch, 0.1, [160, 180]) == pytest.approx(lookahead_lr, rel=1e-12)


def test_learning_rate_without_milestones():
    assert trainer.learning_rate(500, 0.2, []) == 0.2


def test_training_applies_the_off_by_one(ce_run):
    # --lr_milestones 2: epoch 1 already trains at lr(2) = 0.001, not at 0.1.
    history = json.loads((ce_run.out / "result.json").read_text())["history"]
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.001, 0.001])
    groups = load(ce_run.ckpt)["optimizer"]["param_groups"]
    assert all(g["lr"] == pytest.approx(0.001) for g in groups)


# ---------------------------------------------------------------------------------------------
# 4. MetaSAug_test.py on the released checkpoint layout
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ce_run10(tree10, tmp_path_factory):
    """A short CE run on 10 classes (what MetaSAug_test.py --dataset cifar10 evaluates); long enough
    that the model's predictions are not all one class, so equal accuracies mean something."""
    base = tmp_path_factory.mktemp("ce10")
    flags = train_flags(tree10, base, num_classes=10) + ["--dataset", "cifar10", "--num_meta", 1, "--imb_factor",
                                                         0.5, "--meta_start", EPOCHS, "--lr", 0.02]
    run = training_run(CE, flags, base)
    assert_ok(run.proc)
    return run


def released_checkpoint(state, prefix=""):
    """The authors' layout: four keys, no BatchNorm num_batches_tracked; optional DataParallel prefix."""
    state_dict = {prefix + k: v for k, v in state["state_dict"].items() if not k.endswith("num_batches_tracked")}
    return {"epoch": state["epoch"], "state_dict": state_dict, "best_acc1": state["best_acc1"],
            "optimizer": state["optimizer"]}


@pytest.mark.parametrize("prefix", ["", "module."], ids=["released", "dataparallel"])
def test_test_script_predicts_like_the_model_that_wrote_the_checkpoint(ce_run10, tree10, tmp_path, prefix):
    state = load(ce_run10.ckpt)
    released = released_checkpoint(state, prefix)
    assert not any("num_batches_tracked" in k for k in released["state_dict"])
    path = tmp_path / "released.pth.tar"
    torch.save(released, path)

    proc = run_script(TEST, ["--checkpoint_path", path, "--dataset", "cifar10", "--data_root", tree10,
                             "--imb_factor", 0.5, "--num_meta", 1, "--device", "cpu", "--workers", 1,
                             "--test-batch-size", 16], cwd=tmp_path)
    assert_ok(proc)

    model = ResNet32(10)
    model.load_state_dict(state["state_dict"])  # the trainer's own model, num_batches_tracked and all
    images, labels, names = load_split(tree10, "test")
    predictions = predict(model, images, 16, normalize)
    assert len(predictions.unique()) > 2, "degenerate model: the comparison below would prove little"
    accuracy = top1_accuracy(predictions, labels)
    per_class = per_class_accuracy(predictions, labels, 10)
    printed = re.search(r"Accuracy: ([\d.]+)", proc.stdout)
    assert printed, proc.stdout
    assert printed[1] == f"{accuracy:.2f}"
    assert re.search(r"Error: ([\d.]+)", proc.stdout)[1] == f"{100 - accuracy:.2f}"
    expected = "Per-class accuracy: " + ", ".join(f"{n} {a:.2f}" for n, a in zip(names, per_class))
    assert expected in proc.stdout.splitlines()


# ---------------------------------------------------------------------------------------------
# 5. Bad input: exit code 2, one line on stderr, nothing written
# ---------------------------------------------------------------------------------------------

def ce_main(argv):
    return trainer.main(CE, "d", ("ce", "focal"), argv)


@pytest.fixture
def bad_inputs(tmp_path, tree4, ce_run):
    """The inputs the bad-input cases point at, all under tmp_path (snapshotted before and after)."""
    inputs = tmp_path / "inputs"
    (inputs / "empty").mkdir(parents=True)
    other = inputs / "other_layout"
    (other / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "images" / "a.png")
    (other / "README.txt").write_text("not a dataset\n")
    good = ce_run.ckpt.read_bytes()
    (inputs / "truncated.pth.tar").write_bytes(good[:len(good) // 2])
    (inputs / "notes.txt").write_text("epoch 3 best 0.5\nthis is not a checkpoint\n")
    (inputs / "good.pth.tar").write_bytes(good)
    torch.save(released_checkpoint(load(ce_run.ckpt)), inputs / "released.pth.tar")
    phase1 = ce_run.base / "ckpt" / "tiny_phase1.pth.tar"
    (inputs / "phase1.pth.tar").write_bytes(phase1.read_bytes())
    torch.save({**load(phase1), "train_index_sha256": "0" * 64}, inputs / "phase1_other_subset.pth.tar")
    return inputs


TRAIN_BAD_INPUTS = {
    "missing-data-root": (["--data_root", "{inputs}/nope"], r"--data_root .*nope does not exist"),
    "empty-data-root": (["--data_root", "{inputs}/empty"], r"holds neither train/<class>/"),
    "neither-layout": (["--data_root", "{inputs}/other_layout"], r"holds neither train/<class>/"),
    "imb-factor-0": (["--imb_factor", "0"], r"--imb_factor must be in \(0, 1\]"),
    "imb-factor-1.5": (["--imb_factor", "1.5"], r"--imb_factor must be in \(0, 1\]"),
    "num-meta-too-large": (["--num_meta", "40"], r"has 40 training images but --num_meta 40 needs at least 41"),
    "num-classes-disagree": (["--num_classes", "5"], r"holds 4 classes but --num_classes is 5 \(--dataset "
                                                     r"cifar100\); pass --num_classes 4"),
    "num-classes-of-another-dataset": (["--num_classes", "10"], r"--num_classes 10 is cifar10's class count but "
                                                                r"--dataset is cifar100; pass --dataset cifar10"),
    "unknown-dataset": (["--dataset", "imagenet"], r"argument --dataset: invalid choice: 'imagenet'"),
    "resume-missing": (["--resume", "{inputs}/nope.pth.tar"], r"nope\.pth\.tar does not exist"),
    "resume-truncated": (["--resume", "{inputs}/truncated.pth.tar"], r"not a readable PyTorch checkpoint"),
    "resume-text-file": (["--resume", "{inputs}/notes.txt"], r"not a readable PyTorch checkpoint"),
    "resume-released-layout": (["--resume", "{inputs}/released.pth.tar"], r"not a training checkpoint"),
    "resume-other-flags": (["--resume", "{inputs}/good.pth.tar", "--lam", "0.5"],
                           r"was written with other flags \(--lam 0\.5 vs 0\.25\)"),
    "init-from-other-seed": (["--init_from", "{inputs}/phase1.pth.tar", "--seed", "3"],
                             r"is another first phase \(--seed 3 vs 42\); pass its values"),
    "init-from-other-first-phase-loss": (["--init_from", "{inputs}/phase1.pth.tar", "--method", "plain", "--loss",
                                          "focal"], r"another first phase \(first-phase loss focal loss \(gamma "
                                                    r"1\.0\) vs cross-entropy\)"),
    "init-from-other-subset": (["--init_from", "{inputs}/phase1_other_subset.pth.tar"],
                               r"trained on another long-tail subset"),
    "init-from-mid-run": (["--init_from", "{inputs}/good.pth.tar"],
                          r"holds the state after 3 epochs and 0 iterations, not the end of the first phase "
                          r"\(1 epochs\)"),
    "init-from-released-layout": (["--init_from", "{inputs}/released.pth.tar"], r"is not a first-phase checkpoint"),
    "carry-cv-without-meta-step": (["--carry_cv", "--method", "isda"],
                                   r"change the meta step, which --method isda does not take"),
    "lookahead-lr-without-meta-step": (["--lookahead_lr", "0.1", "--method", "plain"],
                                       r"change the meta step, which --method plain does not take"),
    "lookahead-lr-0": (["--lookahead_lr", "0"], r"--lookahead_lr must be positive, got 0\.0"),
    "branch-seed-negative": (["--branch_seed", "-1"], r"--branch_seed must not be negative, got -1"),
    "resume-other-branch-seed": (["--resume", "{inputs}/good.pth.tar", "--branch_seed", "2"],
                                 r"was written with other flags \(--branch_seed 2 vs 0\)"),
}


def bad_argv(tree4, tmp_path, inputs, case):
    extra, pattern = TRAIN_BAD_INPUTS[case]
    extra = [a.format(inputs=inputs) for a in extra]
    return train_flags(tree4, tmp_path) + extra, pattern  # later flags win


@pytest.mark.parametrize("case", TRAIN_BAD_INPUTS)
def test_training_bad_input(case, tree4, tmp_path, bad_inputs, capsys):
    argv, pattern = bad_argv(tree4, tmp_path, bad_inputs, case)
    before = snapshot(tmp_path)
    code, err, shown = call_main(ce_main, argv, capsys)
    assert_one_line_error(code, err, pattern)
    assert err.startswith(f"{CE}: error: ")
    assert shown == []
    assert snapshot(tmp_path) == before  # no checkpoint_dir, no out_dir, inputs untouched


def test_cifar10_data_under_the_default_dataset_is_told_to_pass_dataset_cifar10(tree10, tmp_path, capsys):
    """The released default --dataset is cifar100: its advice must lead to a run recorded as cifar10."""
    argv = train_flags(tree10, tmp_path, num_classes=10)
    argv.pop(argv.index("--num_classes") + 1)
    argv.remove("--num_classes")
    before = snapshot(tmp_path)
    code, err, _ = call_main(ce_main, argv, capsys)
    assert_one_line_error(code, err, r"holds 10 classes but --num_classes is 100 \(--dataset cifar100\); pass "
                                     r"--dataset cifar10 or fix the data")
    assert snapshot(tmp_path) == before


def test_test_script_refuses_flags_that_contradict_the_checkpoint(ce_run, tree10, tmp_path, capsys):
    before = snapshot(tmp_path)
    for flags, pattern in ((["--dataset", "cifar10"], r"--dataset cifar10 contradicts the checkpoint, trained with "
                                                      r"--dataset cifar100; drop the flag"),
                           (["--imb_factor", "0.02"], r"--imb_factor 0.02 contradicts the checkpoint, trained with "
                                                      r"--imb_factor 0.1")):
        code, err, shown = call_main(MetaSAug_test.main, ["--checkpoint_path", ce_run.ckpt, "--data_root", tree10,
                                                          "--device", "cpu", *flags], capsys)
        assert_one_line_error(code, err, pattern)
    # A released checkpoint records nothing: the flags decide, and a wrong --dataset shows in the shapes.
    released = tmp_path / "released.pth.tar"
    torch.save(released_checkpoint(load(ce_run.ckpt)), released)
    before = snapshot(tmp_path)
    code, err, shown = call_main(MetaSAug_test.main, ["--checkpoint_path", released, "--dataset", "cifar10",
                                                      "--data_root", tree10, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, r"linear\.weight has shape \[4, 64\] but the model expects \[10, 64\]; "
                                     r"check --num_classes / --dataset")
    assert shown == [] and snapshot(tmp_path) == before


def test_test_script_reads_dataset_and_imbalance_from_the_checkpoint(ce_run10, tree10, tmp_path):
    proc = run_script(TEST, ["--checkpoint_path", ce_run10.ckpt, "--data_root", tree10, "--device", "cpu",
                             "--workers", 1], cwd=tmp_path)
    assert_ok(proc)
    assert "Dataset: cifar10\tImb_factor: 2\t" in proc.stdout  # trained with --dataset cifar10 --imb_factor 0.5


@pytest.mark.parametrize("script, case", [(CE, "missing-data-root"), (LDAM, "unknown-dataset"),
                                          (CE, "resume-text-file"), (LDAM, "resume-truncated")])
def test_bad_input_through_the_real_script(script, case, tree4, tmp_path, bad_inputs):
    argv, pattern = bad_argv(tree4, tmp_path, bad_inputs, case)
    before = snapshot(tmp_path)
    proc = run_script(script, argv, cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, pattern)
    assert proc.stderr.startswith(f"{script}: error: ")
    assert snapshot(tmp_path) == before  # nor runs/ in the working directory


def test_test_script_bad_checkpoint_through_the_real_script(ce_run, tree10, tmp_path):
    before = snapshot(tmp_path)
    proc = run_script(TEST, ["--checkpoint_path", ce_run.ckpt, "--dataset", "cifar10", "--data_root", tree10,
                             "--device", "cpu"], cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, r"--dataset cifar10 contradicts the checkpoint")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 6. SIGTERM mid-epoch, then --resume, ends bit-identical
# ---------------------------------------------------------------------------------------------

class LineReader:
    """Reads a process's stdout on a thread, so the test can wait for a line with a timeout."""

    def __init__(self, stream):
        self.lines, self.seen = queue.Queue(), []
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream):
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the process ended before printing {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if re.match(pattern, line):
                return line
        raise AssertionError(f"no line {pattern!r} within {timeout} s:\n{''.join(self.seen)}")

    def rest(self, timeout):
        self.thread.join(timeout)
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


def test_sigterm_mid_epoch_then_resume_is_bit_identical(ce_run, tree4, tmp_path):
    flags = train_flags(tree4, tmp_path)  # same flags as ce_run, other checkpoint_dir and out_dir
    ckpt = tmp_path / "ckpt" / "tiny_ckpt.pth.tar"
    assert ckpt != ce_run.ckpt
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(command(CE, flags), cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr,
                                text=True, env=ENV)
    try:
        reader = LineReader(proc.stdout)
        reader.wait_for(r"  epoch 2 iter 3/", timeout=TIMEOUT)  # inside the MetaSAug phase (epochs 2-3)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = reader.rest(timeout=10)
    err = stderr_path.read_text()
    assert_one_line_error(code, err, rf"interrupted by signal 15 .*Resume with the same flags plus "
                                     rf"--resume {re.escape(str(ckpt))}", expected_code=128 + signal.SIGTERM)
    assert not (tmp_path / "out" / "result.json").exists()
    interrupted = load(ckpt)
    position = (interrupted["epoch"], interrupted["iteration"])
    assert interrupted["epoch"] >= 1 and 0 < interrupted["iteration"] < ITERATIONS, position
    assert f"  epoch {position[0] + 1} iter {position[1]}/{ITERATIONS} " in stdout  # 1-based, as printed
    assert f"in epoch {position[0] + 1} after iteration {position[1]};" in err

    resumed = run_script(CE, flags + ["--resume", ckpt], cwd=tmp_path)
    assert_ok(resumed)
    lines = resumed.stdout.splitlines()
    assert lines[1] == f"resumed at epoch {position[0] + 1}, iteration {position[1] + 1} from {ckpt}"
    first = next(line for line in lines if line.startswith("  epoch "))
    assert first.startswith(f"  epoch {position[0] + 1} iter {position[1] + 1}/{ITERATIONS} "), resumed.stdout
    log = (tmp_path / "out" / "train.log").read_text()  # one log across the interruption
    assert stdout in log and resumed.stdout in log and err.strip() in log

    a, b = load(ce_run.ckpt), load(ckpt)
    assert_tensors_equal(a["state_dict"], b["state_dict"], "state_dict")
    assert_tensors_equal(a["optimizer"], b["optimizer"], "optimizer")
    assert_tensors_equal(a["criterion"], b["criterion"], "criterion")
    assert a["criterion"]["estimator.covariance"].abs().sum() > 0  # the estimator did run
    assert_tensors_equal(a["epoch_sums"], b["epoch_sums"], "epoch_sums")
    assert (a["epoch"], a["iteration"], a["best_acc1"], a["best_epoch"]) == \
        (b["epoch"], b["iteration"], b["best_acc1"], b["best_epoch"])
    result_a = json.loads((ce_run.out / "result.json").read_text())
    result_b = json.loads((tmp_path / "out" / "result.json").read_text())
    for key in ("final_top1_error", "best_top1_error", "best_epoch", "per_class_accuracy"):
        assert result_a[key] == result_b[key], key
    assert untimed(result_a["history"]) == untimed(result_b["history"])


def test_stop_after_stops_resumably_and_the_resumed_run_is_bit_identical(ce_run, tree4, tmp_path):
    flags = train_flags(tree4, tmp_path)  # ce_run's flags, other checkpoint_dir and out_dir
    ckpt = tmp_path / "ckpt" / "tiny_ckpt.pth.tar"
    stopped = run_script(CE, flags + ["--stop_after", "1e-9"], cwd=tmp_path)
    assert_one_line_error(stopped.returncode, stopped.stderr,
                          rf"interrupted by --stop_after's time limit in epoch 1 after iteration 1; checkpoint "
                          rf"written\. Resume with the same flags plus --resume {re.escape(str(ckpt))}",
                          expected_code=75)
    assert_ok(run_script(CE, flags + ["--resume", ckpt], cwd=tmp_path))
    a, b = load(ce_run.ckpt), load(ckpt)
    for key in ("state_dict", "optimizer", "criterion", "epoch_sums", "meta_step_sums"):
        assert_tensors_equal(a[key], b[key], key)


def test_every_flag_takes_dashes_or_underscores_and_help_shows_one(tree4, tmp_path, capsys):
    declared = [str(f) for f in train_flags(tree4, tmp_path)] + ["--weight-decay", "0.001", "--meta_lr", "0.2"]
    swapped = [("--" + (f[2:].replace("_", "-") if "_" in f else f[2:].replace("-", "_"))) if f.startswith("--")
               else f for f in declared]
    assert swapped != declared
    parse = [cifar_flags.parse_args(CE, "d", ("ce", "focal"), argv) for argv in (declared, swapped)]
    assert vars(parse[0]) == vars(parse[1])
    with pytest.raises(SystemExit):
        cifar_flags.parse_args(CE, "d", ("ce", "focal"), ["--help"])
    help_text = capsys.readouterr().out
    assert "--imb_factor" in help_text and "--imb-factor" not in help_text
    assert "--batch-size" in help_text and "--batch_size" not in help_text


# ---------------------------------------------------------------------------------------------
# 7. A non-finite loss stops the run and keeps the last good checkpoint
# ---------------------------------------------------------------------------------------------

def test_non_finite_loss_stops_with_epoch_and_iteration(tree4, tmp_path):
    # ratio = lam * epoch / epochs: harmless in the CE epoch 0, overflowing at the first MetaSAug step.
    run = training_run(CE, train_flags(tree4, tmp_path) + ["--lam", "1e30"], tmp_path)
    assert_one_line_error(run.proc.returncode, run.proc.stderr,
                          r"non-finite training loss at epoch 2, iteration 1; .*last good checkpoint "
                          + re.escape(str(run.ckpt)), expected_code=3)
    assert "Epoch 1/3" in run.proc.stdout and "Epoch 2/3" not in run.proc.stdout
    state = load(run.ckpt)
    assert (state["epoch"], state["iteration"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    load_model_state(ResNet32(NUM_CLASSES), state["state_dict"])
    assert not (run.out / "result.json").exists()


# ---------------------------------------------------------------------------------------------
# 8. Branches from a shared first phase end bit-identical to training from scratch
# ---------------------------------------------------------------------------------------------

def test_branches_from_one_first_phase_equal_runs_from_scratch(tree4, tmp_path):
    # 2 first-phase epochs (the first not evaluated), then 2 second-phase epochs with a learning-rate step.
    schedule = ["--epochs", 4, "--meta_start", 2, "--lr_milestones", 3, "--eval_every", 2]

    def flags(method, name):
        return train_flags(tree4, tmp_path, name=name) + schedule + ["--method", method, "--out_dir",
                                                                      tmp_path / "out" / name]

    methods = ("metasaug", "isda", "plain")
    for proc in run_together([(CE, flags(m, f"scratch_{m}")) for m in methods], tmp_path):
        assert_ok(proc)
    phase1 = tmp_path / "ckpt" / "scratch_metasaug_phase1.pth.tar"
    assert load(phase1)["epoch"] == 2
    for proc in run_together([(CE, flags(m, f"branch_{m}") + ["--init_from", phase1]) for m in methods], tmp_path):
        assert_ok(proc)
        assert "Epoch 1/4" not in proc.stdout and "Epoch 3/4" in proc.stdout  # it did start at epoch 3

    for method in methods:
        a, b = (load(tmp_path / "ckpt" / f"{kind}_{method}_ckpt.pth.tar") for kind in ("scratch", "branch"))
        for key in ("state_dict", "optimizer", "criterion", "epoch_sums"):
            assert_tensors_equal(a[key], b[key], f"{method} {key}")
        assert (a["epoch"], a["best_acc1"], a["best_epoch"]) == (b["epoch"], b["best_acc1"], b["best_epoch"])
        result_a, result_b = (json.loads((tmp_path / "out" / f"{kind}_{method}" / "result.json").read_text())
                              for kind in ("scratch", "branch"))
        for key in ("final_top1_error", "best_top1_error", "best_epoch", "per_class_accuracy",
                    "evaluated_epochs", "train_index_sha256"):
            assert result_a[key] == result_b[key], (method, key)
        assert untimed(result_a["history"]) == untimed(result_b["history"]), method
        assert result_a["evaluated_epochs"] == [2, 3, 4]  # epoch 1 skipped by --eval_every 2
        assert result_b["config"]["init_from"] == str(phase1)
    isda = load(tmp_path / "ckpt" / "branch_isda_ckpt.pth.tar")
    assert isda["criterion"]["estimator.covariance"].abs().sum() > 0  # the second phase did differ by method
    assert not (tmp_path / "ckpt" / "branch_isda_phase1.pth.tar").exists()  # a branch has no first phase


# ---------------------------------------------------------------------------------------------
# 9. A run never overwrites another silently; defaults that follow --dataset; early and clear refusals
# ---------------------------------------------------------------------------------------------

def test_an_existing_run_is_refused_unless_resumed_or_overwritten(ce_run, tree4, capsys):
    flags = train_flags(tree4, ce_run.base)  # ce_run's own checkpoint_dir, out_dir and save_name
    before = snapshot(ce_run.base)
    code, err, _ = call_main(ce_main, flags, capsys)
    assert_one_line_error(code, err, rf"run 'tiny' already exists \(.*tiny_ckpt\.pth\.tar\); continue it with "
                                     rf"--resume {re.escape(str(ce_run.ckpt))} or start it afresh with --overwrite")
    code, err, _ = call_main(ce_main, flags + ["--resume", ce_run.ckpt, "--overwrite"], capsys)
    assert_one_line_error(code, err, r"--resume continues a run and --overwrite starts it afresh")
    assert snapshot(ce_run.base) == before


def test_a_run_another_process_is_training_is_refused_before_anything_is_read_or_written(ce_run, tree4, capsys):
    """Two processes on one run (a second sweep, a resume by hand) would interleave their checkpoints."""
    before = snapshot(ce_run.base)
    with RunLock(ce_run.ckpt.parent, "tiny"):
        code, err, _ = call_main(ce_main, train_flags(tree4, ce_run.base) + ["--resume", ce_run.ckpt], capsys)
    assert_one_line_error(code, err, rf"run 'tiny' is being trained by another process \(pid {os.getpid()} on .*"
                                     rf"tiny\.lock\); wait for it to end, or choose another --save_name")
    assert snapshot(ce_run.base) == before


def test_overwrite_starts_afresh_and_clears_the_old_run(tree4, tmp_path, capsys):
    flags = train_flags(tree4, tmp_path, epochs=2) + ["--max_train_batches", 1, "--method", "plain"]
    assert call_main(ce_main, flags, capsys)[0] == 0
    out = tmp_path / "out"
    first = json.loads((out / "result.json").read_text())
    (out / "notes.txt").write_text("mine")  # not the run's: stays
    code, err, _ = call_main(ce_main, flags + ["--lr", 0.05, "--overwrite"], capsys)
    assert code == 0, err
    second = json.loads((out / "result.json").read_text())
    assert first["config"]["lr"] == 0.1 and second["config"]["lr"] == 0.05
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # one run's events, not two configs mixed
    log = (out / "train.log").read_text()
    assert log.count("expected: about") == 1 and "lr 0.05" in log and "lr 0.1 " not in log
    assert (out / "notes.txt").read_text() == "mine"
    assert load(tmp_path / "ckpt" / "tiny_ckpt.pth.tar")["config"]["lr"] == 0.05


def test_stale_outputs_of_a_run_without_checkpoint_are_cleared(tree4, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.log").write_text("an attempt that crashed before its first epoch\n")
    (out / "events.out.tfevents.1.stale").write_bytes(b"x")
    (out / "covariance_spectrum.pdf").write_bytes(b"x")  # one first-phase epoch draws none: this one is stale
    code, err, _ = call_main(ce_main, train_flags(tree4, tmp_path, epochs=1) + ["--max_train_batches", 1], capsys)
    assert code == 0, err
    assert "crashed" not in (out / "train.log").read_text()
    assert not (out / "events.out.tfevents.1.stale").exists() and not (out / "covariance_spectrum.pdf").exists()


@pytest.mark.parametrize("method, warned", [("metasaug", True), ("isda", True), ("plain", False), ("cb", False)])
def test_a_second_phase_that_never_comes_is_a_warning(method, warned, tree4, tmp_path, capsys):
    flags = train_flags(tree4, tmp_path, epochs=1) + ["--max_train_batches", 1, "--method", method]
    code, err, _ = call_main(ce_main, flags + ["--meta_start", 1], capsys)  # epochs 1 <= meta_start 1
    assert code == 0, err
    expected = (f"{CE}: warning: --epochs 1 <= --meta_start 1: the second phase of --method {method} never "
                f"runs; lower --meta_start to train it")
    assert err.strip() == (expected if warned else "")


def test_class_count_is_checked_before_any_image_is_decoded(tree4, tmp_path, capsys):
    broken = tmp_path / "tree"
    shutil.copytree(tree4, broken)
    next((broken / "train" / "class00").iterdir()).write_bytes(b"not an image")
    flags = train_flags(broken, tmp_path) + ["--dataset", "cifar10"]
    flags.pop(flags.index("--num_classes") + 1)
    flags.remove("--num_classes")  # default: cifar10's 10
    code, err, _ = call_main(ce_main, flags, capsys)
    assert_one_line_error(code, err, r"holds 4 classes but --num_classes is 10")


def test_download_without_network_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torchvision.datasets.cifar

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    root = tmp_path / "cifar"
    flags = ["--data_root", root, "--download", "--dataset", "cifar10", "--device", "cpu",
             "--checkpoint_dir", tmp_path / "ckpt", "--out_dir", tmp_path / "out"]
    code, err, _ = call_main(ce_main, flags, capsys)
    assert_one_line_error(code, err, r"--download could not fetch cifar10 \(\[Errno -3\] Temporary failure in "
                                     r"name resolution\); without network, put the CIFAR python files")
    assert list(tmp_path.iterdir()) == []

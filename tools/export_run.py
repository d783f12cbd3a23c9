"""Copy a finished CIFAR run, or a first phase, into the repository's results/ with what re-checks it.

    python tools/export_run.py RUN_OUT_DIR CHECKPOINT DEST [--first_phase FIRST_PHASE_DEST]

writes DEST/result.json, train.log and notes (no figures and no TensorBoard event files, about 1.4 MB a run:
result.json holds their numbers, and tools/tensorboard_logs.py writes TensorBoard logs from its history), the
final weights as a plain state_dict (DEST/model.pth, about 1.9 MB for ResNet-32), the loss
module's final state (DEST/criterion.pth: the estimator's covariances, about 170 kB, which
tools/meta_step_size.py reads), and
DEST/README.md: the command that trained the run (the dataset, imbalance and seed, and every other flag that
differs from its default), the commits that trained it, the command that evaluates model.pth to the accuracy
in result.json (tests/test_results.py runs it) and the one that measures the meta step on criterion.pth. A
run branched from a committed first phase names it (``--first_phase``, checked against the run's history)
and its command branches from it.

A first phase (CHECKPOINT a <save_name>_phase1.pth.tar, or the last checkpoint of a --first_phase_only run)
becomes DEST/phase1.pth: exactly what --init_from reads (weights, optimizer state, position, history, the
run state and config; not the loss module, which a branch builds afresh), about 3.9 MB for ResNet-32, with
its train.log and notes, and a README with the command that trains it and one that branches from it.
"""
import json
import os
import shlex
import shutil
import sys
from dataclasses import fields
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import MetaSAug_CE_train  # noqa: E402
import MetaSAug_LDAM_train  # noqa: E402
from checkpoint import CheckpointError, RunState, load_checkpoint, save_checkpoint  # noqa: E402
from cifar_flags import RECIPES, build_parser, first_phase_loss  # noqa: E402
from cli import OneLineParser  # noqa: E402
from methods import ROWS  # noqa: E402

# figures and TensorBoard events stay out of results/: result.json holds their numbers (tools/tensorboard_logs.py)
COPIED = ("result.json", "train.log", "stdout.log", "NOTES.txt")
MACHINE_SPECIFIC = ("data_root", "checkpoint_dir", "out_dir", "resume", "init_from", "workers", "device", "gpu",
                    "no_cuda", "print_freq", "overwrite", "download")


ALWAYS_SAID = ("dataset", "imb_factor", "seed")  # said even at their defaults: what a reader looks for first
GPU_NOTE = (" on a GPU (on a CPU it may differ by a few of the 10,000 test images: cuDNN's convolutions, TF32 by "
            "PyTorch's default, round differently)")


def data_root(config):
    """The --data_root the exported commands name: the training scripts' default folder of the run's dataset."""
    return f"data/{config['dataset']}"


def recipe_flag(config):
    """What MetaSAug_test.py needs to be told of a plain model.pth: its recipe (classifier, normalisation), where
    not the released one."""
    recipe = config.get("recipe", "released")
    return [] if recipe == "released" else ["--recipe", recipe]


def training_command(config, base_loss):
    """The script and every flag of ``config`` that differs from its default (paths left out)."""
    module = next(m for m in (MetaSAug_CE_train, MetaSAug_LDAM_train) if base_loss in m.LOSSES)  # the one offering it
    script = module.__name__
    parser = build_parser(script + ".py", "", module.LOSSES)
    parser.set_defaults(**RECIPES[config.get("recipe", "released")].flags)  # what --recipe sets need not be said
    words = [f"{script}.py"]
    for action in parser._actions:
        name = action.dest
        if not action.option_strings or name in MACHINE_SPECIFIC or name not in config:
            continue
        value = config[name]
        if name not in ALWAYS_SAID and (value == action.default or (name == "num_classes" and action.default is None)):
            continue
        flag = next(option for option in action.option_strings if option.startswith("--"))
        if action.nargs == 0:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


# What a branch reads of a first-phase checkpoint (trainer.Run._restore and cifar_flags.check_init_from,
# RunState's fields).
FIRST_PHASE_KEYS = ("state_dict", "optimizer", "config", "base_loss", "cls_num_list", "train_index_sha256",
                    *(f.name for f in fields(RunState)))
UNTIMED = ("train_time_s", "eval_time_s", "images_per_s")


def is_first_phase(checkpoint):
    config = checkpoint.get("config", {})
    return (checkpoint.get("epoch"), checkpoint.get("iteration")) == (config.get("meta_start"), 0)


def copy_run_files(run_dir, dest):
    if dest.exists():
        raise CheckpointError(f"{dest} exists; remove it first")
    dest.mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)


def untimed(history):
    return [{k: v for k, v in entry.items() if k not in UNTIMED and k != "confusion_matrix"} for entry in history]


def branch_source(result, first_phase):
    """The words and --init_from path of the committed first phase ``first_phase`` the run branched from,
    after checking that the run's history up to the branch point is that first phase's."""
    if first_phase is None:
        return None
    phase1 = load_checkpoint(Path(first_phase) / "phase1.pth")
    ours = [dict(h, epoch=h["epoch"] - 1) for h in result["history"][:phase1["epoch"]]]  # result.json is 1-based
    if not result["config"].get("init_from") or untimed(ours) != untimed(phase1["history"]):
        raise CheckpointError(f"the run did not branch from the first phase in {first_phase} (its history up to "
                              f"epoch {phase1['epoch']} differs); export it without --first_phase")
    return str(Path(first_phase) / "phase1.pth")


def rows_branching_from(config, base_loss, loss):
    """The paper's rows of ``base_loss`` and the run's recipe whose first phase trains ``loss``: those that branch
    from this first phase (a shared cross-entropy one serves the other base losses' augmented rows too)."""
    return [row for row in ROWS.values() if row.loss == base_loss and row.recipe == config.get("recipe", "released")
            and first_phase_loss(row.method, row.loss, config.get("beta"), config.get("max_m"),
                                 config.get("gamma")) == loss]


def export_first_phase(run_dir, checkpoint, dest):
    copy_run_files(run_dir, dest)
    save_checkpoint({key: checkpoint[key] for key in FIRST_PHASE_KEYS}, dest / "phase1.pth")
    config, base = checkpoint["config"], checkpoint["base_loss"]
    loss = first_phase_loss(config["method"], base, config.get("beta"), config.get("max_m"), config.get("gamma"))
    shared = loss == "cross-entropy"  # what CE and the augmented rows train first; another is its own row's
    rows = rows_branching_from(config, base, loss)
    # the example branch: a row of another method than the first phase's own where there is one
    example = next((row for row in rows if row.method != config["method"]), rows[0] if rows else None)
    method, stem = (example.method, example.stem) if example else (config["method"], f"{config['method']}_{base}")
    train = training_command({**config, "first_phase_only": True}, base)
    name = f"{config['dataset']}_{stem}_imb{config['imb_factor']}_seed{config['seed']}"
    branch = training_command({**config, "first_phase_only": False, "method": method, "save_name": name}, base)
    last = checkpoint["history"][-1]
    data = data_root(config)
    train = shlex.join(["python", *train, "--data_root", data])
    branch = shlex.join(["python", *branch, "--data_root", data, "--init_from", str(dest / "phase1.pth")])
    (dest / "README.md").write_text(
        f"# {dest.name}\n\n"
        + (f"The first phase (plain cross-entropy, epochs 1-{checkpoint['epoch']}) that CE, ISDA w/o meta-learning "
           f"and every MetaSAug variant of this dataset, imbalance and seed branch from. " if shared else
           f"The first phase ({loss}, recipe {config.get('recipe', 'released')}, epochs 1-{checkpoint['epoch']}) "
           f"that {' and '.join(row.name for row in rows) or 'the runs of this loss'} of this dataset, imbalance "
           f"and seed branch from. ")
        + f"Epoch {last['epoch'] + 1}: "
        f"test top-1 error {100 - last['test_top1']:.2f}. Long-tail subset sha256 "
        f"{checkpoint['train_index_sha256']}. Commits that trained it: {', '.join(map(str, checkpoint['commits']))}; "
        f"NOTES.txt says where each part ran, train.log has every epoch.\n\n"
        f"`phase1.pth` ({(dest / 'phase1.pth').stat().st_size / 1e6:.1f} MB) is the state after epoch "
        f"{checkpoint['epoch']}: weights, SGD momentum, position, history and flags, loadable with "
        f"`weights_only=True`. It was trained with\n\n```bash\n{train}\n```\n\n"
        f"and a second phase branches from it with the same flags, {'another' if method != config['method'] else 'its'} "
        f"`--method` and `--init_from`, e.g.\n\n"
        f"```bash\n{branch}\n```\n\n"
        f"A branch continues exactly where this first phase stopped: tests/test_results.py checks that a first "
        f"phase exported by tools/export_run.py and branched ends bit-identical to the same run from scratch.\n")
    return dest


def export(run_dir, checkpoint_path, dest, first_phase=None):
    run_dir, dest = Path(run_dir), Path(dest)
    checkpoint = load_checkpoint(checkpoint_path)
    if is_first_phase(checkpoint):
        return export_first_phase(run_dir, checkpoint, dest)
    result = json.loads((run_dir / "result.json").read_text())
    config = result["config"]
    if checkpoint.get("config", {}).get("save_name") != config["save_name"] or checkpoint["epoch"] != config["epochs"]:
        raise CheckpointError(f"{checkpoint_path} is not the final checkpoint of the run in {run_dir}")
    init_from = branch_source(result, first_phase)
    copy_run_files(run_dir, dest)
    save_checkpoint({k: v.contiguous() for k, v in checkpoint["state_dict"].items()}, dest / "model.pth")
    save_checkpoint(checkpoint["criterion"], dest / "criterion.pth")
    data = data_root(config)
    command = shlex.join(["python", *training_command(config, result["base_loss"]), "--data_root", data,
                          *(["--init_from", init_from] if init_from else [])])
    evaluate = shlex.join(["python", "MetaSAug_test.py", "--checkpoint_path", str(dest / "model.pth"), "--dataset",
                           config["dataset"], "--imb_factor", str(config["imb_factor"]), "--data_root", data,
                           *recipe_flag(config)])
    accuracy = 100 - result["final_top1_error"]
    (dest / "README.md").write_text(
        f"# {dest.name}\n\n"
        f"Final epoch {result['final_epoch']}: top-1 error {result['final_top1_error']:.2f} "
        f"(accuracy {accuracy:.2f}); best epoch {result['best_epoch']}: {result['best_top1_error']:.2f}. "
        f"Long-tail subset sha256 {result.get('train_index_sha256')}.\n\n"
        + (f"Branched after epoch {config['meta_start']} from the committed first phase "
           f"[{Path(init_from).parent.name}]({os.path.relpath(Path(init_from).parent, dest)}).\n\n"
           if init_from else "")
        + f"Trained with (its last part on {result['device']}; NOTES.txt says where each part ran and how it was "
        f"interrupted and resumed, train.log has every epoch):\n\n"
        f"```bash\n{command}\n```\n\n"
        f"Commits that trained it: {', '.join(map(str, result.get('commits', [result['commit']])))}.\n\n"
        f"`model.pth` holds the final weights (a plain state_dict); this prints Accuracy {accuracy:.2f}"
        f"{GPU_NOTE if result['device'].startswith('cuda') else ''}:\n\n"
        f"```bash\n{evaluate}\n```\n\n"
        f"`criterion.pth` holds the loss module's final state (the estimator's class means and covariances); "
        f"this measures how far MetaSAug's meta step moves those covariances:\n\n"
        f"```bash\n{shlex.join(['python', 'tools/meta_step_size.py', str(dest), '--data_root', data])}"
        f"\n```\n")
    return dest


def main(argv=None):
    parser = OneLineParser(prog="export_run.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run's --out_dir (result.json, train.log, NOTES.txt)")
    parser.add_argument("checkpoint", help="the run's final <save_name>_ckpt.pth.tar")
    parser.add_argument("dest", help="e.g. results/cifar10_jpeg/imb100/<run name>")
    parser.add_argument("--first_phase", help="the committed first phase (results/.../first_phase_seed<S>) the run "
                        "branched from: its README names it and its command branches from it")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {export(args.run_dir, args.checkpoint, args.dest, args.first_phase)}")
    except (CheckpointError, OSError) as error:
        print(f"export_run.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

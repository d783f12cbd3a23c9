"""Copy a finished CIFAR run into the repository's results/ with what re-checks it.

    python tools/export_run.py RUN_OUT_DIR CHECKPOINT DEST

writes DEST/result.json, the run's figures, TensorBoard event files, train.log and notes, the final
weights as a plain state_dict (DEST/model.pth, about 1.9 MB for ResNet-32), the loss module's final state
(DEST/criterion.pth: the estimator's covariances, about 170 kB, which tools/meta_step_size.py reads), and
DEST/README.md: the command that trained the run (every flag that differs from its default), the commits that
trained it, the command that evaluates model.pth to the accuracy in result.json (tests/test_results.py runs
it) and the one that measures the meta step on criterion.pth.
"""
import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import MetaSAug_CE_train  # noqa: E402
import MetaSAug_LDAM_train  # noqa: E402
from checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from trainer import RECIPES, build_parser  # noqa: E402

COPIED = ("result.json", "confusion_matrix.png", "covariance_spectrum.png", "train.log", "stdout.log", "NOTES.txt")
MACHINE_SPECIFIC = ("data_root", "checkpoint_dir", "out_dir", "resume", "init_from", "workers", "device", "gpu",
                    "no_cuda", "print_freq", "overwrite", "download")


GPU_NOTE = (" on a GPU (on a CPU it may differ by a few of the 10,000 test images: cuDNN's convolutions, TF32 by "
            "PyTorch's default, round differently)")


def training_command(config, base_loss):
    """The script and every flag of ``config`` that differs from its default (paths left out)."""
    script, module = ((MetaSAug_LDAM_train.__name__, MetaSAug_LDAM_train) if base_loss == "ldam"
                      else (MetaSAug_CE_train.__name__, MetaSAug_CE_train))
    parser = build_parser(script + ".py", "", module.LOSSES)
    parser.set_defaults(**RECIPES[config.get("recipe", "released")].flags)  # what --recipe sets need not be said
    words = [f"{script}.py"]
    for action in parser._actions:
        name = action.dest
        if not action.option_strings or name in MACHINE_SPECIFIC or name not in config:
            continue
        value = config[name]
        if value == action.default or (name == "num_classes" and action.default is None):
            continue
        flag = next(option for option in action.option_strings if option.startswith("--"))
        if action.nargs == 0:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


def export(run_dir, checkpoint_path, dest):
    run_dir, dest = Path(run_dir), Path(dest)
    checkpoint = load_checkpoint(checkpoint_path)
    result = json.loads((run_dir / "result.json").read_text())
    config = result["config"]
    if checkpoint.get("config", {}).get("save_name") != config["save_name"] or checkpoint["epoch"] != config["epochs"]:
        raise CheckpointError(f"{checkpoint_path} is not the final checkpoint of the run in {run_dir}")
    if dest.exists():
        raise CheckpointError(f"{dest} exists; remove it first")
    dest.mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        shutil.copy2(events, dest / events.name)
    save_checkpoint({k: v.contiguous() for k, v in checkpoint["state_dict"].items()}, dest / "model.pth")
    save_checkpoint(checkpoint["criterion"], dest / "criterion.pth")
    command = shlex.join(["python", *training_command(config, result["base_loss"]), "--data_root", "data/cifar10"])
    evaluate = shlex.join(["python", "MetaSAug_test.py", "--checkpoint_path", str(dest / "model.pth"), "--dataset",
                           config["dataset"], "--imb_factor", str(config["imb_factor"]), "--data_root", "data/cifar10"])
    accuracy = 100 - result["final_top1_error"]
    (dest / "README.md").write_text(
        f"# {dest.name}\n\n"
        f"Final epoch {result['final_epoch']}: top-1 error {result['final_top1_error']:.2f} "
        f"(accuracy {accuracy:.2f}); best epoch {result['best_epoch']}: {result['best_top1_error']:.2f}. "
        f"Long-tail subset sha256 {result.get('train_index_sha256')}.\n\n"
        f"Trained with (its last part on {result['device']}; NOTES.txt says where each part ran and how it was "
        f"interrupted and resumed, train.log has every epoch):\n\n"
        f"```bash\n{command}\n```\n\n"
        f"Commits that trained it: {', '.join(map(str, result.get('commits', [result['commit']])))}.\n\n"
        f"`model.pth` holds the final weights (a plain state_dict); this prints Accuracy {accuracy:.2f}"
        f"{GPU_NOTE if result['device'].startswith('cuda') else ''}:\n\n"
        f"```bash\n{evaluate}\n```\n\n"
        f"`criterion.pth` holds the loss module's final state (the estimator's class means and covariances); "
        f"this measures how far MetaSAug's meta step moves those covariances:\n\n"
        f"```bash\n{shlex.join(['python', 'tools/meta_step_size.py', str(dest), '--data_root', 'data/cifar10'])}\n```\n")
    return dest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run's --out_dir (result.json, figures, events, train.log)")
    parser.add_argument("checkpoint", help="the run's final <save_name>_ckpt.pth.tar")
    parser.add_argument("dest", help="e.g. results/cifar10_jpeg/imb100/<run name>")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {export(args.run_dir, args.checkpoint, args.dest)}")
    except (CheckpointError, OSError) as error:
        print(f"export_run.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

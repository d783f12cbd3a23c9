"""Command-line plumbing shared by every script: parsing, flag checks, device choice, stop signals,
resume/branch compatibility and provenance.

Errors a user can fix by changing a flag are ``UsageError``; errors in the data or in a file are
``data_utils.DataError`` and ``checkpoint.CheckpointError``. The scripts print any of them as one
line and exit with code 2. Importing this module does not import torch, so that a script's --help
(tools/run_table.py's) answers at once.
"""
import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

# The exit code of a run stopped by --stop_after: it wrote its checkpoint and continues with --resume.
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: "a temporary failure; the user is invited to retry"


class UsageError(ValueError):
    """A flag value that cannot work; the message names the flag and the fix."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that takes every flag with dashes or underscores alike (the released scripts mix them:
    --imb_factor, --batch-size; --help shows the spelling declared), reports a bad flag in one line and exits
    with code 2. What follows a bare ``--`` is left as given."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        return super().parse_known_args([*map(self._declared, args[:end]), *args[end:]], namespace)

    def _declared(self, token):
        """``token`` with the flag spelt as declared, where the other spelling of a declared flag was given."""
        name, equals, value = str(token).partition("=")
        if not name.startswith("--") or name in self._option_string_actions:
            return token
        for spelling in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
            if spelling in self._option_string_actions:
                return spelling + equals + value
        return token

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None/False (those defaults are described in the help) or the flag
    takes no value (a switch's default is its absence)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.help is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def str2bool(text):
    """The released ``--nesterov`` was ``type=bool`` (any text is True); accept real booleans."""
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def positive_number(text):
    """argparse type of a positive float, such as --stop_after's minutes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def imbalance_factor(text):
    """argparse type of an imbalance as a user writes it: a factor in (0, 1] (0.02, the training scripts'
    --imb_factor) or a ratio above 1 (50, as the paper's tables say it); returns the factor."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected an imbalance factor in (0, 1] such as 0.02 or a ratio above 1 "
                                         f"such as 50, got {text!r}")
    return value if value <= 1 else 1 / value


def add_run_file_flags(group, checkpoint_dir, checkpoint_help):
    """--checkpoint_dir, --out_dir, --resume and --overwrite: where a run writes, and what may happen to an
    existing run of the same --save_name (files_to_clear and check_resume act on them)."""
    group.add_argument("--checkpoint_dir", default=checkpoint_dir, help=checkpoint_help)
    group.add_argument("--out_dir", default=None, help="logs, TensorBoard, result.json (default runs/<save_name>)")
    group.add_argument("--resume", default=None, help="a checkpoint of this script to continue from (mid-epoch "
                                                      "included)")
    group.add_argument("--stop_after", type=positive_number, default=None, metavar="MINUTES",
                       help=f"stop at the first iteration after this many minutes, write the checkpoint and exit "
                            f"with code {EXIT_RESUMABLE} (resumable: the same command plus --resume continues), so "
                            f"that a time-boxed allocation can be chained")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh over an existing run of this --save_name: deletes its checkpoints, "
                            "result.json, train.log, figures and TensorBoard files (without it, an existing run "
                            "is refused unless --resume continues it)")


def one_line(error):
    """The message of an error as one line; for an error re-raised from a DataLoader worker (whose
    message holds the worker's traceback) the original message."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return " ".join(lines)


def require(args, positive=(), non_negative=(), caps=()):
    """``UsageError`` unless the named flags are >= 1 (``positive``), >= 0 (``non_negative``), or None
    or >= 1 (``caps``, such as --max_train_batches)."""
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must not be negative, got {getattr(args, name)}")
    for name in caps:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")


def require_rates(args):
    """The training scripts' step sizes: --lr > 0, --lam >= 0, --meta_lr >= 0."""
    if args.lr <= 0 or args.lam < 0 or args.meta_lr < 0:
        raise UsageError("--lr must be positive and --lam, --meta_lr non-negative")


def add_device_flag(group, help="auto: CUDA when available"):
    """``--device``, whose choices are the ones ``resolve_device`` understands."""
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=help)


def resolve_device(choice, index=0):
    """``auto``: CUDA device ``index`` when CUDA is available, else the CPU."""
    import torch
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but CUDA is not available; use --device cpu")
    return torch.device("cuda", index)


class StopRequest:
    """When a run should stop at its next iteration and write its checkpoint: on SIGTERM/SIGINT, or once
    ``minutes`` (--stop_after) have passed since it was made, so that a time-boxed allocation can be chained."""

    def __init__(self, minutes=None):
        self.signal = None
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def due(self):
        return self.signal is not None or (self.deadline is not None and time.monotonic() >= self.deadline)

    def exit_code(self):
        """128 + the signal, or EXIT_RESUMABLE when the time limit stopped the run."""
        return EXIT_RESUMABLE if self.signal is None else 128 + self.signal

    def reason(self):
        if self.signal is not None:
            return f"signal {self.signal}"
        return "--stop_after's time limit" if self.due() else "another process's stop request"


def interrupt_message(stop, state, unit, checkpoint_path):
    """How a run stopped (1-based epoch, as every line a person reads) and how to continue it."""
    return (f"interrupted by {stop.reason()} in epoch {state.epoch + 1} after {unit} {state.iteration}; checkpoint "
            f"written. Resume with the same flags plus --resume {checkpoint_path}")


def duration(seconds):
    """A duration as a person reads it: minutes below an hour, hours above."""
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def run_files(args, checkpoints):
    """The files of the run --save_name that exist: its ``checkpoints``, and in --out_dir its record, log,
    figures and TensorBoard events."""
    out = Path(args.out_dir)
    paths = list(checkpoints)
    paths += [out / name for name in ("result.json", "train.log")]
    paths += [out / f"{figure}.{extension}" for figure in ("confusion_matrix", "covariance_spectrum")
              for extension in ("png", "pdf")]
    paths += sorted(out.glob("events.out.tfevents.*")) if out.is_dir() else []
    return [path for path in paths if path.is_file()]


def files_to_clear(args, checkpoints):
    """Refuse to start over an existing run (a checkpoint or result.json) unless --resume continues it or
    --overwrite replaces it; the files a fresh start deletes first: all with --overwrite, otherwise the
    log, figures and events of an attempt that never finished an epoch."""
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite starts it afresh: pass one of them")
    if args.resume:
        return []
    files = run_files(args, checkpoints)
    kept = [path for path in files if path.name.endswith(".pth.tar") or path.name == "result.json"]
    if kept and not args.overwrite:
        last = checkpoints[0]
        resume = f"continue it with --resume {last} or " if last.is_file() else ""
        raise UsageError(f"run '{args.save_name}' already exists ({kept[0]}); {resume}start it afresh with "
                         f"--overwrite, or choose another --save_name")
    return files


def clear_files(paths, name):
    """Delete what files_to_clear found, saying so."""
    for path in paths:
        path.unlink()
    if paths:
        print(f"cleared {len(paths)} files of an earlier run '{name}': {', '.join(p.name for p in paths)}", flush=True)


def settle_from_config(args, checkpoint, defaults):
    """For an evaluation script: take each flag of ``defaults`` from the checkpoint's config when it records
    it (a flag given otherwise is a UsageError), else from the flag, else from ``defaults``. Returns the
    config (None for checkpoints without one, such as the authors': their flags decide, as released)."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    config = config if isinstance(config, dict) else None
    for name, default in defaults.items():
        given = getattr(args, name)
        if config is not None and config.get(name) is not None:
            if given is not None and given != config[name]:
                raise UsageError(f"--{name} {given} contradicts the checkpoint, trained with --{name} "
                                 f"{config[name]}; drop the flag")
            setattr(args, name, config[name])
        elif given is None:
            setattr(args, name, default)
    return config


def flag_clashes(args, config, keys):
    """``--k ours vs theirs`` for each of ``keys`` that ``config`` (a checkpoint's) records otherwise;
    keys it does not record (flags added since it was written) are taken to match."""
    return [f"--{k} {getattr(args, k)} vs {config[k]}" for k in keys if k in config and config[k] != getattr(args, k)]


def training_config(state, flag, path, what):
    """The config of a training checkpoint of this repository, or a one-line error naming ``flag``."""
    from checkpoint import CheckpointError
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or "iteration" not in state or "history" not in state:
        raise CheckpointError(f"{flag} {path} is not {what} (no config, position or history); "
                              f"start without {flag}")
    return config


def check_resume(args, state, must_match, prog):
    """Refuse to continue a checkpoint written with other values of the ``must_match`` flags."""
    from checkpoint import CheckpointError
    config = training_config(state, "--resume", args.resume, f"a training checkpoint of {prog}")
    clashes = flag_clashes(args, config, must_match)
    if clashes:
        raise CheckpointError(f"--resume {args.resume} was written with other flags ({'; '.join(clashes)}); "
                              f"pass the checkpoint's values or start a new run")


# What is not code: a run's provenance is "+dirty" only when the code that ran differs from the commit, not when
# results were added or removed (a device's copy of the repository may lack results/) or prose changed.
NOT_CODE = (":(exclude)results", ":(exclude)docs", ":(exclude)*.md")


def git_commit(repository=Path(__file__).parent):
    """HEAD of the code's repository, with ``+dirty`` when a tracked file of code (every tracked file but
    NOT_CODE's) differs in the working tree from HEAD, whatever git's index holds; None outside git."""
    def git(*words):
        return subprocess.run(["git", *words], cwd=repository, capture_output=True, text=True, check=True)
    try:
        head = git("rev-parse", "HEAD").stdout.strip()
        changed = git("diff", "--name-only", "HEAD", "--", ".", *NOT_CODE).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if changed else "")

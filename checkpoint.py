"""Safe checkpoint files: atomic writes, ``weights_only`` loading, released layouts accepted.

The released CIFAR checkpoints are ``{'epoch', 'state_dict', 'best_acc1', 'optimizer'}`` with no
BatchNorm ``num_batches_tracked`` entries; DataParallel/DDP checkpoints prefix keys with
``module.``. ``load_model_state`` accepts all of these without the caller knowing.

A training holds its run's lock (``RunLock``) while it writes the run's files: a second process on the same
run (another sweep, a resume by hand) would otherwise interleave its checkpoints with the first's.
"""
import fcntl
import json
import os
import pickle
import platform
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message says what to do."""


@dataclass
class RunState:
    """Where a training run stands; saved in each of its checkpoints beside the weights, so that
    ``--resume`` continues exactly (mid-epoch included) and ``--init_from`` can branch from it."""
    epoch: int = 0                # epochs finished: the next epoch to train, 0-based
    iteration: int = 0            # iterations (steps) finished in that epoch
    history: list = field(default_factory=list)                    # one dict per finished epoch
    epoch_sums: list = field(default_factory=lambda: [0.0, 0, 0])  # loss x images, correct, images so far
    epoch_time: float = 0.0       # seconds spent in training steps of the running epoch
    elapsed: float = 0.0          # seconds since the run started, over all sessions
    best_acc1: float = 0.0        # best test top-1 so far, and its 0-based epoch
    best_epoch: int | None = None
    commits: list = field(default_factory=list)  # every commit of the code that trained part of the run

    def add_batch(self, loss, correct, seen):
        """Count one batch; ``loss`` and ``correct`` may be tensors (summed without a device sync)."""
        loss_sum, correct_sum, seen_sum = self.epoch_sums
        self.epoch_sums = [loss_sum + loss * seen, correct_sum + correct, seen_sum + seen]
        self.iteration += 1

    def end_epoch(self, entry, elapsed):
        self.history.append(entry)
        self.epoch, self.iteration, self.epoch_sums, self.epoch_time, self.elapsed = \
            self.epoch + 1, 0, [0.0, 0, 0], 0.0, elapsed

    def to_checkpoint(self):
        return {**asdict(self), "epoch_sums": [float(s) for s in self.epoch_sums]}

    @classmethod
    def from_checkpoint(cls, state):
        """The state a checkpoint records; fields it predates keep their defaults."""
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def atomic_write(path, write, what="file"):
    """Write a file atomically: ``write(handle)`` into a temporary file beside ``path``, flush, fsync,
    rename, fsync the folder. A failed write leaves the previous file at ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(f"could not write {what} {path} ({error}); the previous {what} there, "
                                  f"if any, is intact") from error
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


RUN_LOCK_FD = "METASAUG_RUN_LOCK_FD"  # the descriptor of the run lock a sweep took for the training it starts


class RunBusy(CheckpointError):
    """Another process holds the run's lock; ``holder`` says which."""

    def __init__(self, save_name, holder, path):
        super().__init__(f"run '{save_name}' is being trained by another process ({holder}; lock {path}); wait "
                         f"for it to end, or choose another --save_name")
        self.holder = holder


class RunLock:
    """A hold on run ``save_name``: the kernel's lock (flock) on ``<checkpoint_dir>/<save_name>.lock``. It goes
    with the last process holding it, so a killed training frees its run; the file says who holds it. A sweep
    takes the lock and hands it to the training it starts (``handed_to``), so no other process comes between
    its check and the training; the training then holds it alone (``RunLock`` adopts the inherited one)."""

    def __init__(self, checkpoint_dir, save_name):
        self.path = Path(checkpoint_dir) / f"{save_name}.lock"
        self.made = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.handle = self._inherited() or self._take(save_name)
        except BaseException:
            _remove_empty(self.made)
            raise
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()} on {platform.node()}, since "
                          f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        self.handle.flush()

    def _inherited(self):
        descriptor = os.environ.pop(RUN_LOCK_FD, None)
        if descriptor is None:
            return None
        try:
            mine, held = os.stat(self.path), os.fstat(int(descriptor))
        except (OSError, ValueError):
            return None
        if (mine.st_dev, mine.st_ino) != (held.st_dev, held.st_ino):
            return None
        return os.fdopen(int(descriptor), "a+")

    def _take(self, save_name):
        while True:
            try:
                handle = open(self.path, "a+")
            except FileNotFoundError:  # another run's lock in this folder, ending, removed the folder it made
                self.path.parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "a process that has not said which"
                handle.close()
                raise RunBusy(save_name, holder, self.path) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()  # the lock's last holder removed this file as we took it: take the new one

    def handed_to(self, environment):
        """The environment and descriptors that pass the lock to a child process; ``close`` it once started."""
        return {**environment, RUN_LOCK_FD: str(self.handle.fileno())}, (self.handle.fileno(),)

    def close(self):
        """Stop holding the lock here (a child it was handed to holds it on)."""
        self.handle.close()

    def release(self):
        """Free the run: remove the lock file, and the folders made for it that nothing else came into."""
        self.path.unlink(missing_ok=True)
        self.handle.close()
        _remove_empty(self.made)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.release()


def _remove_empty(folders):
    """Remove ``folders`` (deepest first) as long as nothing else came into them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def save_checkpoint(state, path):
    """``torch.save(state)`` to ``path`` atomically."""
    atomic_write(path, lambda handle: torch.save(state, handle), "checkpoint")


def save_json(content, path):
    """``content`` as indented JSON at ``path``, atomically (result.json and other run records)."""
    atomic_write(path, lambda handle: handle.write(json.dumps(content, indent=1).encode()), "record")


def load_checkpoint(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with one-line errors for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty; it was not written completely")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch wraps every weights-only failure in boilerplate; the blocked object is on a "GLOBAL" line,
        # anything else (e.g. "Unsupported operand") is bytes that are no pickle at all, such as a text file.
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if not blocked:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (another file type)") from error
        raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and plain "
                              f"containers, which could run code ({blocked[0]}); re-save its state_dict "
                              f"from a trusted source") from error
    except Exception as error:  # the weights-only unpickler fed arbitrary bytes raises KeyError, IndexError, ...
        detail = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or another file "
                              f"type: {type(error).__name__} {detail})") from error


def model_state_from(checkpoint):
    """The model's state_dict inside a checkpoint (``{'state_dict': ...}``) or the dict itself."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint["state_dict"]
    if isinstance(checkpoint, dict) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointError("the file holds no model state_dict (expected a dict of tensors or a dict "
                          "with a 'state_dict' entry)")


def strip_module_prefix(state_dict):
    """Keys without DataParallel/DDP's ``module.`` prefix."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def load_model_state(model, state_dict):
    """Load a state_dict into ``model`` strictly, tolerating ``module.`` prefixes and missing
    ``num_batches_tracked`` buffers; any other mismatch is a ``CheckpointError`` naming it."""
    state = strip_module_prefix(state_dict)
    own = model.state_dict()
    for name, value in own.items():
        if name.endswith("num_batches_tracked") and name not in state:
            state[name] = value.clone()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit {type(model).__name__}: missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''}; is it for another architecture?")
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise CheckpointError(f"checkpoint entry {name} has shape {list(value.shape)} but the model "
                                  f"expects {list(own[name].shape)}; check --num_classes / --dataset")
    model.load_state_dict(state)

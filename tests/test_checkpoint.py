"""Tests for checkpoint.py: atomic writes, safe loading, the released and DataParallel layouts, the run lock."""
import os
import shlex
import subprocess
import sys

import pytest
import torch

import checkpoint
from conftest import REPO_ROOT
from checkpoint import CheckpointError, load_checkpoint, load_model_state, model_state_from, save_checkpoint
from resnet import ResNet32


def _state(value):
    """A small checkpoint shaped like the trainer's (tensors, numbers, None, nested containers)."""
    return {"epoch": value, "state_dict": {"w": torch.full((3, 2), float(value))}, "best_acc1": 12.5,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "best_epoch": None, "history": [{"epoch": 0, "shot_accuracy": {"many": None}}],
            "config": {"lr_milestones": [160, 180], "resume": None}}


def _assert_same(loaded, expected):
    assert loaded.keys() == expected.keys()
    assert torch.equal(loaded["state_dict"]["w"], expected["state_dict"]["w"])
    assert {k: v for k, v in loaded.items() if k != "state_dict"} == \
        {k: v for k, v in expected.items() if k != "state_dict"}


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def previous(tmp_path):
    """A good checkpoint already at the path, as after an earlier epoch."""
    path = tmp_path / "run_ckpt.pth.tar"
    save_checkpoint(_state(1), path)
    return path


def _released_state_dict(model):
    """The layout of the authors' checkpoints: no BatchNorm num_batches_tracked entries."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _distinct_model(seed, num_classes=10):
    torch.manual_seed(seed)
    model = ResNet32(num_classes)
    for name, buffer in model.named_buffers():  # running statistics that differ from a fresh model's
        if name.endswith(("running_mean", "running_var")):
            buffer.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------------------------------------
# save_checkpoint
# ---------------------------------------------------------------------------------------------

def test_save_then_load_round_trips_the_trainer_layout(tmp_path):
    path = tmp_path / "sub" / "dir" / "x_ckpt.pth.tar"
    save_checkpoint(_state(3), path)
    _assert_same(load_checkpoint(path), _state(3))
    assert _leftovers(path.parent) == []


def test_save_replaces_an_existing_checkpoint(previous):
    save_checkpoint(_state(2), previous)
    assert load_checkpoint(previous)["epoch"] == 2


def assert_failed_save_keeps_the_previous(previous, monkeypatch, target, replacement, error, match=None):
    """save_checkpoint with ``target`` (module, attribute) replaced raises ``error``; the previous checkpoint is
    there, byte for byte and loadable, and no temporary file is left."""
    before = previous.read_bytes()
    monkeypatch.setattr(*target, replacement)
    with pytest.raises(error, match=match):
        save_checkpoint(_state(2), previous)
    monkeypatch.undo()
    assert previous.read_bytes() == before
    _assert_same(load_checkpoint(previous), _state(1))
    assert _leftovers(previous.parent) == []


def test_save_failing_midway_keeps_the_previous_checkpoint(previous, monkeypatch):
    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        real_save(obj, handle)          # bytes reach the temporary file ...
        handle.write(b"more")
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    assert_failed_save_keeps_the_previous(previous, monkeypatch, (checkpoint.torch, "save"), failing_save,
                                          CheckpointError, "could not write checkpoint .*No space left.*previous")


def test_save_failing_at_the_rename_keeps_the_previous_checkpoint(previous, monkeypatch):
    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    assert_failed_save_keeps_the_previous(previous, monkeypatch, (checkpoint.os, "replace"), failing_replace,
                                          CheckpointError, "could not write checkpoint")


def test_save_interrupted_by_a_signal_reraises_and_cleans_up(previous, monkeypatch):
    def interrupted_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise KeyboardInterrupt

    assert_failed_save_keeps_the_previous(previous, monkeypatch, (checkpoint.torch, "save"), interrupted_save,
                                          KeyboardInterrupt)


# ---------------------------------------------------------------------------------------------
# load_checkpoint
# ---------------------------------------------------------------------------------------------

def test_load_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth.tar")


def test_load_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.pth.tar"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.02], ids=["half", "head"])
def test_load_truncated_checkpoint(tmp_path, keep):
    model = ResNet32(10)
    full = tmp_path / "full.pth.tar"
    save_checkpoint({"epoch": 1, "state_dict": model.state_dict()}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        load_checkpoint(cut)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["hello world\n", "epoch 3 best 0.5\n", "This is a text file.\n", '{"a": 1}\n'])
def test_load_text_file(tmp_path, text):
    # Text makes torch's weights-only unpickler raise KeyError, IndexError or UnpicklingError.
    path = tmp_path / "notes.pth.tar"
    path.write_text(text)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert "could run code" not in str(info.value)


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_load_refuses_a_malicious_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*could run code.*system") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # The payload is live: an unsafe load does run it, so the assertion above means something.
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# model_state_from / load_model_state
# ---------------------------------------------------------------------------------------------

def test_model_state_from_checkpoint_and_bare_state_dict():
    sd = ResNet32(10).state_dict()
    assert model_state_from({"epoch": 3, "state_dict": sd, "best_acc1": 1.0}) is sd
    assert model_state_from(sd) is sd


@pytest.mark.parametrize("garbage", ["text", [1, 2], {}, {"epoch": 3, "best_acc1": 1.0},
                                     {"state_dict": "not a dict"}, None],
                         ids=["str", "list", "empty", "no-state-dict", "state-dict-str", "none"])
def test_model_state_from_garbage(garbage):
    with pytest.raises(CheckpointError, match="no model state_dict"):
        model_state_from(garbage)


def _assert_model_state(model, expected):
    for name, value in model.state_dict().items():
        if name in expected:
            assert torch.equal(value, expected[name]), name


def test_load_model_state_released_layout_without_num_batches_tracked():
    source = _distinct_model(1)
    released = _released_state_dict(source)
    assert not any(k.endswith("num_batches_tracked") for k in released)
    target = ResNet32(10)
    load_model_state(target, released)
    _assert_model_state(target, source.state_dict())


@pytest.mark.parametrize("with_counters", [True, False], ids=["full", "released"])
def test_load_model_state_dataparallel_prefix(with_counters):
    source = _distinct_model(2)
    state = source.state_dict() if with_counters else _released_state_dict(source)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    target = ResNet32(10)
    load_model_state(target, prefixed)
    _assert_model_state(target, source.state_dict())


def test_load_model_state_wrong_class_count():
    target = ResNet32(10)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"linear\.weight has shape \[100, 64\].*\[10, 64\].*--num_classes"):
        load_model_state(target, _released_state_dict(ResNet32(100)))
    _assert_model_state(target, before)  # nothing half-loaded


def test_load_model_state_other_architecture():
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model_state(ResNet32(10), torch.nn.Linear(64, 10).state_dict())


def test_load_model_state_missing_weights():
    state = _released_state_dict(ResNet32(10))
    del state["layer2.1.conv1.weight"]
    with pytest.raises(CheckpointError, match=r"missing \['layer2\.1\.conv1\.weight'\]"):
        load_model_state(ResNet32(10), state)


# ---------------------------------------------------------------------------------------------
# The run lock: one process trains a run at a time
# ---------------------------------------------------------------------------------------------

HOLD = """
import sys
from checkpoint import RunLock
sys.stdin.readline()  # the parent's go
with RunLock(sys.argv[1], "run"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_lock_on_a_run_is_refused_naming_the_holder_and_freed_after(tmp_path):
    with checkpoint.RunLock(tmp_path / "ckpt", "run"):
        with pytest.raises(checkpoint.RunBusy, match=rf"run 'run' is being trained by another process \(pid "
                                                     rf"{os.getpid()} on .*; lock .*run\.lock\); wait for it"):
            checkpoint.RunLock(tmp_path / "ckpt", "run")
        checkpoint.RunLock(tmp_path / "ckpt", "other").release()  # other runs are free
    assert not (tmp_path / "ckpt").exists()  # the lock file and the folder made for it are gone
    checkpoint.RunLock(tmp_path / "ckpt", "run").release()


def test_a_lock_removes_the_folders_it_made_when_nothing_else_came_into_them(tmp_path):
    checkpoint.RunLock(tmp_path / "a" / "b", "run").release()
    assert not (tmp_path / "a").exists()
    with checkpoint.RunLock(tmp_path / "a" / "b", "run"):
        (tmp_path / "a" / "b" / "run_ckpt.pth.tar").write_bytes(b"x")
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["run_ckpt.pth.tar"]


def test_a_killed_holder_frees_the_run(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(checkpoint.RunBusy, match=f"pid {holder.pid} on "):
            checkpoint.RunLock(tmp_path, "run")
        holder.kill()
        holder.wait(timeout=60)
        assert (tmp_path / "run.lock").is_file()  # left behind, but the kernel freed the lock
        checkpoint.RunLock(tmp_path, "run").release()
    finally:
        holder.kill()


def test_a_lock_handed_to_a_child_stays_held_until_the_child_lets_it_go(tmp_path):
    lock = checkpoint.RunLock(tmp_path, "run")
    environment, descriptors = lock.handed_to(dict(os.environ))
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=environment,
                             pass_fds=descriptors)
    try:
        lock.close()  # the parent lets go before the child has taken it up
        with pytest.raises(checkpoint.RunBusy, match=f"pid {os.getpid()} on "):
            checkpoint.RunLock(tmp_path, "run")
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "held\n"
        with pytest.raises(checkpoint.RunBusy, match=f"pid {child.pid} on "):  # adopted, not taken anew
            checkpoint.RunLock(tmp_path, "run")
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
    assert not (tmp_path / "run.lock").exists()
    checkpoint.RunLock(tmp_path, "run").release()

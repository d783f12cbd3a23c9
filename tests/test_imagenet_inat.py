"""ImageNet-LT / iNaturalist pipeline (ImageNet_iNat/) on a tiny generated long-tailed image tree.

The tree has 4 classes with 105/24/6/3 training images (Many/Medium/Few groups all present), in
both split formats (text lines and the iNaturalist 2017 JSON). The networks are torchvision
ResNet-18s (512-d features; ``--arch resnet18`` exists for such tests) on 32x32 crops, on the CPU.
Training runs go through the real scripts (``torchrun --nproc_per_node 2`` with gloo for the
distributed ones); the data, checkpoint-layout and bad-input cases run in-process.
"""
import importlib.util
import json
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import dataloader  # ImageNet_iNat/dataloader.py (pyproject.toml puts ImageNet_iNat on the test path)
import networks
from checkpoint import CheckpointError, RunLock
from conftest import ENV, REPO_ROOT, TIMEOUT, load, snapshot
from dataloader import DataError

LT_DIR = REPO_ROOT / "ImageNet_iNat"


def _load_script(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lt_train = _load_script("lt_train", LT_DIR / "train.py")
lt_test = _load_script("lt_test", LT_DIR / "test.py")

TRAIN_COUNTS = [105, 24, 6, 3]
VAL_PER_CLASS, TEST_PER_CLASS = 4, 5
NUM_CLASSES = len(TRAIN_COUNTS)


# ---------------------------------------------------------------------------------------------
# The tiny data and checkpoints
# ---------------------------------------------------------------------------------------------

def _write_image(path, label, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = np.array([50 + 50 * label, 200 - 40 * label, 90 + 30 * (label % 2)])
    pixels = np.clip(colour + rng.randint(-40, 41, (36, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """images/{train,val,test}/cNN/*.jpg, split files in splits/ (ImageNet-LT and iNat18 text lines,
    iNat17 competition JSON with its annotations in another order than its images)."""
    base = tmp_path_factory.mktemp("lt")
    rng = np.random.RandomState(0)
    lists = {}
    for split, counts in (("train", TRAIN_COUNTS), ("val", [VAL_PER_CLASS] * NUM_CLASSES),
                          ("test", [TEST_PER_CLASS] * NUM_CLASSES)):
        lines = []
        for label, count in enumerate(counts):
            for i in range(count):
                relative = f"{split}/c{label:02d}/{split}_{label}_{i:03d}.jpg"
                _write_image(base / "images" / relative, label, rng)
                lines.append((relative, label))
        random.Random(split).shuffle(lines)  # split files are not sorted by class
        lists[split] = lines
    splits = base / "splits"
    splits.mkdir()
    for split in ("train", "val", "test"):
        (splits / f"ImageNet_LT_{split}.txt").write_text("".join(f"{p} {c}\n" for p, c in lists[split]))
    (splits / "iNaturalist18_train.txt").write_text("".join(f"{p} {c}\n" for p, c in lists["train"]))
    (splits / "iNaturalist18_val.txt").write_text("".join(f"{p} {c}\n" for p, c in lists["test"]))
    for split, source in (("train", "train"), ("val", "test")):
        images = [{"id": 1000 + i, "file_name": p, "width": 40, "height": 36} for i, (p, _) in enumerate(lists[source])]
        annotations = [{"id": i, "image_id": 1000 + i, "category_id": c} for i, (_, c) in enumerate(lists[source])]
        annotations.reverse()
        (splits / f"{split}2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return dict(base=base, images=base / "images", splits=splits, lists=lists)


def crt_checkpoint(path, num_classes=NUM_CLASSES, arch="resnet18", seed=0):
    """A cRT stage-1 file: state_dict_best -> feat_model / classifier, keys prefixed module."""
    torch.manual_seed(seed)
    state = getattr(torchvision.models, arch)(num_classes=num_classes).state_dict()
    torch.save({"epoch": 90, "best_epoch": 89, "best_acc": 0.5, "state_dict_best": {
        "feat_model": {f"module.{k}": v for k, v in state.items() if not k.startswith("fc.")},
        "classifier": {f"module.{k}": v for k, v in state.items() if k.startswith("fc.")}}}, path)
    return path


@pytest.fixture(scope="module")
def crt(tree):
    return crt_checkpoint(tree["base"] / "resnet18_uniform_e90.pth")


def data_flags(tree, dataset="ImageNet_LT"):
    return ["--dataset", dataset, "--num_classes", NUM_CLASSES, "--data_root", tree["images"],
            "--split_dir", tree["splits"], "--arch", "resnet18", "--image_size", 32, "--device", "cpu"]


def train_flags(tree, out, dataset="ImageNet_LT", name="run", epochs=2, workers=0):
    return data_flags(tree, dataset) + [
        "--batch_size", 8, "--test_batch_size", 16, "--epochs", epochs, "--max_train_batches", 3,
        "--workers", workers, "--print-freq", 1, "--num_meta", 2, "--save_name", name,
        "--checkpoint_dir", out / "ckpt", "--out_dir", out / "runs" / name]


def script_command(script, args, nproc=1):
    args = [str(a) for a in args]
    if nproc == 1:
        return [sys.executable, str(LT_DIR / script), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(LT_DIR / script), *args]


def run_script(script, args, nproc=1, cwd=None, shell_script=None):
    """Run ImageNet_iNat/<script> directly (nproc 1) or under torchrun; or through scripts/<shell_script>
    (torchrun with GPUS=nproc processes on the CPU), the arguments appended to the script's own."""
    if shell_script:
        command = ["bash", str(LT_DIR / "scripts" / shell_script), *map(str, args)]
        env = {**ENV, "GPUS": str(nproc), "DEVICE": "cpu"}
    else:
        command, env = script_command(script, args, nproc), ENV
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def ckpt_path(out, name):
    return out / "ckpt" / f"{name}_ckpt.pth.tar"


def result_of(out, name):
    return json.loads((out / "runs" / name / "result.json").read_text())


# ---------------------------------------------------------------------------------------------
# 1. Data: split formats, transforms, meta set
# ---------------------------------------------------------------------------------------------

def test_text_splits_and_transforms(tree):
    data = dataloader.load_data("ImageNet_LT", tree["images"], tree["splits"], NUM_CLASSES, image_size=32)
    assert data.cls_num_list == TRAIN_COUNTS
    assert len(data.train) == sum(TRAIN_COUNTS) and len(data.evaluation) == TEST_PER_CLASS * NUM_CLASSES
    assert list(zip(data.train.paths, data.train.labels)) == tree["lists"]["train"]
    assert data.evaluation.source.name == "ImageNet_LT_test.txt"
    images = data.images()
    for source in ("train", "meta", "eval"):
        _, x, y = images[(source, 0, 7)]
        assert x.shape == (3, 32, 32) and isinstance(y, int)
    # seeded augmentation: same seed same image, another seed another crop; global RNG untouched
    state = torch.random.get_rng_state()
    assert torch.equal(images[("train", 3, 11)][1], images[("train", 3, 11)][1])
    assert not torch.equal(images[("train", 3, 11)][1], images[("train", 3, 12)][1])
    assert torch.equal(state, torch.random.get_rng_state())
    # released transforms: ColorJitter on ImageNet-LT only; test resize 256/224 * size; statistics
    imagenet, inat = dataloader.DATASETS["ImageNet_LT"], dataloader.DATASETS["iNaturalist18"]
    names = lambda t: [type(s).__name__ for s in t.transforms]  # noqa: E731
    assert names(dataloader.train_transform(imagenet)) == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                           "ColorJitter", "ToTensor", "Normalize"]
    assert "ColorJitter" not in names(dataloader.train_transform(inat))
    assert dataloader.test_transform(inat).transforms[0].size == 256
    assert dataloader.test_transform(inat, 32).transforms[0].size == 37
    assert tuple(dataloader.test_transform(inat).transforms[-1].mean) == (0.466, 0.471, 0.380)
    assert tuple(dataloader.test_transform(imagenet).transforms[-1].std) == (0.229, 0.224, 0.225)


def test_inaturalist17_json(tree):
    data = dataloader.load_data("iNaturalist17", tree["images"], tree["splits"], NUM_CLASSES, image_size=32)
    assert sorted(zip(data.train.paths, data.train.labels)) == sorted(tree["lists"]["train"])
    assert sorted(zip(data.evaluation.paths, data.evaluation.labels)) == sorted(tree["lists"]["test"])
    assert data.cls_num_list == TRAIN_COUNTS
    # 5 meta images per class by default for iNat17 (all 3 of the smallest class)
    assert dataloader.class_counts(data.meta.labels, NUM_CLASSES) == [5, 5, 5, 3]


def test_meta_sets(tree):
    train_set = set(tree["lists"]["train"])
    # ImageNet-LT: from the val split (10/class by default; this val split has 4), test transform
    data = dataloader.load_data("ImageNet_LT", tree["images"], tree["splits"], NUM_CLASSES)
    assert dataloader.class_counts(data.meta.labels, NUM_CLASSES) == [VAL_PER_CLASS] * NUM_CLASSES
    data = dataloader.load_data("ImageNet_LT", tree["images"], tree["splits"], NUM_CLASSES, num_meta=2)
    meta = set(zip(data.meta.paths, data.meta.labels))
    assert dataloader.class_counts(data.meta.labels, NUM_CLASSES) == [2] * NUM_CLASSES
    assert meta <= set(tree["lists"]["val"]) and not meta & train_set
    assert data.meta_is_deterministic and len(data.train) == sum(TRAIN_COUNTS)
    # iNat18: 2/class drawn from the training list itself, which keeps them (train transform)
    data = dataloader.load_data("iNaturalist18", tree["images"], tree["splits"], NUM_CLASSES)
    meta = list(zip(data.meta.paths, data.meta.labels))
    assert dataloader.class_counts(data.meta.labels, NUM_CLASSES) == [2] * NUM_CLASSES
    assert set(meta) <= train_set and len(data.train) == sum(TRAIN_COUNTS)
    assert not data.meta_is_deterministic
    # the released draw: one RandomState(6), each class's list (file order) shuffled in class order
    rng = np.random.RandomState(6)
    expected = []
    for c in range(NUM_CLASSES):
        members = [i for i, (_, label) in enumerate(tree["lists"]["train"]) if label == c]
        rng.shuffle(members)
        expected += [tree["lists"]["train"][i] for i in members[:2]]
    assert meta == expected


def test_epoch_batches_are_sharded_evenly():
    n, per_rank, world = 21, 4, 2
    shards = [dataloader.epoch_train_keys(n, per_rank, world, rank, seed=1, epoch=3) for rank in range(world)]
    assert [len(s) for s in shards] == [3, 3] and [len(b) for b in shards[0]] == [len(b) for b in shards[1]]
    indices = [key[1] for shard in shards for batch in shard for key in batch]
    assert set(indices) == set(range(n)) and len(indices) == 22  # padded by one, as DistributedSampler
    again = dataloader.epoch_train_keys(n, per_rank, world, 0, seed=1, epoch=3)
    assert again == shards[0] and again != dataloader.epoch_train_keys(n, per_rank, world, 0, seed=1, epoch=4)


def test_bad_split_files(tree, tmp_path):
    with pytest.raises(DataError, match="split file for ImageNet_LT test not found"):
        dataloader.load_data("ImageNet_LT", tree["images"], tmp_path)
    (tmp_path / "ImageNet_LT_test.txt").write_text("a.jpg 0\nno_label_here\n")
    with pytest.raises(DataError, match=r"ImageNet_LT_test.txt:2: expected"):
        dataloader.load_data("ImageNet_LT", tree["images"], tmp_path)
    (tmp_path / "ImageNet_LT_test.txt").write_text("a.jpg 7\n")
    with pytest.raises(DataError, match="labels in \\[7, 7\\] but --num_classes is 4"):
        dataloader.load_data("ImageNet_LT", tree["images"], tmp_path, NUM_CLASSES)
    (tmp_path / "train2017.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    (tmp_path / "val2017.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        dataloader.load_data("iNaturalist17", tree["images"], tmp_path, NUM_CLASSES)


# ---------------------------------------------------------------------------------------------
# 2. Checkpoint layouts
# ---------------------------------------------------------------------------------------------

def test_checkpoint_layouts(tree, crt, tmp_path):
    reference = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    model = networks.FeatureClassifier("resnet18", NUM_CLASSES)
    assert networks.load_weights(model, load(crt), crt, NUM_CLASSES) == "cRT stage 1"
    crt_state = load(crt)["state_dict_best"]
    assert torch.equal(model.fc.weight, crt_state["classifier"]["module.fc.weight"])
    assert torch.equal(model.backbone.layer4[1].conv2.weight, crt_state["feat_model"]["module.layer4.1.conv2.weight"])
    # the frozen model: backbone eval + no grad, features in float32, a 2-d input is taken as features
    model.train()
    assert not model.backbone.training and not any(p.requires_grad for p in model.backbone.parameters())
    features, logits = model(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 512) and not features.requires_grad and logits.requires_grad
    assert torch.equal(model(features)[1], logits)
    # a plain torchvision state_dict, and the released stage-2 layout (no num_batches_tracked)
    assert networks.load_weights(model, reference.state_dict(), "plain", NUM_CLASSES) == "torchvision ResNet"
    assert torch.equal(model.fc.bias, reference.fc.bias)
    released = networks.released_state(model)
    released["feature"] = {k: v for k, v in released["feature"].items() if "num_batches_tracked" not in k}
    other = networks.FeatureClassifier("resnet18", NUM_CLASSES)
    assert networks.load_weights(other, {"epoch": 20, "state_dict": released}, "rel", NUM_CLASSES) == "MetaSAug stage 2"
    assert torch.equal(other.backbone.conv1.weight, reference.conv1.weight)
    # our stage-1 layout is cRT's
    assert set(networks.crt_state(model)["classifier"]) == {"module.fc.weight", "module.fc.bias"}
    # errors
    with pytest.raises(CheckpointError, match="unknown layout"):
        networks.load_weights(model, {"model": 3, "epoch": 1}, "x", NUM_CLASSES)
    with pytest.raises(CheckpointError, match="3-class classifier but --num_classes is 4"):
        networks.load_weights(model, torchvision.models.resnet18(num_classes=3).state_dict(), "x", NUM_CLASSES)
    with pytest.raises(CheckpointError, match="check --arch"):
        networks.load_weights(networks.FeatureClassifier("resnet50", NUM_CLASSES), load(crt), crt, NUM_CLASSES)


# ---------------------------------------------------------------------------------------------
# 3. Bad inputs: exit 2, one line, nothing written
# ---------------------------------------------------------------------------------------------

def _bad_cases(tree, base):
    wrong_layout = base / "inputs" / "wrong_layout.pth"
    wrong_layout.parent.mkdir(parents=True)
    torch.save({"weights": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, wrong_layout)
    three_classes = crt_checkpoint(base / "inputs" / "three_classes.pth", num_classes=3)
    empty_splits = base / "inputs" / "no_splits"
    empty_splits.mkdir()
    good = base / "inputs" / "good.pth"
    crt_checkpoint(good)
    cases = {
        "wrong layout": (["--model_file", wrong_layout], "unknown layout"),
        "wrong class count": (["--model_file", three_classes], "3-class classifier but --num_classes is 4"),
        "missing split file": (["--model_file", good, "--split_dir", empty_splits], "split file .* not found"),
        "missing model_file": ([], "stage 2 needs --model_file"),
        "no meta images": (["--model_file", good, "--num_meta", "0"], "--num_meta must be at least 1"),
        "missing resume": (["--resume", base / "inputs" / "nope.pth"], "does not exist"),
    }
    if not torch.cuda.is_available():
        cases["no CUDA"] = (["--model_file", good, "--device", "cuda"], "CUDA is not available")
    return cases


def test_bad_inputs_in_process(tree, tmp_path, capsys):
    cases = _bad_cases(tree, tmp_path)
    before = snapshot(tmp_path)
    for name, (extra, pattern) in cases.items():
        out = tmp_path / "out"
        args = [str(a) for a in train_flags(tree, out) + extra]
        assert lt_train.main(args) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(pattern, err[0]), (name, err)
        assert err[0].startswith("ImageNet_iNat/train.py: error: ")
        assert snapshot(tmp_path) == before, f"{name}: something was written"
    # test.py
    for extra, pattern in (([cases["wrong layout"][0][1]], "unknown layout"),
                           ([cases["wrong class count"][0][1]], "3-class classifier")):
        assert lt_test.main([str(a) for a in data_flags(tree) + ["--loading_path", *extra]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(pattern, err[0]), err
    assert snapshot(tmp_path) == before


def test_bad_input_exit_code_of_the_script(tree, tmp_path):
    """The real script: exit 2, one stderr line, no traceback, nothing written (cwd included)."""
    out = tmp_path / "out"
    proc = subprocess.run(script_command("train.py", train_flags(tree, out) + [
        "--model_file", tmp_path / "x.pth", "--split_dir", tmp_path]), capture_output=True, text=True,
        timeout=TIMEOUT, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "split file for ImageNet_LT test not found" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_launcher_ends_with_the_failing_workers_own_line(tree, crt, tmp_path):
    """scripts/train.sh under torchrun: a diverged run exits 3 with the worker's message, not torchrun's report."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(LT_DIR / "scripts" / "train.sh"), *map(str, train_flags(tree, out) + [
        "--model_file", crt, "--lam", "1e30"])], capture_output=True, text=True, timeout=TIMEOUT,
        env={**ENV, "GPUS": "2", "DEVICE": "cpu", "TMPDIR": str(tmp_path)})
    assert proc.returncode == 3, proc.stderr
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert re.match(r"ImageNet_iNat/train\.py: error: non-finite training loss at epoch 2, step 1 ", lines[-2]), lines
    report = re.fullmatch(r"\(torchrun's report: (\S+)\)", lines[-1])
    assert report and "ChildFailedError" in open(report.group(1)).read()


# ---------------------------------------------------------------------------------------------
# 4. Distributed stage 2 (torchrun, 2 processes, gloo)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def distributed_runs(tree, crt):
    out = tree["base"] / "dist"
    flags = train_flags(tree, out) + ["--model_file", crt]
    sync = run_script("train.py", flags + ["--save_name", "sync", "--out_dir", out / "runs" / "sync"], nproc=2,
                      shell_script="train.sh")  # scripts/train.sh: torchrun --standalone, 2 processes
    nosync = run_script("train.py", flags + ["--save_name", "nosync", "--out_dir", out / "runs" / "nosync",
                                             "--no-sync_covariance", "--no-cache_meta_features"], nproc=2)
    return dict(out=out, sync=sync, nosync=nosync)


def test_distributed_covariance_sync(distributed_runs):
    out = distributed_runs["out"]
    sync, nosync = result_of(out, "sync"), result_of(out, "nosync")
    assert sync["world_size"] == nosync["world_size"] == 2
    for entry in sync["history"]:  # every epoch: identical classifier and covariance on both ranks
        assert entry["rank_max_deviation"] == {"classifier": 0.0, "covariance": 0.0}
    for entry in nosync["history"]:  # released behaviour: same classifier, covariances drift apart
        assert entry["rank_max_deviation"]["classifier"] == 0.0
        assert entry["rank_max_deviation"]["covariance"] > 0
    # synced estimators saw the global batch (2 epochs x 3 steps x 8 images), unsynced ones their half
    sync_ckpt, nosync_ckpt = load(ckpt_path(out, "sync")), load(ckpt_path(out, "nosync"))
    assert sync_ckpt["criterion"]["estimator.amount"].sum() == 2 * 3 * 8
    assert nosync_ckpt["criterion"]["estimator.amount"].sum() == 2 * 3 * 4
    # only rank 0 logs
    lines = distributed_runs["sync"].stdout.splitlines()
    assert sum(line.startswith("Epoch ") for line in lines) == 2
    assert sum(line.startswith("  epoch ") for line in lines) == 6


def test_result_checkpoint_and_test_script(distributed_runs, tree):
    out = distributed_runs["out"]
    result = result_of(out, "sync")
    for key in ("config", "commit", "seed", "final_top1_error", "per_class_accuracy", "shot_accuracy",
                "wall_time_s", "train_images_per_s", "history"):
        assert key in result, key
    assert result["config"]["batch_size"] == 8 and result["seed"] == 42 and result["stage"] == 2
    assert len(result["per_class_accuracy"]) == NUM_CLASSES and result["train_images_per_s"] > 0
    assert set(result["shot_accuracy"]) == {"many", "medium", "few"}
    assert result["cls_num_list"] == TRAIN_COUNTS
    assert list((out / "runs" / "sync").glob("events.out.tfevents.*"))
    state = load(ckpt_path(out, "sync"))
    assert {"epoch", "state_dict", "optimizer", "criterion", "history", "config", "iteration"} <= set(state)
    assert set(state["state_dict"]) == {"feature", "classifier"} and state["epoch"] == 2
    assert set(state["state_dict"]["classifier"]) == {"fc.weight", "fc.bias"}
    # test.py (single process) reproduces the training script's final evaluation
    summary = out / "test.json"
    proc = run_script("test.py", data_flags(tree) + ["--loading_path", ckpt_path(out, "sync"), "--workers", 0,
                                                     "--out_json", summary])
    assert "MetaSAug stage 2 layout" in proc.stdout
    tested = json.loads(summary.read_text())
    assert tested["top1_error"] == pytest.approx(result["final_top1_error"])
    assert tested["per_class_accuracy"] == pytest.approx(result["per_class_accuracy"], nan_ok=True)
    assert tested["evaluated_images"] == TEST_PER_CLASS * NUM_CLASSES
    # Without --arch, --num_classes, --image_size, --dataset: all read from the checkpoint's config
    minimal = ["--data_root", tree["images"], "--split_dir", tree["splits"], "--device", "cpu", "--workers", 0]
    run_script("test.py", minimal + ["--loading_path", ckpt_path(out, "sync"), "--out_json", summary])
    assert json.loads(summary.read_text())["top1_error"] == pytest.approx(result["final_top1_error"])


def test_test_script_refuses_flags_that_contradict_the_checkpoint(distributed_runs, tree, tmp_path, capsys):
    checkpoint = ckpt_path(distributed_runs["out"], "sync")
    for flag, value, trained in (("--image_size", 64, 32), ("--arch", "resnet50", "resnet18"),
                                 ("--num_classes", 5, 4)):
        args = [str(a) for a in data_flags(tree) + ["--loading_path", checkpoint, flag, value]]
        assert lt_test.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ImageNet_iNat/test.py: error: {flag} {value} contradicts the checkpoint, trained with "
                       f"{flag} {trained}; drop the flag"]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 5. Stage 1 -> stage 2, and resume
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tree):
    """Stage 1 (CE, whole network) then a 2-epoch stage 2 on iNat18 from its checkpoint (2 workers)."""
    out = tree["base"] / "chain"
    stage1 = run_script("train.py", train_flags(tree, out, "iNaturalist18", name="stage1", epochs=1)
                        + ["--stage", 1, "--lr", 0.01])
    stage2_flags = train_flags(tree, out, "iNaturalist18", name="stage2", workers=2) + [
        "--model_file", ckpt_path(out, "stage1")]
    stage2 = run_script("train.py", stage2_flags)
    return dict(out=out, stage1=stage1, stage2=stage2, flags=stage2_flags)


def test_stage1_to_stage2(chain):
    out = chain["out"]
    state = load(ckpt_path(out, "stage1"))
    best = state["state_dict_best"]
    assert set(best) == {"feat_model", "classifier"}
    assert set(best["classifier"]) == {"module.fc.weight", "module.fc.bias"}
    assert all(k.startswith("module.") for k in best["feat_model"])
    assert result_of(out, "stage1")["stage"] == 1
    # stage 2 starts from stage 1's weights and leaves the backbone untouched
    stage2 = load(ckpt_path(out, "stage2"))
    for key, value in stage2["state_dict"]["feature"].items():
        assert torch.equal(value, best["feat_model"]["module." + key]), key
    assert not torch.equal(stage2["state_dict"]["classifier"]["fc.weight"], best["classifier"]["module.fc.weight"])
    assert len(result_of(out, "stage2")["history"]) == 2


def test_interrupt_and_resume_is_exact(chain, tree):
    """SIGTERM mid-run -> checkpoint -> --resume (with another worker count) = the uninterrupted run."""
    out = chain["out"]
    flags = [str(a) for a in chain["flags"]]
    flags[flags.index("--save_name") + 1] = "resumed"
    flags[flags.index("--out_dir") + 1] = str(out / "runs" / "resumed")
    flags[flags.index("--workers") + 1] = "0"
    proc = subprocess.Popen(script_command("train.py", flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith("  epoch 1 step 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by signal" in stderr
    interrupted = load(ckpt_path(out, "resumed"))
    assert interrupted["epoch"] == 0 and interrupted["iteration"] >= 1
    run_script("train.py", flags + ["--resume", ckpt_path(out, "resumed")])
    resumed, reference = load(ckpt_path(out, "resumed")), load(ckpt_path(out, "stage2"))
    for key in ("weight", "bias"):
        assert torch.equal(resumed["state_dict"]["classifier"][f"fc.{key}"],
                           reference["state_dict"]["classifier"][f"fc.{key}"])
    for key, value in reference["criterion"].items():
        assert torch.equal(resumed["criterion"][key], value), key
    a, b = result_of(out, "resumed")["history"], result_of(out, "stage2")["history"]
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in b])
    assert [h["test_top1"] for h in a] == [h["test_top1"] for h in b]


def test_resume_refuses_other_flags(chain, tree, capsys, tmp_path):
    flags = [str(a) for a in chain["flags"]]
    flags[flags.index("--checkpoint_dir") + 1] = str(tmp_path / "ckpt")
    flags[flags.index("--out_dir") + 1] = str(tmp_path / "runs")
    assert lt_train.main(flags + ["--resume", str(ckpt_path(chain["out"], "stage2")), "--lam", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lam 0.5 vs 0.25" in err[0]
    assert not list(tmp_path.iterdir())


def test_a_run_another_process_is_training_is_refused(chain, tree, capsys, tmp_path):
    flags = [str(a) for a in chain["flags"]]
    checkpoints = ckpt_path(chain["out"], "stage2").parent
    before = snapshot(checkpoints)
    with RunLock(checkpoints, "stage2"):
        assert lt_train.main(flags + ["--resume", str(ckpt_path(chain["out"], "stage2"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"run 'stage2' is being trained by another process \(pid \d+ on .*stage2\.lock"
                                       r"\); wait for it to end, or choose another --save_name", err[0]), err
    assert snapshot(checkpoints) == before


def test_test_script_single_and_distributed(tree, crt, tmp_path):
    """test.py on a classifier whose predictions vary (nearest class mean on the test features),
    single-process and sharded over 2 gloo processes, against an in-process evaluation."""
    data = dataloader.load_data("ImageNet_LT", tree["images"], tree["splits"], NUM_CLASSES, image_size=32,
                                for_training=False)
    model = networks.FeatureClassifier("resnet18", NUM_CLASSES)
    networks.load_weights(model, load(crt), crt, NUM_CLASSES)
    images = data.images()
    samples = [images[("eval", i, None)] for i in range(len(data.evaluation))]
    x = torch.stack([s[1] for s in samples])
    y = torch.tensor([s[2] for s in samples])
    with torch.no_grad():
        features = model(x)[0]
        means = torch.stack([features[y == c].mean(0) for c in range(NUM_CLASSES)])
        centre = means.mean(0)
        model.fc.weight.copy_(means - centre)
        model.fc.bias.copy_(-0.5 * ((means - centre) ** 2).sum(1) - (means - centre) @ centre)
        predictions = model(x)[1].argmax(1)
    assert len(set(predictions.tolist())) > 1, "degenerate classifier: the comparison would be weak"
    path = tmp_path / "ncm.pth"
    torch.save({"epoch": 1, "state_dict": networks.released_state(model)}, path)
    expected = [100.0 * (predictions[y == c] == c).double().mean().item() for c in range(NUM_CLASSES)]
    for nproc, shell_script in ((1, None), (2, "test.sh")):
        summary = tmp_path / f"test{nproc}.json"
        run_script("test.py", data_flags(tree) + ["--loading_path", path, "--workers", 0, "--test_batch_size", 6,
                                                  "--out_json", summary], nproc=nproc, shell_script=shell_script)
        tested = json.loads(summary.read_text())
        assert tested["evaluated_images"] == len(y)
        assert tested["per_class_accuracy"] == pytest.approx(expected)
        assert tested["top1"] == pytest.approx(100.0 * (predictions == y).double().mean().item())
        many, medium, few = expected[0], expected[1], sum(expected[2:]) / 2  # training counts 105/24/6/3
        assert [tested["shot_accuracy"][k] for k in ("many", "medium", "few")] == pytest.approx([many, medium, few])



# ---------------------------------------------------------------------------------------------
# 7. Recipes (released / paper, per dataset and stage) and --pretrained
# ---------------------------------------------------------------------------------------------

def resolved(*flags):
    args = lt_train.build_parser().parse_args([str(f) for f in flags])
    lt_train.resolve_args(args, world_size=1)
    return args


@pytest.mark.parametrize("recipe, stage, dataset, expected", [
    ("released", 2, "ImageNet_LT", dict(batch_size=256, epochs=20, lr=3e-4, lr_milestones=[], nesterov=True)),
    ("released", 2, "iNaturalist18", dict(batch_size=256, epochs=20, lr=3e-4, lr_milestones=[], nesterov=True)),
    ("released", 1, "iNaturalist18", dict(batch_size=512, epochs=200, lr=0.2, weight_decay=1e-4, nesterov=False)),
    ("paper", 2, "iNaturalist18", dict(batch_size=64, lr=1e-4, epochs=20)),
    ("paper", 1, "iNaturalist17", dict(batch_size=64, lr=0.01)),
    ("paper", 1, "ImageNet_LT", dict(batch_size=64, lr_milestones=[60, 80], epochs=90)),
    ("paper", 2, "ImageNet_LT", dict(batch_size=64, lr=3e-4, epochs=20)),
])
def test_recipe_defaults_per_dataset_and_stage(recipe, stage, dataset, expected):
    args = resolved("--recipe", recipe, "--stage", stage, "--dataset", dataset, "--model_file", "x")
    assert {k: getattr(args, k) for k in expected} == expected
    for value, source in lt_train.RECIPES[recipe, stage, dataset].values():
        assert source  # every value says where it comes from
    assert resolved("--recipe", recipe, "--stage", stage, "--dataset", dataset, "--model_file", "x",
                    "--batch_size", 32).batch_size == 32  # a flag given still wins


def test_paper_recipe_reaches_optimizer_and_schedule(tree, crt, tmp_path):
    out = tmp_path / "paper"
    flags = train_flags(tree, out, "iNaturalist18", name="paper") + ["--model_file", crt, "--recipe", "paper",
                                                                     "--lr_milestones", 1]
    flags[flags.index("--batch_size") + 1] = 4
    run_script("train.py", flags)
    state, result = load(ckpt_path(out, "paper")), result_of(out, "paper")
    group = state["optimizer"]["param_groups"][0]
    assert (group["nesterov"], group["weight_decay"], group["momentum"]) == (True, 5e-4, 0.9)
    assert [h["lr"] for h in result["history"]] == pytest.approx([1e-4, 1e-5])  # x0.1 at epoch 1
    assert result["config"]["recipe"] == "paper"
    log = (out / "runs" / "paper" / "train.log").read_text().splitlines()[0]
    assert log.startswith("recipe paper, stage 2, iNaturalist18: batch_size 4 (given); lr 0.0001 (paper Sec. 4.4")
    assert "lr_milestones [1] (given)" in log and "epochs 2 (given)" in log


def test_pretrained_initialises_the_stage1_backbone(tree, tmp_path, capsys):
    torch.manual_seed(3)
    imagenet = torchvision.models.resnet18(num_classes=1000).state_dict()  # as torchvision's files hold it
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet, path)
    out = tmp_path / "pre"
    # one epoch at a negligible step size: the weights stay the file's (BatchNorm statistics move)
    run_script("train.py", train_flags(tree, out, "iNaturalist17", name="pre", epochs=1) + [
        "--stage", 1, "--pretrained", path, "--lr", 1e-12, "--momentum", 0.0, "--weight-decay", 0.0])
    feature = load(ckpt_path(out, "pre"))["state_dict_best"]["feat_model"]
    for key, value in imagenet.items():
        if not key.startswith("fc.") and value.is_floating_point() and "running" not in key:
            assert torch.allclose(feature["module." + key], value, atol=1e-6), key
    # refused in one line: stage 2, with --model_file, another architecture
    bad = {"stage 2": (["--pretrained", path, "--model_file", path], "--pretrained initialises stage 1"),
           "both": (["--stage", 1, "--pretrained", path, "--model_file", path], "exclude each other"),
           "arch": (["--stage", 1, "--pretrained", path, "--arch", "resnet50"], r"feature extractor: .*check --arch")}
    before = snapshot(tmp_path)
    for name, (extra, pattern) in bad.items():
        assert lt_train.main([str(a) for a in train_flags(tree, tmp_path / "bad") + extra]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(pattern, err[0]), (name, err)
    assert snapshot(tmp_path) == before


def test_report_summarises_large_scale_runs_beside_tables_3_4_6(distributed_runs, chain, tmp_path, capsys):
    from tools import report
    # The tiny runs' network is a ResNet-18; relabelled ResNet-50 they land in the paper's ResNet-50 cells.
    for name, out, run in (("lt2", distributed_runs["out"], "sync"), ("inat1", chain["out"], "stage1"),
                           ("inat2", chain["out"], "stage2")):
        result = dict(result_of(out, run), arch="resnet50")
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(result))
    assert report.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    table3 = text.split("Table 3")[1].split("####")[0]
    assert "| MetaSAug with CE loss |" in table3 and "paper 52.61" in table3 and "CE training" not in table3
    table4 = text.split("Table 4")[1].split("####")[0]
    assert "| iNaturalist18 |" in table4 and "iNaturalist17" not in table4
    assert "| CE |" in table4 and "paper 34.24" in table4 and "| MetaSAug |" in table4 and "paper 31.25" in table4
    assert "(n=1)" in table4 and "best" not in table4.split("Many")[0].split("| CE |")[1]  # no model selection
    table6 = text.split("Table 6")[1].split("####")[0]
    assert "| ResNet-50 |" in table6 and "| MetaSAug |" in table6 and "paper 52.61" in table6
    assert "| ResNet-101 |" not in table6
    assert "Table 1" not in text  # no CIFAR run
    assert report.main([str(tmp_path), "--table", "table4", "--all"]) == 0
    assert "| BBN* |" in capsys.readouterr().out


def test_readme_recipe_table_is_the_code_s():
    readme = (LT_DIR / "README.md").read_text()
    table = readme.split("keeps it current -->\n")[1].split("\n<!-- end of recipes -->")[0]
    assert table == lt_train.recipes_markdown()

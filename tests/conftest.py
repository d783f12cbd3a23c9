"""What several test files share: the project's ``../shared`` material (when this checkout has it
beside it), tiny generated image trees, the CIFAR scripts run on them, and the assertions made on
their outcome."""
import hashlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
GOLDEN = SHARED / "reference" / "golden" / "released_metasaug_cifar.pt"
CIFAR10_ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"


def pytest_addoption(parser):
    parser.addoption("--all-weights", action="store_true",
                     help="tests/test_results.py: evaluate every committed model.pth on the whole test set (by "
                     "default every one on a sample and a few, another few each day, on all of it)")


@pytest.fixture(scope="session")
def golden():
    if not GOLDEN.exists():
        pytest.skip(f"golden values of the released code not found at {GOLDEN}")
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (the golden values are float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def tree4(tmp_path_factory):
    """The tiny 4-class image tree most script tests train on (read only)."""
    return make_tree(tmp_path_factory.mktemp("data") / "tree4", NUM_CLASSES, train=40, test=10)


def make_tree(root, num_classes, train, test, size=8, seed=0):
    """{train,test}/classNN/*.png: a colour per class plus noise, so there is something to learn."""
    rng = np.random.RandomState(seed)
    palette = rng.randint(40, 216, (num_classes, 3))
    for split, count in (("train", train), ("test", test)):
        for c in range(num_classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(palette[c] + rng.randint(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


# ---------------------------------------------------------------------------------------------
# Running the CIFAR scripts on tiny data, and what their tests assert
# ---------------------------------------------------------------------------------------------

CE, LDAM, TEST = "MetaSAug_CE_train.py", "MetaSAug_LDAM_train.py", "MetaSAug_test.py"
TIMEOUT = 300  # seconds for one script run; the runs below take a few seconds each
# One thread: the runs are tiny, and an oversubscribed OpenMP pool on a shared machine is slow.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

NUM_CLASSES, EPOCHS = 4, 3
# 40 training images per class: 2 go to the meta set, the long tail keeps [38, 17, 8, 3] = 66
# images, i.e. 9 iterations of batch 8 per epoch; epoch 0 is cross-entropy, epochs 1-2 MetaSAug.
ITERATIONS = 9


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def train_flags(data_root, base, name="tiny", epochs=EPOCHS, num_classes=NUM_CLASSES):
    """The small flags of a tiny run; checkpoints and logs under `base`."""
    return ["--data_root", data_root, "--num_classes", num_classes, "--num_meta", 2, "--imb_factor", 0.1,
            "--batch-size", 8, "--test-batch-size", 16, "--epochs", epochs, "--meta_start", 1,
            "--lr_milestones", 2, "--print-freq", 1, "--device", "cpu", "--workers", 1,
            "--checkpoint_dir", base / "ckpt", "--out_dir", base / "out", "--save_name", name]


def command(script, args):
    return [sys.executable, str(REPO_ROOT / script), *map(str, args)]


def run_script(script, args, cwd):
    return subprocess.run(command(script, args), cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, env=ENV)


def training_run(script, args, base):
    """Run a training script; returns its process and where it writes."""
    base.mkdir(parents=True, exist_ok=True)
    proc = run_script(script, args, cwd=base)
    name = args[args.index("--save_name") + 1]
    return SimpleNamespace(proc=proc, base=base, args=args, ckpt=base / "ckpt" / f"{name}_ckpt.pth.tar",
                           best=base / "ckpt" / f"{name}_best.pth.tar", out=base / "out")


def run_together(runs, cwd):
    """Start every (script, args) at once (one thread each), wait for all; their CompletedProcess-likes."""
    procs = [subprocess.Popen(command(script, args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for script, args in runs]
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        done.append(SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr))
    return done


def assert_ok(proc):
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def assert_one_line_error(returncode, stderr, pattern, expected_code=2):
    assert returncode == expected_code, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line message, got:\n{stderr}"
    assert re.search(pattern, lines[0]), lines[0]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def snapshot(root):
    """Every file and folder under `root` with its content hash and mtime, to prove nothing changed."""
    return {str(p.relative_to(root)): (None if p.is_dir() else
                                       (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns))
            for p in sorted(root.rglob("*"))}


def call_main(main, argv, capsys):
    """In-process run of a script's main: (exit code, stderr, warnings a user would see)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:  # argparse
            code = exit.code
    _, err = capsys.readouterr()
    shown = [str(w.message) for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    return code, err, shown


def assert_tensors_equal(a, b, where):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: {b!r}"
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item()
            pytest.fail(f"{where} differs between the runs (max abs difference {diff:.3g})")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_tensors_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


TIMING_KEYS = ("train_time_s", "eval_time_s", "images_per_s")


def untimed(history):
    """A run's history without its wall-clock figures (which differ between two equal runs)."""
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def drawn_texts(figure):
    """Every visible, non-empty text of a matplotlib ``figure`` once drawn."""
    from matplotlib.text import Text
    figure.canvas.draw()
    return [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]


def assert_printable(figure, width):
    """``width`` inches wide, no type below figures.FONT_SIZE, nothing drawn past the figure's edge."""
    from figures import FONT_SIZE
    assert figure.get_figwidth() == pytest.approx(width)
    for text in drawn_texts(figure):
        assert text.get_fontsize() >= FONT_SIZE, text.get_text()
    drawn = figure.get_tightbbox(figure.canvas.get_renderer())  # inches, what was drawn
    edge = 0.01
    assert (drawn.x0 >= -edge and drawn.y0 >= -edge and drawn.x1 <= figure.get_figwidth() + edge
            and drawn.y1 <= figure.get_figheight() + edge), f"drawn past the figure's edge: {drawn}"

"""Shared fixtures: the project's ``../shared`` material, when this checkout has it beside it."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
GOLDEN = SHARED / "reference" / "golden" / "released_metasaug_cifar.pt"
CIFAR10_ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"

sys.path.insert(0, str(REPO_ROOT))


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

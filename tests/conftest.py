"""Shared fixtures: the project's ``../shared`` material, when this checkout has it beside it."""
import sys
from pathlib import Path

import pytest
import torch

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

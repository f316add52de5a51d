import os

import pytest
import torch

# Nothing may touch the network: the hub clients refuse to, and every model is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global torch state (network inits, default generator)."""
    torch.manual_seed(0)
    yield

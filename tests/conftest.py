import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global torch state (network inits, default generator)."""
    torch.manual_seed(0)
    yield

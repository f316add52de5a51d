"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside scikit-learn), as tensors.

Images are scaled from 0..16 to [-1, 1] and shaped (N, 1, 8, 8). The split is fixed (a seeded
permutation): 80% ``"train"`` for every model trained here, 20% ``"heldout"`` for evaluation only.
"""

from __future__ import annotations

from typing import Literal

import torch
from sklearn.datasets import load_digits
from torch import Tensor

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
HELDOUT_FRACTION = 0.2


def digits(split: Literal["train", "heldout", "all"] = "train") -> tuple[Tensor, Tensor]:
    """``(images, labels)``: float32 images in [-1, 1] of shape (N, 1, 8, 8) and int64 labels."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    if split == "all":
        return images, labels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_heldout = round(HELDOUT_FRACTION * len(labels))
    if split == "heldout":
        idx = order[:n_heldout]
    elif split == "train":
        idx = order[n_heldout:]
    else:
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    return images[idx], labels[idx]

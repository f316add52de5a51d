"""A small CNN classifier of the 8x8 digits: the quality check of the digits base model, the feature
extractor of its Frechet distance, and the oracle inside the digits gold utilities.

Trained by ``python -m diffusion_gym.tasks.digits.train_classifier`` on the ``"train"`` split;
its weights ship in the package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from diffusion_gym.checkpoints import load_weights_into, read_metadata
from diffusion_gym.tasks.digits import WEIGHTS_DIR
from diffusion_gym.tasks.digits.data import NUM_CLASSES

WEIGHTS_NAME = "digits_classifier"


class DigitsClassifier(nn.Module):
    """conv 32 - conv 64 - pool - conv 64 - pool - 64-d features - linear 10.

    Args:
        width: channels of the first convolution (later layers use twice that).
        feature_dim: size of the penultimate representation used for Frechet distances.
    """

    def __init__(self, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate representation, shape (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape (B, 10), of images in [-1, 1] shaped (B, 1, 8, 8)."""
        return self.head(self.body(x))


@torch.no_grad()
def image_features() -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """The classifier's penultimate features as the benchmarks' feature map for the Frechet distance
    and per-class diversity, and the held-out digits' features as its reference."""
    from diffusion_gym.tasks.digits.data import digits

    classifier = load_classifier()

    @torch.no_grad()
    def features(x: Tensor) -> Tensor:
        return torch.cat([classifier.features(b.float().cpu().clamp(-1, 1)) for b in x.split(1024)])

    return features, features(digits("heldout")[0])


def load_classifier(directory: Path | None = None) -> DigitsClassifier:
    """The shipped classifier (or one saved in ``directory``), in eval mode, frozen."""
    root = Path(directory) if directory is not None else WEIGHTS_DIR
    path = root / f"{WEIGHTS_NAME}.safetensors"
    meta = read_metadata(path, "the digits classifier", keys=["architecture"])
    model = load_weights_into(DigitsClassifier(**meta["architecture"]), path, "the digits classifier")
    return model.eval().requires_grad_(False)

"""Sample-quality metrics."""

from __future__ import annotations

import torch
from torch import Tensor


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, "FID"):
    ``||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})``, in float64.

    Args:
        features_a: (n, d) features of the first sample set.
        features_b: (m, d) features of the second.
    """
    a, b = features_a.detach().double().flatten(1), features_b.detach().double().flatten(1)
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"need two sets of at least 2 features of equal dimension, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


@torch.no_grad()
def class_accuracy(classifier: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``images`` that ``classifier`` labels as ``labels``."""
    hits = sum(
        (classifier(x).argmax(1) == y).sum().item()
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return hits / len(labels)


def per_class_diversity(features: Tensor, labels: Tensor) -> float:
    """Mean over classes of the mean pairwise Euclidean distance between features of the same class:
    collapses towards 0 when a policy maps every sample of a class to a few images (reward hacking).

    Args:
        features: (n, d) features.
        labels: (n,) class of each row; classes with fewer than 2 rows are skipped.

    Raises:
        ValueError: if no class has two rows.
    """
    f = features.detach().double().flatten(1)
    per_class = []
    for c in labels.unique():
        fc = f[labels == c]
        m = len(fc)
        if m >= 2:
            per_class.append(torch.pdist(fc).sum().item() / (m * (m - 1) / 2))
    if not per_class:
        raise ValueError("per-class diversity needs some class with at least 2 samples")
    return sum(per_class) / len(per_class)

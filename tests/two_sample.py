"""Two-sample tests used by the statistical checks."""

from __future__ import annotations

import torch
from torch import Tensor


def energy_distance_test(x: Tensor, y: Tensor, n_permutations: int, generator: torch.Generator) -> tuple[float, float]:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic) and its permutation p-value.

    Székely & Rizzo (2004). Every permutation statistic comes from one pooled distance matrix:
    with ``u`` the indicator of the first sample, the three block sums are quadratic forms in
    ``u``, so all permutations cost one matrix product.
    """
    n, m = x.shape[0], y.shape[0]
    z = torch.cat([x, y]).double().flatten(1)
    d = torch.cdist(z, z)
    labels = torch.zeros(n_permutations + 1, n + m, dtype=torch.float64)
    labels[0, :n] = 1
    for i in range(1, n_permutations + 1):
        labels[i, torch.randperm(n + m, generator=generator)[:n]] = 1
    du = d @ labels.T  # (n + m, P + 1)
    s_xx = (labels.T * du).sum(0)
    s_xy = ((1 - labels.T) * du).sum(0)
    s_yy = d.sum() - 2 * s_xy - s_xx
    stats = 2 * s_xy / (n * m) - s_xx / n**2 - s_yy / m**2
    p_value = ((stats[1:] >= stats[0]).sum().item() + 1) / (n_permutations + 1)
    return stats[0].item(), p_value

"""The base model of ``DiffusionSDE-v0``: an 8-component 2-D Gaussian mixture with its exact score."""

from __future__ import annotations

import math

import torch

from diffusion_gym.base_models.gaussian_mixture import GaussianMixtureScore
from diffusion_gym.sde import VPSchedule


def mixture_2d(schedule: VPSchedule | None = None) -> GaussianMixtureScore:
    """The 8-component 2-D mixture of ``DiffusionSDE-v0``.

    Components sit on a ring of radius 3 with unequal weights (0.22 down to 0.06), each elongated
    along the ring (std 0.45) and thin across it (std 0.18), separated by about five tangential
    standard deviations: a sample's component is ambiguous less than 1% of the time.
    """
    k = 8
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    weights = torch.tensor([0.22, 0.18, 0.15, 0.12, 0.10, 0.09, 0.08, 0.06], dtype=torch.float64)
    radial = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    tangential = torch.stack([-torch.sin(angles), torch.cos(angles)], dim=1)
    means = 3.0 * radial
    std_t, std_r = 0.45, 0.18
    covs = (
        std_t**2 * tangential[:, :, None] * tangential[:, None, :] + std_r**2 * radial[:, :, None] * radial[:, None, :]
    )
    return GaussianMixtureScore(weights, means, covs, schedule)

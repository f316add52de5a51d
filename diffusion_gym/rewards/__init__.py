"""Terminal rewards: the protocol, Bradley-Terry preference models, and each task's gold and proxy."""

from diffusion_gym.rewards.bradley_terry import BradleyTerryReward, fit_bradley_terry, label_pairs, pairwise_agreement
from diffusion_gym.rewards.protocol import RewardModel, is_differentiable

__all__ = [
    "BradleyTerryReward",
    "RewardModel",
    "fit_bradley_terry",
    "is_differentiable",
    "label_pairs",
    "pairwise_agreement",
]

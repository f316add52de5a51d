"""Rewards built from other rewards."""

from __future__ import annotations

from torch import Tensor, nn

from diffusion_gym.rewards.protocol import RewardModel


class SumReward(nn.Module):
    """``r(x, c) = sum_i r_i(x, c)``: e.g. prompt alignment plus a style term."""

    def __init__(self, *terms: RewardModel) -> None:
        super().__init__()
        if not terms:
            raise ValueError("SumReward needs at least one term")
        self.terms = nn.ModuleList(terms)  # type: ignore[arg-type]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        total = self.terms[0](x, cond)
        for term in self.terms[1:]:
            total = total + term(x, cond)
        return total


class NegatedReward(nn.Module):
    """``-r(x, c)``: e.g. incompressibility from a compressibility model."""

    def __init__(self, term: RewardModel) -> None:
        super().__init__()
        self.term = term

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -self.term(x, cond)


class DecodedReward(nn.Module):
    """``r(decode(z), c)``: an image reward applied to latents through a decoder (e.g. a VAE)."""

    def __init__(self, decoder: nn.Module, image_reward: RewardModel) -> None:
        super().__init__()
        self.decoder = decoder
        self.image_reward = image_reward

    def forward(self, latents: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.image_reward(self.decoder(latents), cond)


class ClampedInput(nn.Module):
    """``r(clamp(x, low, high), c)``: an image reward that sees pixels in their valid range, as a
    decoded or displayed image would be (the state itself is never clipped)."""

    def __init__(self, term: RewardModel, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__()
        self.term, self.low, self.high = term, float(low), float(high)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.term(x.clamp(self.low, self.high), cond)

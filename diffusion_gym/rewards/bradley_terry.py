"""Bradley-Terry preference models: a reward learned from noisy pairwise comparisons.

A hidden gold utility ``u`` labels pairs: ``P(a > b) = sigmoid((u(a) - u(b)) / temperature)``,
which is the same as comparing ``u / temperature`` perturbed by independent Gumbel noise. The
proxy ``r_theta`` maximises the Bradley-Terry likelihood ``sigmoid(r(a) - r(b))`` of the labels
(Bradley & Terry 1952; the reward-model loss of Christiano et al. 2017 and Ouyang et al. 2022),
so at ``temperature = 1`` it estimates ``u`` up to an additive constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusion_gym.rewards.protocol import RewardModel


def mlp(in_features: int, hidden: Sequence[int] = (128, 128)) -> nn.Sequential:
    """A SiLU MLP from flattened samples to one scalar per sample."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class BradleyTerryReward(nn.Module):
    """A learned reward ``r(x) = net(x) + offset``.

    Bradley-Terry fixes ``r`` only up to a constant; ``offset`` (a buffer, saved with the weights)
    pins that constant by a stated convention (see :func:`anchor_offset`).

    Args:
        net: maps ``(B, *event_shape)`` to ``(B,)`` or ``(B, 1)``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        out = self.net(x) if cond is None else self.net(x, cond)
        return out.reshape(x.shape[0]) + self.offset


@dataclass
class PreferencePairs:
    """Pairs of samples with a label: ``prefer_a[i] = 1`` when ``a[i]`` was preferred to ``b[i]``."""

    a: Tensor
    b: Tensor
    prefer_a: Tensor

    def __len__(self) -> int:
        return self.prefer_a.shape[0]

    def split(self, n_first: int) -> tuple[PreferencePairs, PreferencePairs]:
        """The first ``n_first`` pairs and the rest."""
        head = PreferencePairs(self.a[:n_first], self.b[:n_first], self.prefer_a[:n_first])
        tail = PreferencePairs(self.a[n_first:], self.b[n_first:], self.prefer_a[n_first:])
        return head, tail


@torch.no_grad()
def label_pairs(
    utility: RewardModel,
    a: Tensor,
    b: Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> PreferencePairs:
    """Noisy comparisons of ``a`` against ``b`` by ``utility``: Bradley-Terry with logistic noise."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p_a = torch.sigmoid((utility(a) - utility(b)) / temperature)
    prefer_a = (torch.rand(p_a.shape, generator=generator, device=p_a.device) < p_a).to(a.dtype)
    return PreferencePairs(a, b, prefer_a)


def fit_bradley_terry(
    model: BradleyTerryReward,
    pairs: PreferencePairs,
    steps: int,
    generator: torch.Generator,
    batch_size: int = 1024,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    progress: bool = True,
) -> list[float]:
    """Maximum likelihood on the pairs: minimise ``BCE(sigmoid(r(a) - r(b)), prefer_a)``.

    Adam with a cosine learning-rate decay to zero; returns the loss of every step.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    losses = []
    n = len(pairs)
    for _ in tqdm(range(steps), desc="Bradley-Terry fit", disable=not progress):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator).to(pairs.a.device)
        logits = model(pairs.a[idx]) - model(pairs.b[idx])
        loss = F.binary_cross_entropy_with_logits(logits, pairs.prefer_a[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def anchor_offset(model: BradleyTerryReward, gold: RewardModel, x: Tensor) -> None:
    """Set ``model.offset`` so that the proxy's mean on ``x`` equals the gold utility's mean on ``x``.

    This makes proxy and gold rewards directly comparable on the reference law ``x`` is drawn
    from (the pretrained model's samples), which is what an over-optimisation plot needs. It does
    not change any comparison, the optimal policy, or any optimality gap.
    """
    model.offset.zero_()
    model.offset.fill_((gold(x) - model(x)).mean().item())


@torch.no_grad()
def pairwise_agreement(reward: RewardModel, gold: RewardModel, a: Tensor, b: Tensor) -> float:
    """Fraction of pairs that ``reward`` orders as ``gold`` does (gold ties excluded)."""
    dg = gold(a) - gold(b)
    dr = reward(a) - reward(b)
    keep = dg != 0
    return (torch.sign(dg[keep]) == torch.sign(dr[keep])).float().mean().item()

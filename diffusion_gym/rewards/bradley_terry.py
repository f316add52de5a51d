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
        net: maps ``(B, *event_shape)`` (and, if ``conditional``, conditions ``(B,)``) to ``(B,)`` or
            ``(B, 1)``.
        conditional: whether the reward depends on the condition; an unconditional one ignores it.
    """

    def __init__(self, net: nn.Module, conditional: bool = False) -> None:
        super().__init__()
        self.net = net
        self.conditional = conditional
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.conditional:
            if cond is None:
                raise ValueError("this reward is conditional: pass cond")
            out = self.net(x, cond)
        else:
            out = self.net(x)
        return out.reshape(x.shape[0]) + self.offset


@dataclass
class PreferencePairs:
    """Pairs of samples with a label: ``prefer_a[i] = 1`` when ``a[i]`` was preferred to ``b[i]``
    (for the condition ``cond[i]``, e.g. the prompt both were generated for, if there is one)."""

    a: Tensor
    b: Tensor
    prefer_a: Tensor
    cond: Tensor | None = None

    def __len__(self) -> int:
        return self.prefer_a.shape[0]

    def subset(self, idx: Tensor | slice) -> PreferencePairs:
        return PreferencePairs(
            self.a[idx], self.b[idx], self.prefer_a[idx], None if self.cond is None else self.cond[idx]
        )

    def split(self, n_first: int) -> tuple[PreferencePairs, PreferencePairs]:
        """The first ``n_first`` pairs and the rest."""
        return self.subset(slice(0, n_first)), self.subset(slice(n_first, None))


@torch.no_grad()
def label_pairs(
    utility: RewardModel,
    a: Tensor,
    b: Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    cond: Tensor | None = None,
) -> PreferencePairs:
    """Noisy comparisons of ``a`` against ``b`` (under condition ``cond``) by ``utility``:
    Bradley-Terry with logistic noise."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p_a = torch.sigmoid((utility(a, cond) - utility(b, cond)) / temperature)
    prefer_a = (torch.rand(p_a.shape, generator=generator, device=p_a.device) < p_a).to(p_a.dtype)
    return PreferencePairs(a, b, prefer_a, cond)


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
        batch = pairs.subset(torch.randint(n, (min(batch_size, n),), generator=generator).to(pairs.a.device))
        logits = model(batch.a, batch.cond) - model(batch.b, batch.cond)
        loss = F.binary_cross_entropy_with_logits(logits, batch.prefer_a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def anchor_offset(model: BradleyTerryReward, gold: RewardModel, x: Tensor, cond: Tensor | None = None) -> None:
    """Set ``model.offset`` so that the proxy's mean on ``x`` equals the gold utility's mean on ``x``.

    This makes proxy and gold rewards directly comparable on the reference law ``x`` is drawn
    from (the pretrained model's samples), which is what an over-optimisation plot needs. It does
    not change any comparison, the optimal policy, or any optimality gap.
    """
    model.offset.zero_()
    model.offset.fill_((gold(x, cond) - model(x, cond)).mean().item())


@torch.no_grad()
def pairwise_agreement(
    reward: RewardModel, gold: RewardModel, a: Tensor, b: Tensor, cond: Tensor | None = None
) -> float:
    """Fraction of pairs that ``reward`` orders as ``gold`` does (gold ties excluded)."""
    dg = gold(a, cond) - gold(b, cond)
    dr = reward(a, cond) - reward(b, cond)
    keep = dg != 0
    return (torch.sign(dg[keep]) == torch.sign(dr[keep])).float().mean().item()


@torch.no_grad()
def bradley_terry_logloss(reward: RewardModel, pairs: PreferencePairs, temperature: float = 1.0) -> float:
    """The Bradley-Terry log-loss of ``reward`` on labelled pairs (unconditional rewards)."""
    logits = (reward(pairs.a) - reward(pairs.b)) / temperature
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, pairs.prefer_a).item()


@torch.no_grad()
def heldout_metrics(
    proxy: RewardModel, gold: RewardModel, held: PreferencePairs, temperature: float, data_a: Tensor, data_b: Tensor
) -> dict[str, float]:
    """How well a proxy of an unconditional gold generalises: held-out log-loss on noisy labels (and
    the gold's own, its floor at that label noise), the fraction of pairs ordered as the gold
    orders them on held-out comparison pairs, on those whose gold utilities differ by more than 0.1
    (smaller differences are below any label's resolution), and on pretrained samples ``data_a``,
    ``data_b``; and the root-mean-square error on ``data_a``."""
    clear = (gold(held.a) - gold(held.b)).abs() > 0.1
    return {
        "heldout_logloss": bradley_terry_logloss(proxy, held),
        "heldout_logloss_gold": bradley_terry_logloss(gold, held, temperature),
        "agreement_heldout": pairwise_agreement(proxy, gold, held.a, held.b),
        "agreement_heldout_gold_diff_gt_0.1": pairwise_agreement(proxy, gold, held.a[clear], held.b[clear]),
        "agreement_pretrained_samples": pairwise_agreement(proxy, gold, data_a, data_b),
        "rmse_pretrained_samples": (proxy(data_a) - gold(data_a)).square().mean().sqrt().item(),
    }

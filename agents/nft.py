"""DiffusionNFT: negative-aware fine-tuning on the forward process (Zheng et al. 2025, arXiv 2509.16117).

No likelihood of the sampler's steps: the generated samples are noised again and the model regressed
on them, positives and negatives alike. Per iteration, from B episodes of the current policy ("old",
theta_old: the policy at the iteration's start, where their code keeps an EMA of it with decay up to
0.5), with ``x0 = Y_N`` and each episode's optimality probability ``p`` in [0, 1] (its reward
standardised per condition, clipped, mapped to [0, 1]: their eq. 9), for every grid step k a fresh
``x_k = alpha_k x0 + sigma_k eps`` and the implicit positive and negative models (their eq. 6)

    s+ = s_old + beta (s_theta - s_old),     s- = s_old - beta (s_theta - s_old),
    L  = E_{x0, k, eps}[ p ||eps_hat(s+) - eps||^2 + (1 - p) ||eps_hat(s-) - eps||^2 ],

``eps_hat(s) = -sigma_k s`` (their eq. 8). In the zoo's parametrisation the model is the pretrained
score plus the policy's correction, ``s_theta = s_pre + delta_theta``, so ``s_theta - s_old`` is the
change of the correction. With every ``p = 1`` and ``beta = 1`` the loss is the denoising regression
on the generated samples (the eps form of score matching, sigma^2-weighted; their code regresses the
x0 prediction, ``sigma^2 / alpha^2`` times this, with a per-sample adaptive normalisation, neither of
which is finite at a flow's pure-noise step, where this form is). Its minimiser moves the model
towards ``p_old`` reweighted by the optimality probability (their Theorem 3.1); the anchor to the
pretrained model is ``kl_price`` times the env's running KL price at the trajectories' states,
differentiated pathwise as the zoo's other agents do (their code's is a velocity penalty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agents.common.agent import AgentConfig, FieldAgent, Stats
from agents.common.trajectories import Trajectories, field_deltas, policy_deltas, running_kl
from agents.grpo import group_advantages
from diffusion_gym import distributed
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.validation import NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class NFTConfig(AgentConfig):
    """DiffusionNFT settings.

    Attributes:
        beta: the implicit models' step ``beta`` (their guidance strength).
        epochs: passes over each batch of noised samples.
        minibatches: minibatches per pass (split along episodes).
        adv_clip: standardised rewards are clipped to [-adv_clip, adv_clip], then mapped to
            ``p = 0.5 + 0.5 * clipped / adv_clip`` (DiffusionNFT's code: 5).
        kl_price: weight of the env's running KL price in the loss, the anchor to the pretrained model
            that DiffusionNFT's code adds as a velocity penalty (its ``train.beta``; 0: none). Measured on
            DiffusionSDE-v0 (N = 10, 256 envs, 5,120 queries, adv_clip 5, one seed): without it the KL
            runs away (0.13, 0.67, 1.83, 4.0 nats after 1, 5, 9, 13 iterations; J from 0.46 to -3.9),
            as the regression's noise accumulates from one "old" model to the next (with every
            ``p = 1/2`` the loss is ``||old||^2 + ||change||^2``, still at zero change; with ``p = 1`` it is
            the denoising regression on 256 samples); at 0.1 J rises to 0.59 with 0.04 nats of KL.
    """

    lr: NonNegativeFloat = 1e-3
    beta: PositiveFloat = 1.0
    epochs: PositiveInt = 4
    minibatches: PositiveInt = 4
    adv_clip: PositiveFloat = 5.0
    kl_price: NonNegativeFloat = 0.1


def optimality_probability(rewards: Tensor, groups: Tensor, adv_clip: float) -> Tensor:
    """``p = 0.5 + 0.5 * clip((r - mean_g) / std_g, -c, c) / c`` per episode, in [0, 1]."""
    standardised, _ = group_advantages(rewards, groups)
    return 0.5 + 0.5 * standardised.clamp(-adv_clip, adv_clip) / adv_clip


@dataclass
class NoisedSamples:
    """Every episode's final state noised again at every grid step, with what the loss needs fixed:
    ``x`` (N, B, ...), the noise ``eps``, ``sigma`` (N, 1, ...), the old model's residual
    ``old = eps_hat(s_old) - eps`` and the old correction ``delta_old``."""

    x: Tensor
    eps: Tensor
    sigma: Tensor
    old: Tensor
    delta_old: Tensor


def noised_samples(agent: FieldAgent, traj: Trajectories) -> NoisedSamples:
    """Draw ``x_k = alpha_k Y_N + sigma_k eps`` at every grid step and evaluate the old model there."""
    env: DiffusionSDEVectorEnv = agent.env
    disc = env.discretization
    y = traj.states[-1]
    shape = (-1, *([1] * (y.ndim)))
    alpha, sigma = env.schedule.alpha(disc.s).view(shape), env.schedule.sigma(disc.s).view(shape)
    eps = torch.randn((env.n_steps, *y.shape), generator=agent.generator, device=env.device, dtype=env.dtype)
    x = alpha * y + sigma * eps
    with torch.no_grad():
        delta = field_deltas(agent, x, traj.cond)
        score = torch.stack([env.score(k, x[k], traj.cond) for k in range(env.n_steps)])
    return NoisedSamples(x, eps, sigma, -sigma * (score + delta) - eps, delta)


def nft_loss(noised: NoisedSamples, delta: Tensor, p: Tensor, beta: float, idx: Tensor | slice = slice(None)) -> Tensor:
    """DiffusionNFT's loss (module docstring) at the policy's corrections ``delta`` (N, b, ...) of the
    episodes ``idx``, with their optimality probabilities ``p`` (b,): a sum over the event, a mean over
    steps and episodes."""
    change = beta * noised.sigma * (delta - noised.delta_old[:, idx])  # sigma beta (s_theta - s_old)
    old = noised.old[:, idx]
    positive = (old - change).flatten(2).square().sum(2)  # ||eps_hat(s+) - eps||^2, (N, b)
    negative = (old + change).flatten(2).square().sum(2)
    return (p * positive + (1 - p) * negative).mean()


class NFT(FieldAgent):
    """DiffusionNFT (see the module docstring)."""

    name = "nft"

    def __init__(self, env: Any, config: NFTConfig | None = None) -> None:
        super().__init__(env, config or NFTConfig(), critic=None)

    def update(self, traj: Trajectories) -> Stats:
        cfg, env = self.config, self.env
        with torch.no_grad():
            cond = None if traj.cond is None else distributed.gather(traj.cond)
            rewards = distributed.gather(traj.terminal_reward)
            groups = torch.zeros_like(rewards, dtype=torch.int64) if cond is None else cond
            p = distributed.local_part(optimality_probability(rewards, groups, cfg.adv_clip))
            noised = noised_samples(self, traj)
        total, count = torch.zeros((), device=env.device), 0
        for _ in range(cfg.epochs):
            for idx in self.minibatches(traj.batch, cfg.minibatches):
                delta = field_deltas(self, noised.x[:, idx], None if traj.cond is None else traj.cond[idx])
                loss = nft_loss(noised, delta, p[idx], cfg.beta, idx)
                if cfg.kl_price > 0:
                    loss = (
                        loss
                        + cfg.kl_price * env.kl_coef * running_kl(env, policy_deltas(self, traj.subset(idx))).mean()
                    )
                grad_norm = self.clip_and_step("actor", loss)
                total, count = total + loss.detach(), count + 1
        return {"nft_loss": total / count, "grad_norm": grad_norm, "optimality_mean": p.mean()}

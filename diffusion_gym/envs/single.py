"""The single (numpy) environment: one sample of the batched env, with Gymnasium's numpy API."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import Env
from gymnasium.spaces import Box, Dict
from gymnasium.vector import AutoresetMode

from diffusion_gym.base_models.protocol import ScoreModel
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.validation import coerce


class DiffusionSDEEnv(Env):
    """One sample of the controlled reverse SDE (docs/design.md, section 2), stepped by the batched env.

    It runs a :class:`DiffusionSDEVectorEnv` with one row, so it gives the same trajectory as a
    batched env with ``num_envs=1`` for the same seed and actions. (A batched env with B rows draws
    each step's noise for all rows at once, so its row 0 does not reproduce the single env.)
    Observations are ``{"x": ndarray, "t": ndarray of shape (1,)}``, rewards Python floats, info
    values Python scalars.

    Args:
        score_model: the pretrained score.
        reward: the terminal reward.
        gold: the hidden utility, reported in ``info["gold_reward"]``.
        flatten: present ``x`` and the action as flat vectors. Defaults to True for images (event
            shapes of more than one dimension): SB3 treats any 3-D Box as a uint8 image and its MLP
            policies want vectors; the batched env always keeps the image shape.
        render_mode: None or "rgb_array": :meth:`render` returns an (H, W, 3) uint8 picture of the
            sample (:mod:`diffusion_gym.envs.rendering`).
        **kwargs: everything :class:`DiffusionSDEVectorEnv` takes after its models (``n_steps``,
            ``grid``, ``integrator``, ``kl_coef``, ``action_scale``, ``device``, ``dtype``, ...).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        score_model: ScoreModel,
        reward: RewardModel,
        gold: RewardModel | None = None,
        flatten: bool | None = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "autoreset_mode" in kwargs:
            raise ValueError(
                "autoreset_mode is the batched env's keyword (gym.make_vec): a single env never resets itself"
            )
        kwargs.setdefault("sync_checks", True)
        flatten = coerce(flatten, bool | None, "flatten")
        self.batched = DiffusionSDEVectorEnv(
            1, score_model, reward, gold, autoreset_mode=AutoresetMode.DISABLED, render_mode=render_mode, **kwargs
        )
        self.render_mode = render_mode
        shape = self.batched.event_shape
        self.flatten = len(shape) > 1 if flatten is None else flatten
        self.observation_space = self.batched.single_observation_space
        self.action_space = self.batched.single_action_space
        if self.flatten:
            size = math.prod(shape)
            box = self.observation_space["x"]
            spaces_ = dict(self.observation_space.spaces)
            spaces_["x"] = Box(box.low.reshape(size), box.high.reshape(size), (size,), box.dtype)
            self.observation_space = Dict(spaces_)
            self.action_space = Box(-1.0, 1.0, (size,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode. A seed seeds the torch generator as the batched env's seed does; without
        one, the first reset seeds it from ``np_random``."""
        super().reset(seed=seed)
        if seed is None and not self.batched._seeded:
            seed = int(self.np_random.integers(2**62))
        obs, info = self.batched.reset(seed=seed, options=options)
        return self._numpy_obs(obs), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """One grid interval. Raises ValueError on a wrong shape, a non-numeric dtype, NaN or inf, and
        ResetNeeded after the last step; out-of-bounds components are clipped and counted."""
        a = np.asarray(action)
        if a.dtype.kind not in "iuf":
            raise ValueError(f"action must be real numbers castable to float32, got dtype {a.dtype}")
        if a.shape != self.action_space.shape:
            raise ValueError(f"expected an action of shape {self.action_space.shape}, got {a.shape}")
        obs, reward, terminated, truncated, info = self.batched.step(a.reshape(1, *self.batched.event_shape))
        return (
            self._numpy_obs(obs),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            _row_info(info),
        )

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``, the sample as an (H, W, 3) uint8 picture (the batched env's);
        None without a render mode. Raises ResetNeeded before the first reset."""
        return self.batched.render()

    def _numpy_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, Any]:
        out: dict[str, Any] = {k: v[0].cpu().numpy().copy() for k, v in obs.items()}  # copies: never views of env state
        if self.flatten:
            out["x"] = out["x"].reshape(-1)
        if "cond" in out:
            out["cond"] = np.int64(out["cond"])  # a Discrete observation is a numpy integer
        return out


def _row_info(info: dict[str, Any]) -> dict[str, Any]:
    """The batched env's info of its one row as Python numbers; the episode statistics as Gymnasium's
    ``RecordEpisodeStatistics`` writes them for a single env (``{"r", "l", "t"}``, no mask)."""
    out = {k: v[0].item() for k, v in info.items() if k not in ("episode", "_episode")}
    if "episode" in info:
        out["episode"] = {k: v[0].item() for k, v in info["episode"].items()}
    return out

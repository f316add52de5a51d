"""A Stable-Baselines3 ``VecEnv`` over the batched torch env: SB3 agents train on B samples at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from diffusion_gym.envs.vector import DiffusionSDEVectorEnv


class SB3VecEnv(VecEnv):
    """SB3's VecEnv API (numpy in and out, reset on done) over a :class:`DiffusionSDEVectorEnv`.

    All B samples terminate together; on that step each info carries SB3's
    ``terminal_observation`` and the episode's ``terminal_reward``, ``gold_reward``, ``kl_total``
    and ``objective``, and the returned observation starts the next episode.

    Args:
        env: the batched env (autoreset NEXT_STEP or DISABLED; this adapter resets it itself).
    """

    def __init__(self, env: DiffusionSDEVectorEnv) -> None:
        if env.autoreset_mode is AutoresetMode.SAME_STEP:
            raise ValueError("SB3VecEnv resets the batched env itself; build it with autoreset NEXT_STEP or DISABLED")
        self.env = env
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def reset(self) -> VecEnvObs:
        """Reset all rows; ``seed()`` and ``set_options()`` apply to this reset only (SB3's rule), so the
        automatic resets between episodes draw fresh conditions."""
        obs, _ = self.env.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        return _to_numpy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.env.step(torch.as_tensor(self._actions))
        done = (terminated | truncated).cpu().numpy()
        obs_np = _to_numpy(obs)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.all():
            episode = {
                k: info[k].cpu().numpy()
                for k in ("terminal_reward", "gold_reward", "kl_total", "objective")
                if k in info
            }
            for i, row in enumerate(infos):
                row["terminal_observation"] = {k: v[i] for k, v in obs_np.items()}
                row["TimeLimit.truncated"] = False
                row.update({k: float(v[i]) for k, v in episode.items()})
                # SB3's Monitor convention: its logger reads the episode's return, length and seconds here.
                row["episode"] = {key: float(info["episode"][key][i]) for key in ("r", "l", "t")}
            obs_np = _to_numpy(self.env.reset()[0])
        return obs_np, reward.cpu().numpy().astype(np.float32), done, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.env, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]


def _to_numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in obs.items()}

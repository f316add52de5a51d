"""Any Stable-Baselines3 agent (PPO, SAC, ...) on a diffusion env: the "plug in your own agent" path.

Two routes, both standard SB3: the plain Gymnasium API (``gym.make``, SB3's own ``DummyVecEnv``),
and the batched torch env through :class:`~diffusion_gym.envs.stable_baselines.SB3VecEnv` (every row of the
batch is one of SB3's envs). :class:`SB3Agent` wraps either in the zoo's API so that SB3 agents
appear in the benchmarks beside ours; their policies are SB3's (Gaussian over actions, a
``MultiInputPolicy`` over ``{"x", "t"}``), evaluated deterministically.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import Tensor

from agents.common.agent import Agent, AgentConfig, Callback
from agents.common.checkpointing import check_identity, run_identity
from diffusion_gym.envs.stable_baselines import SB3VecEnv
from diffusion_gym.validation import Range

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
IDENTITY_MEMBER = "diffusion_gym_identity.json"
"""The member of SB3's checkpoint zip that holds the run's identity."""


def make_sb3_model(
    algorithm: str,
    env: Any,
    seed: int = 0,
    logdir: str | None = None,
    **kwargs: Any,
) -> BaseAlgorithm:
    """An SB3 model with a ``MultiInputPolicy`` on ``env`` (a Gymnasium env id, env, or SB3 VecEnv).

    Args:
        algorithm: "ppo" or "sac".
        env: what SB3 trains on; a ``DiffusionSDEVectorEnv`` is wrapped in :class:`SB3VecEnv`.
        seed: SB3's seed.
        logdir: TensorBoard directory.
        **kwargs: the algorithm's keyword arguments.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    if isinstance(env, str):
        env = DummyVecEnv([lambda: gym.make(env)])
    elif hasattr(env, "record_transitions"):  # the batched torch env
        env = SB3VecEnv(env)
    return ALGORITHMS[algorithm]("MultiInputPolicy", env, seed=seed, tensorboard_log=logdir, device="cpu", **kwargs)


@dataclass
class SB3Config(AgentConfig):
    """SB3 agent settings. The objective is undiscounted (``gamma = 1``), and SB3's exploration noise is
    itself a score correction the env charges KL for, so its initial size is a setting to search.

    Attributes:
        algorithm: "ppo" or "sac".
        gamma: the discount; 1 is the objective (SB3's default 0.99 optimises another one).
        gae_lambda: PPO's GAE lambda (1: Monte Carlo returns).
        log_std_init: PPO's initial log standard deviation of the action noise (SAC: with gSDE only).
        use_sde: generalised state-dependent exploration (gSDE).
        target_entropy: SAC's entropy target (``"auto"``: minus the action dimension).
        algo_kwargs: further keyword arguments of the algorithm, over the above (defaults: SB3's,
            except PPO's ``n_steps`` = the env's episode length, so each rollout is whole episodes).
    """

    algorithm: Literal["ppo", "sac"] = "ppo"
    gamma: Annotated[float, Range(gt=0, le=1)] = 1.0
    gae_lambda: Annotated[float, Range(ge=0, le=1)] = 0.95
    log_std_init: float = 0.0
    use_sde: bool = False
    target_entropy: Literal["auto"] | float = "auto"
    algo_kwargs: dict[str, Any] = field(default_factory=dict)

    def algorithm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments these settings give the SB3 algorithm (``algo_kwargs`` win)."""
        kwargs: dict[str, Any] = {"gamma": self.gamma, "learning_rate": self.lr, "use_sde": self.use_sde}
        policy_kwargs: dict[str, Any] = {}
        if self.algorithm == "ppo":
            kwargs["gae_lambda"] = self.gae_lambda
            policy_kwargs["log_std_init"] = self.log_std_init
        elif self.algorithm == "sac":
            kwargs["target_entropy"] = self.target_entropy
            if self.use_sde:
                policy_kwargs["log_std_init"] = self.log_std_init
        kwargs["policy_kwargs"] = policy_kwargs | dict(self.algo_kwargs.get("policy_kwargs", {}))
        return kwargs | {k: v for k, v in self.algo_kwargs.items() if k != "policy_kwargs"}


class SB3Agent(Agent):
    """An SB3 algorithm trained on the batched env through :class:`SB3VecEnv`, in the zoo's API."""

    name = "sb3"
    single_process = (
        "Stable-Baselines3 has no data-parallel update, so each rank would train its own model on its own "
        "envs and the ranks would never agree"
    )

    def __init__(self, env: Any, config: SB3Config | None = None) -> None:
        super().__init__(env, config or SB3Config())
        cfg = self.config
        kwargs = cfg.algorithm_kwargs()
        if cfg.algorithm == "ppo":
            kwargs.setdefault("n_steps", self.env.n_steps)
            kwargs.setdefault("batch_size", min(256, self.env.n_steps * self.env.num_envs))
        self.model = make_sb3_model(cfg.algorithm, self.env, cfg.seed, cfg.logdir, **kwargs)
        self.name = f"sb3_{cfg.algorithm}"

    def mean_action(self, t: Tensor, x: Tensor, cond: Tensor | None) -> Tensor:
        obs = {"x": x.cpu().numpy(), "t": t.reshape(-1, 1).cpu().numpy()}
        if cond is not None:
            obs["cond"] = cond.cpu().numpy()
        action, _ = self.model.predict(obs, deterministic=True)
        return torch.as_tensor(np.asarray(action), dtype=x.dtype, device=x.device)

    def learn(
        self,
        reward_queries: int,
        callback: Callback | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 10,
    ) -> Agent:
        """Train until ``reward_queries`` episodes in total (SB3 counts env steps: N per episode and row).

        ``callback`` is called once per finished batch of episodes, after SB3 has learnt from it,
        with ``reward_queries`` counting finished episodes (no scalars: SB3 logs its own);
        returning False stops training.
        """
        batches = -(-reward_queries // self.env.num_envs)  # whole batches of episodes: SB3 may stop mid-episode
        steps = batches * self.env.num_envs * self.env.n_steps - self.model.num_timesteps
        if steps > 0:
            hook = _ZooCallback(self, callback) if callback is not None else None
            self.model.learn(total_timesteps=steps, callback=hook, reset_num_timesteps=False, progress_bar=False)
        self.reward_queries = self.finished_episodes()
        if checkpoint is not None:
            self.save(checkpoint)
        return self

    def finished_episodes(self) -> int:
        """Episodes finished by SB3's env steps so far (all rows of the batch step together)."""
        return self.model.num_timesteps // (self.env.n_steps * self.env.num_envs) * self.env.num_envs

    def save(self, path: str | Path) -> None:
        """SB3's own zip (SB3 writes it; the random states of the env are not part of it), with the
        run's identity added as one more member (:func:`~agents.common.checkpointing.run_identity`)."""
        self.model.save(Path(path))
        with zipfile.ZipFile(_zip_path(path), "a") as archive:
            archive.writestr(IDENTITY_MEMBER, json.dumps(run_identity(self), default=str))

    def load(self, path: str | Path) -> Agent:
        """Restore SB3's zip, refusing one written by another run (naming the field that differs)."""
        try:
            with zipfile.ZipFile(_zip_path(path)) as archive:
                names = archive.namelist()
                saved = json.loads(archive.read(IDENTITY_MEMBER)) if IDENTITY_MEMBER in names else None
        except FileNotFoundError:
            raise FileNotFoundError(f"no SB3 checkpoint {path}") from None
        except (zipfile.BadZipFile, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not an SB3 checkpoint ({err})") from None
        try:
            # JSON turns tuples into lists: compare what JSON gives back on both sides.
            check_identity(self, saved, as_json=True)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        self.model = ALGORITHMS[self.config.algorithm].load(Path(path), env=self.model.get_env(), device="cpu")
        self.reward_queries = self.finished_episodes()
        return self


def _zip_path(path: str | Path) -> Path:
    """The file SB3 writes for ``path``: it adds ``.zip`` to a name without a suffix."""
    path = Path(path)
    return path if path.suffix else path.with_suffix(".zip")


class _ZooCallback(BaseCallback):
    """Calls a zoo :data:`~agents.common.agent.Callback` once per finished batch of episodes, at the
    start of SB3's next rollout (after its update: every rollout for PPO, whose rollouts are whole
    episodes; the step after each episode boundary for off-policy algorithms, which train every step)."""

    def __init__(self, agent: SB3Agent, callback: Callback) -> None:
        super().__init__()
        self.agent, self.callback, self.keep_going = agent, callback, True
        self.episodes = agent.finished_episodes()

    def _on_step(self) -> bool:
        return self.keep_going

    def _on_rollout_start(self) -> None:
        finished = self.agent.finished_episodes()
        if finished == self.episodes:
            return
        self.episodes = self.agent.reward_queries = finished
        self.keep_going = self.callback(self.agent, {}) is not False

"""The zoo's one API: ``Agent(env, config)``, ``learn``, ``policy``, ``evaluate``, ``save`` / ``load``.

An agent trains on a batched :class:`~diffusion_gym.envs.vector.DiffusionSDEVectorEnv` (one
iteration = one episode of every row = ``num_envs`` reward queries) and represents its policy as
a score-correction field ``delta(t, x, c)``. This module holds the training loop; the policy and
value networks are in :mod:`agents.common.policies` and :mod:`agents.common.values`, checkpoints
and evaluation in :mod:`agents.common.checkpointing`. Checkpoints hold every random state (torch's,
the agent's generator, the env's), so a run killed after a checkpoint and resumed ends where an
uninterrupted run ends.

Under ``torchrun`` the same loop is data-parallel (docs/design.md, section 6): each rank steps its
own envs (one iteration queries ``world_size * num_envs`` rewards) from its own seeds, every
optimiser step averages the gradients over ranks (:meth:`Agent.clip_and_step`), the agents compute
their batch statistics on the whole batch (:func:`~diffusion_gym.distributed.gather`), the logged
scalars are reduced, and rank 0 alone writes checkpoints (with every rank's random states) and
TensorBoard. An agent built on this base is data-parallel if its optimiser steps go through
:meth:`Agent.clip_and_step` and its batch statistics through ``gather``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor, nn
from tqdm.auto import tqdm

from agents.common import checkpointing
from agents.common.policies import correction, make_policy, squash
from agents.common.trajectories import Trajectories, collect
from agents.common.values import make_critic, trajectory_values
from diffusion_gym import distributed
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import Estimate
from diffusion_gym.validation import NonNegativeFloat, PositiveFloat, PositiveInt, Seed, validate_fields

Stats = dict[str, Tensor | float]
"""An iteration's scalars: device tensors (0-d) or floats, turned into floats once per iteration."""
Callback = Callable[["Agent", dict[str, float]], bool | None]
"""Called after every iteration with the agent and its logged scalars; returning False stops learning.
Under ``torchrun`` every rank calls it with the same scalars and counters: it must decide the same
way on every rank (from those, not from rank-local state), or the ranks part ways."""


@dataclass
class AgentConfig:
    """Settings every agent has.

    Every field is checked against its annotation when the config is made
    (:mod:`diffusion_gym.validation`): a config that exists is a valid one.

    Attributes:
        seed: seeds the initial weights, the agent's generator and the env's first reset.
        lr: the policy's learning rate (Adam).
        hidden: hidden widths of the policy (and value) MLPs.
        max_grad_norm: gradient clipping of every update.
        anneal_lr: decay every learning rate linearly to 10% of its value over the reward-query budget.
        policy_net: the policy's network, a name in :data:`agents.common.policies.POLICIES`: ``"mlp"``
            (an MLP of time, flattened state and condition), ``"conv"`` (a small convolutional field
            for image states; ``hidden`` does not apply), ``"lora"`` (the base UNet with LoRA
            adapters; UNet bases only), one registered with ``register_policy``, or ``"auto"`` (the
            first registered policy that fits the env, LoRA on a UNet base, else the MLP).
        lora_rank: the rank of the LoRA adapters.
        compile: run the policy network and the trajectories' transition densities through
            ``torch.compile`` (the first iterations pay the compilation).
        logdir: TensorBoard directory (None: no logging).
        progress: show a tqdm bar.
    """

    seed: Seed = 0
    lr: NonNegativeFloat = 1e-3
    hidden: tuple[PositiveInt, ...] = (128, 128)
    max_grad_norm: PositiveFloat = 1.0
    anneal_lr: bool = True
    policy_net: str = "auto"
    lora_rank: PositiveInt = 4
    compile: bool = False
    logdir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # Every field as its annotation declares it, in every subclass: "no" is False, -1 is refused.
        validate_fields(self)


class Agent:
    """Base class: the training loop, acting, evaluation, logging and checkpoints.

    Subclasses build their networks and optimisers in ``__init__`` (registering what a checkpoint
    must hold in ``self.modules`` and ``self.optimizers``), implement :meth:`mean_action` (the
    deterministic policy, an action in (-1, 1)) and :meth:`update` (one iteration's learning from
    fresh trajectories), and may override :meth:`behaviour_action` to explore,
    :meth:`collect_trajectories` to collect otherwise (groups of one condition) or
    :meth:`train_iteration` to learn from something else than stored episodes.
    """

    name = "agent"
    trains = True
    """False for references that compute their policy instead of learning it (no reward queries)."""
    single_process: str | None = None
    """Why this agent cannot train data-parallel (None: it can); it then refuses a world size > 1."""

    def __init__(self, env: Any, config: AgentConfig) -> None:
        env = getattr(env, "unwrapped", env)
        if not isinstance(env, DiffusionSDEVectorEnv):
            raise TypeError(f"agents train on the batched DiffusionSDEVectorEnv, got {type(env).__name__}")
        if env.autoreset_mode is AutoresetMode.SAME_STEP:
            # The last step's observation would be the next episode's start, not Y_N.
            raise ValueError("agents need autoreset_mode NEXT_STEP or DISABLED, not SAME_STEP")
        self.world_size = distributed.world_size()
        if self.world_size > 1 and self.single_process is not None:
            raise RuntimeError(
                f"{type(self).__name__} cannot train with world size {self.world_size}: {self.single_process}. "
                "Run it in one process (without torchrun, or with --nproc_per_node 1)."
            )
        env.record_transitions = True
        self.env = env
        self.config = config
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.generator = torch.Generator(device=env.device).manual_seed(distributed.rank_seed(config.seed))
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.reward_queries = 0
        self.iteration = 0
        self._writer: Any = None

    # ---------------------------------------------------------------------------------------------
    # The policy.

    def mean_action(self, t: Tensor, x: Tensor, cond: Tensor | None) -> Tensor:
        """The deterministic policy's action in (-1, 1) at env times ``t`` (B,) for states ``x``."""
        raise NotImplementedError

    def act(self, obs: dict[str, Tensor]) -> Tensor:
        """The deterministic policy's action for a batched observation of the env."""
        return self.mean_action(obs["t"][:, 0], obs["x"], obs.get("cond"))

    def behaviour_action(self, k: int, obs: dict[str, Tensor]) -> Tensor:
        """The action taken while learning at step k (default: the deterministic policy)."""
        return self.act(obs)

    @torch.no_grad()
    def policy(self, t: Tensor | float, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The score correction ``delta(t, x, c) = action_scale(t) * action``, batched."""
        return correction(self.env, self.mean_action, t, x, cond)

    # ---------------------------------------------------------------------------------------------
    # Learning.

    def update(self, traj: Trajectories) -> Stats:
        """Learn from one batch of fresh trajectories; return scalars to log (0-d device tensors are
        fine: they are read once per iteration, in one synchronisation)."""
        raise NotImplementedError

    def before_training(self) -> None:
        """Called once at the start of a fresh run (not on resume), after the env's first reset; any
        episodes it runs must be added to ``self.reward_queries``."""

    def minibatches(self, batch: int, n: int) -> tuple[Tensor, ...]:
        """``n`` minibatches of episode indices from a fresh random permutation of ``batch`` episodes."""
        return torch.randperm(batch, generator=self.generator, device=self.generator.device).chunk(n)

    def learn(
        self,
        reward_queries: int,
        callback: Callback | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 10,
    ) -> Agent:
        """Train until ``reward_queries`` terminal rewards have been queried in total (a resumed run
        continues towards the same total).

        Args:
            reward_queries: the total budget; each iteration queries ``num_envs`` rewards (under
                ``torchrun``, every rank's envs together).
            callback: called after each iteration with the logged scalars; returning False stops.
            checkpoint: save here (atomically) every ``checkpoint_every`` iterations and at the end.
            checkpoint_every: iterations between checkpoints.
        """
        if self.iteration == 0 and self.reward_queries == 0:
            distributed.broadcast_parameters(self.trainable_parameters())
            self.env.reset(seed=distributed.rank_seed(self.config.seed))
            self.before_training()
        bar = tqdm(
            total=reward_queries,
            initial=min(self.reward_queries, reward_queries),
            desc=self.name,
            unit="queries",
            disable=not self.config.progress or not distributed.is_main(),
        )
        groups = [group for opt in self.optimizers.values() for group in opt.param_groups]
        for group in groups:
            group.setdefault("initial_lr", group["lr"])  # saved with the optimiser: a resume anneals alike
        while self.reward_queries < reward_queries:
            if self.config.anneal_lr:
                factor = max(0.1, 1.0 - self.reward_queries / reward_queries)
                for group in groups:
                    group["lr"] = group["initial_lr"] * factor
            iteration_stats, episodes = self.train_iteration()
            stats = distributed.reduce_stats(to_floats(iteration_stats))
            self.iteration += 1
            self.reward_queries += episodes * self.world_size
            self._log(stats)
            bar.update(episodes * self.world_size)
            bar.set_postfix(objective=f"{stats['objective']:.3f}", kl=f"{stats['kl']:.3f}")
            if checkpoint is not None and (
                self.iteration % checkpoint_every == 0 or self.reward_queries >= reward_queries
            ):
                self.save(checkpoint)
            if callback is not None and callback(self, stats) is False:
                break
        bar.close()
        if self._writer is not None:
            self._writer.flush()
        return self

    def collect_trajectories(self) -> Trajectories:
        """One batch of fresh episodes for :meth:`update` (default: one episode of every env row with
        :meth:`behaviour_action`)."""
        return collect(self.env, self.behaviour_action)

    def train_iteration(self) -> tuple[Stats, int]:
        """One iteration: fresh episodes and the update on them; returns the scalars to log (with the
        episodes' objective, proxy, gold and KL) and the number of episodes (this rank's reward queries).
        An agent that does not learn from stored episodes (a reward-gradient method) overrides it."""
        traj = self.collect_trajectories()
        return self.update(traj) | self._episode_stats(traj), traj.batch

    def _episode_stats(self, traj: Trajectories) -> Stats:
        stats: Stats = {"objective": traj.objective.mean(), "proxy": traj.terminal_reward.mean()}
        stats["kl"] = traj.kl.sum(0).mean()
        if traj.gold_reward is not None:
            stats["gold"] = traj.gold_reward.mean()
        return stats

    def _log(self, stats: dict[str, float]) -> None:
        if self.config.logdir is None or not distributed.is_main():
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.config.logdir, purge_step=self.reward_queries or None)
        for key, value in stats.items():
            if math.isfinite(value):
                self._writer.add_scalar(f"{self.name}/{key}", value, self.reward_queries)

    def trainable_parameters(self) -> list[Tensor]:
        """The parameters the optimisers step: all that data-parallel ranks synchronise (a LoRA
        policy's adapters, not its frozen base)."""
        return [p for opt in self.optimizers.values() for p in _stepped(opt)]

    def clip_and_step(self, name: str, loss: Tensor) -> Tensor:
        """Backpropagate ``loss`` into optimiser ``name``'s parameters, average the gradients over ranks
        (data-parallel runs; ``loss`` is this rank's mean over its episodes, and ranks hold equal
        numbers of them, so the average is the whole minibatch's gradient), clip, step; returns the
        gradient norm before clipping (a device tensor: reading it would wait for the device)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = _stepped(opt)
        distributed.average_gradients(params)
        norm = nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        opt.step()
        return norm.detach()

    # ---------------------------------------------------------------------------------------------
    # Evaluation.

    def evaluate(
        self, env: DiffusionSDEVectorEnv | None = None, n: int = 4096, seed: int = 12345
    ) -> dict[str, Estimate]:
        """Objective, proxy and gold reward and KL of the deterministic policy, with standard errors.

        ``env`` may have another grid than the training env (the policy is a function of time); the
        training env's random stream is left as it was.
        """
        return checkpointing.evaluate(self, env, n, seed)

    # ---------------------------------------------------------------------------------------------
    # Checkpoints (the format: :mod:`agents.common.checkpointing`).

    def rng_state(self) -> dict[str, Tensor]:
        """This process's random states: torch's, the agent's generator and the env's."""
        return {"torch": torch.get_rng_state(), "generator": self.generator.get_state(), "env": self.env.rng_state()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        self.env.set_rng_state(state["env"])

    def state_dict(self, rng: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """The checkpoint: weights, optimisers, counters and ``rng``, every rank's random states in
        rank order (default: this process's alone)."""
        return checkpointing.state_dict(self, rng)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpointing.load_state_dict(self, state)

    def save(self, path: str | Path) -> None:
        """Write the checkpoint atomically (a temporary file renamed over ``path``). Under ``torchrun``
        every rank must call it: the ranks' random states are gathered and rank 0 writes the file."""
        checkpointing.save(self, path)

    def load(self, path: str | Path) -> Agent:
        """Restore a checkpoint written by :meth:`save` into this agent (same config and env).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is truncated or not an agent checkpoint, or is of another agent or config.
        """
        checkpointing.load(self, path)
        return self


class FieldAgent(Agent):
    """An agent whose policy is a field ``delta(t, x, c) = action_scale(t) tanh(actor(t, x, c))``, zero
    at the start (the pretrained model), optionally with a value ``critic(t, x, c)``. The actor is the
    policy network ``config.policy_net`` names (:mod:`agents.common.policies`), the critic the value
    network ``critic`` names (:mod:`agents.common.values`).

    The config must have ``lr`` (actor) and, with a critic, ``value_lr``.
    """

    def __init__(self, env: Any, config: AgentConfig, critic: str | None) -> None:
        super().__init__(env, config)
        e = self.env
        self.actor = make_policy(e, config)
        self._actor_fn = torch.compile(self.actor) if config.compile else self.actor
        self.modules = {"actor": self.actor}
        trainable = [p for p in self.actor.parameters() if p.requires_grad]
        self.optimizers = {"actor": torch.optim.Adam(trainable, lr=config.lr)}
        if critic is not None:
            self.critic = make_critic(e, config, critic)
            self.modules["critic"] = self.critic
            self.optimizers["critic"] = torch.optim.Adam(self.critic.parameters(), lr=config.value_lr)  # type: ignore[attr-defined]

    def mean_action(self, t: Tensor, x: Tensor, cond: Tensor | None) -> Tensor:
        return squash(self._actor_fn(t, x, cond))

    def values(self, traj: Trajectories) -> Tensor:
        """``V(t_k, Y_k)`` for k = 0..N, with ``V(t_N) = 0`` (no reward after the last step), (N + 1, B)."""
        return trajectory_values(self.critic, self.env, traj)


def to_floats(stats: Stats) -> dict[str, float]:
    """The scalars as floats, the device tensors among them read in one transfer."""
    tensors = {k: v.detach().reshape(()) for k, v in stats.items() if isinstance(v, Tensor)}
    values: list[float] = []
    if tensors:
        device = next(iter(tensors.values())).device  # a CPU scalar among device ones (a zero grad norm) joins them
        values = torch.stack([v.to(device=device, dtype=torch.float64) for v in tensors.values()]).tolist()
    floats = {k: float(v) for k, v in stats.items() if not isinstance(v, Tensor)}
    return floats | dict(zip(tensors, values, strict=True))


def _stepped(opt: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters an optimiser steps."""
    return [p for group in opt.param_groups for p in group["params"]]

"""The batched environment: B reverse-SDE samples stepped as one torch batch on a device.

The env validates actions, holds the state, draws the noise, evaluates the base model and the
rewards, and builds observations and infos; the step math itself is :mod:`diffusion_gym.kernel`'s
(docs/design.md, section 2). The single numpy env and the SB3 adapter wrap this one. Tensors stay
on ``device``: no host round trip in the step loop. Each step is

    delta_k = action_scale(t_k) * clip(action, -1, 1)
    Y_{k+1} = a_k Y_k + b_k (s_pre(s_k, Y_k) + delta_k) + sqrt(v_k) xi_k,   xi_k ~ N(0, I)
    reward_k = -kl_coef * b_k^2 ||delta_k||^2 / (2 v_k)   (+ r(Y_N) on the last step)

with the coefficients of :func:`diffusion_gym.sde.discretize`, precomputed on the grid.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor, nn

from diffusion_gym import kernel
from diffusion_gym.base_models.protocol import ScoreModel
from diffusion_gym.parametrization import Parametrization, convert
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.sde import ActionScale, Discretization, Integrator, discretize, time_grid
from diffusion_gym.validation import NonNegativeFloat, PositiveFloat, PositiveInt, Seed, coerce, validated

LAW_NEUTRAL = frozenset(
    {"obs_bound", "device", "autoreset_mode", "sync_checks", "record_transitions", "compile", "render_mode"}
)
"""Env keywords that change neither the pretrained sampler's law nor the action class: shipped
references hold whatever they are (every other keyword is a law key: ``TaskSpec.law_keys``). The
device and ``compile`` change the last digits of a float, not the law."""
CONTROL_KEYWORDS = frozenset({"action_scale"})
"""Env keywords that leave the pretrained law (J*, J(pre)) alone but change the action class, and so
the reachable references J_best and J_oracle."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """Gymnasium's :class:`~gymnasium.vector.AutoresetMode` from itself, its name in any case and with
    ``-``, ``_`` or a space between words (``"same_step"``, ``"SAME-STEP"``) or its value
    (``"SameStep"``); a ValueError listing the accepted spellings otherwise."""
    if isinstance(mode, AutoresetMode):
        return mode
    if isinstance(mode, str):
        key = mode.strip().upper().replace("-", "_").replace(" ", "_")
        for member in AutoresetMode:
            if key in (member.name, member.value.upper()):
                return member
    names = ", ".join(f"{m.name} ({m.value!r})" for m in AutoresetMode)
    raise ValueError(f"autoreset_mode must be one of {names}, in any case, or the AutoresetMode enum; got {mode!r}")


def resolve_dtype(
    dtype: torch.dtype | str, allowed: tuple[torch.dtype, ...] = (torch.float32, torch.float64), name: str = "dtype"
) -> torch.dtype:
    """A dtype from itself or its name, one of ``allowed`` (errors name the keyword ``name``)."""
    if isinstance(dtype, str):
        dtype = _DTYPES.get(dtype.removeprefix("torch."), dtype)  # type: ignore[arg-type]
    if dtype not in allowed:
        raise ValueError(f"{name} must be one of {[str(d).removeprefix('torch.') for d in allowed]}, got {dtype!r}")
    return dtype  # type: ignore[return-value]


def _on_device(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``model`` itself if its tensors already live on ``device`` in ``dtype``, else a moved copy.

    Never moves the caller's module in place: two envs built on one model must not change each
    other's (or the caller's) device or precision.
    """
    if not isinstance(model, nn.Module):
        return model.to(device=device, dtype=dtype) if hasattr(model, "to") else model
    tensors = [*model.parameters(), *model.buffers()]
    ready = all(
        t.device.type == device.type
        and (device.index is None or t.device.index == device.index)
        and (not t.is_floating_point() or t.dtype == dtype)
        for t in tensors
    )
    return model if ready else copy.deepcopy(model).to(device=device, dtype=dtype)


class DiffusionSDEVectorEnv(VectorEnv):
    """``num_envs`` samples of the controlled reverse SDE, stepped together (docs/design.md, section 2).

    Observations are ``{"x": (B, *event_shape), "t": (B, 1)}`` torch tensors, plus ``"cond"`` (B,)
    (int64 condition indices: a class, a prompt) when the score model is conditional (it has
    ``num_conditions``); actions a ``(B, *event_shape)`` tensor (or array) in [-1, 1]; rewards,
    terminations and infos are tensors of shape (B,). All samples share the grid, so they
    terminate together after N steps. Each episode's conditions are drawn uniformly from
    ``conditions`` at reset, or given by ``reset(options={"cond": ...})``.

    Args:
        num_envs: batch size B.
        score_model: the pretrained score (see :class:`~diffusion_gym.base_models.ScoreModel`).
        reward: the terminal reward (the proxy the agent optimises).
        gold: the hidden utility reported in ``info["gold_reward"]``, if the task has one.
        n_steps: N, the number of steps of the uniform grid.
        grid: an increasing environment-time grid starting at 0; overrides ``n_steps``.
        integrator: "euler_maruyama", "ddpm" or "exponential" on a VP model; "flow_sde" on a
            rectified-flow one (:func:`diffusion_gym.sde.discretize`).
        kl_coef: the price per nat of KL to the pretrained path measure.
        noise_level: the flow SDE's noise level ``a`` (default 0.7, Flow-GRPO's; every ``a > 0`` has
            the pretrained model's marginals, ``sqrt(2)`` is the time reversal); flow integrators only.
        action_scale: delta = action_scale(t) * action; a float or a function of the time tensor.
        eps: end margin of the uniform grid, ``t_N = T - eps``.
        obs_bound: the (loose) bound of the ``x`` observation box; states are never clipped.
        device: where everything lives.
        dtype: float32 or float64: states, actions, KL, rewards.
        autocast: "bfloat16" or "float16" to evaluate the score model under ``torch.autocast`` (mixed
            precision, the norm for UNets on GPUs); its output is cast back to ``dtype``, so states,
            KL, rewards and every log-probability stay in ``dtype``. None: the model runs in ``dtype``.
        autoreset_mode: what a step after the last one does: NEXT_STEP (Gymnasium's default:
            reset, zero reward), SAME_STEP (the last step returns the next episode's first
            observation, the final one in ``info["final_obs"]``) or DISABLED (raise ResetNeeded).
        sync_checks: check every action for NaN/inf when it arrives (a host sync). Defaults to
            True on CPU, where it costs nothing, and False elsewhere: then non-finite actions are
            recorded on the device and raised at the episode's last step, one sync per episode.
        conditions: for a conditional model, the condition indices episodes draw from (default:
            all of them).
        compile: evaluate the score model through ``torch.compile`` (its elementwise graph fused into
            a few kernels; the first episode pays the compilation, tens of seconds on a CPU).
        render_mode: None or "rgb_array": :meth:`render` returns an (H, W, 3) uint8 picture of the
            batch (:mod:`diffusion_gym.envs.rendering`).
        record_transitions: also return, in ``info``, the pretrained mean ``m_k`` of each step's
            transition (``"pretrained_mean"``) and the score correction applied (``"delta"``), so
            that agents get exact transition densities without evaluating the score again.
    """

    @validated
    def __init__(
        self,
        num_envs: PositiveInt,
        score_model: ScoreModel,
        reward: RewardModel,
        gold: RewardModel | None = None,
        *,
        n_steps: PositiveInt = 100,
        grid: Any = None,
        integrator: Integrator = "euler_maruyama",
        kl_coef: NonNegativeFloat = 1.0,
        noise_level: PositiveFloat | None = None,
        action_scale: ActionScale = 4.0,
        eps: PositiveFloat = 1e-3,
        obs_bound: PositiveFloat = 1e4,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        autocast: torch.dtype | str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        sync_checks: bool | None = None,
        conditions: Any = None,
        record_transitions: bool = False,
        compile: bool = False,
        render_mode: Literal["rgb_array"] | None = None,
    ) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        half = (torch.bfloat16, torch.float16)
        self.autocast = None if autocast is None else resolve_dtype(autocast, half, "autocast")
        self.kl_coef = float(kl_coef)
        self.score_model = _on_device(score_model, self.device, self.dtype)
        self.reward_model = _on_device(reward, self.device, self.dtype)
        self.gold_model = _on_device(gold, self.device, self.dtype) if gold is not None else None
        self.compiled = bool(compile)
        # What the model predicts (its score unless it says otherwise) and the method that predicts it,
        # or its torch.compile'd version: what the env evaluates.
        self.parametrization: Parametrization = getattr(self.score_model, "parametrization", "score")
        native = self.score_model.score if self.parametrization == "score" else self.score_model.predict
        self.score_fn = torch.compile(native) if self.compiled else native
        self.schedule = score_model.schedule
        self.T = float(self.schedule.T)
        self.event_shape = tuple(score_model.event_shape)
        self.integrator = integrator
        self.num_conditions: int | None = getattr(score_model, "num_conditions", None)
        self.conditions = self._allowed_conditions(conditions)

        grid64 = time_grid(self.T, n_steps=n_steps if grid is None else None, grid=grid, eps=eps)
        self.grid = grid64  # float64, on the CPU: the exact grid the coefficients come from
        self.noise_level = noise_level
        self.discretization: Discretization = discretize(
            self.schedule, grid64, integrator, action_scale, noise_level
        ).to(self.device, self.dtype)
        if self.discretization.output == "velocity" and self.parametrization in ("score", "eps"):
            # At pure noise a score or eps prediction holds nothing of E[x0 | x], which the velocity needs.
            raise ValueError(
                f"a flow integrator steps with the velocity, which a {self.parametrization} model cannot give "
                "at pure noise: use a model that predicts the velocity or x0"
            )
        path = self.discretization.s.view(-1, *([1] * len(self.event_shape)))
        self._path = (self.schedule.alpha(path), self.schedule.sigma(path))  # (N, 1, ...) each, for conversions
        self._action_scale = action_scale
        self.record_transitions = bool(record_transitions)
        self.n_steps = self.discretization.n_steps
        disc = self.discretization
        self._t0 = float(grid64[0])
        # Step k's infos t_k, dt_k and its next observation's time t_{k+1} as one column, and the
        # (terminated, truncated) columns: each step returns fresh copies of them, one copy each.
        self._times = [torch.stack([disc.t[k], disc.dt[k], disc.t[k + 1]]).view(3, 1) for k in range(self.n_steps)]
        self._flags = [torch.tensor([[done], [False]], device=self.device) for done in (False, True)]

        self.render_mode = render_mode
        self.autoreset_mode = resolve_autoreset_mode(autoreset_mode)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": ["rgb_array"]}
        self.sync_checks = self.device.type == "cpu" if sync_checks is None else bool(sync_checks)

        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        obs_spaces: dict[str, spaces.Space] = {
            "x": spaces.Box(-obs_bound, obs_bound, self.event_shape, np_dtype),
            "t": spaces.Box(0.0, self.T, (1,), np_dtype),
        }
        if self.num_conditions is not None:
            obs_spaces["cond"] = spaces.Discrete(self.num_conditions)
        self.single_observation_space = spaces.Dict(obs_spaces)
        self.single_action_space = spaces.Box(-1.0, 1.0, self.event_shape, np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        self._generator = torch.Generator(device=self.device)
        self._seeded = False
        self._k = -1  # -1: never reset; n_steps: episode over
        self._x = torch.empty(0)
        self._cond: Tensor | None = None
        self._kl_total = torch.empty(0)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._episode_start = math.nan

    def _allowed_conditions(self, conditions: Any) -> Tensor | None:
        if self.num_conditions is None:
            if conditions is not None:
                raise ValueError("conditions were given but the score model is unconditional")
            return None
        allowed = torch.arange(self.num_conditions) if conditions is None else torch.as_tensor(conditions).flatten()
        if allowed.numel() == 0 or allowed.is_floating_point() or not self._in_range(allowed):
            raise ValueError(f"conditions must be integers in [0, {self.num_conditions}), got {conditions!r}")
        return allowed.to(device=self.device, dtype=torch.int64).clone()

    def _in_range(self, cond: Tensor) -> bool:
        return bool(((cond >= 0) & (cond < self.num_conditions)).all())

    def action_scale_at(self, t: Tensor) -> Tensor:
        """``action_scale(t)`` at any environment times (the discretization holds it on the grid only)."""
        if callable(self._action_scale):
            return torch.as_tensor(self._action_scale(t), dtype=t.dtype, device=t.device).expand(t.shape)
        return torch.full_like(t, float(self._action_scale))

    def rng_state(self) -> Tensor:
        """The state of the env's torch generator (for checkpoints that resume exactly)."""
        return self._generator.get_state()

    def set_rng_state(self, state: Tensor) -> None:
        self._generator.set_state(state)
        self._seeded = True

    # ----------------------------------------------------------------------------------------------
    # The base model on the grid; the kernel does the rest.

    def predict(self, k: int, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The base model's prediction at step k's diffusion time in the form the integrator steps with
        (``discretization.output``: the score on VP, the velocity on a flow), converted exactly from
        what the model predicts (:mod:`diffusion_gym.parametrization`: the one place), in the env's
        dtype (evaluated under autocast when the env has ``autocast``)."""
        s = self.discretization.s[k]
        if self.autocast is None:
            out = self.score_fn(s, x, cond)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast):
                out = self.score_fn(s, x, cond).to(self.dtype)
        if self.parametrization == self.discretization.output:
            return out
        alpha, sigma = self._path[0][k], self._path[1][k]
        return convert(out, x, alpha, sigma, self.parametrization, self.discretization.output)  # type: ignore[arg-type]

    def score(self, k: int, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The base model's score ``grad_x log p_s(x)`` at step k's diffusion time, whatever it predicts."""
        out = self.predict(k, x, cond)
        output = self.discretization.output
        return out if output == "score" else convert(out, x, *(p[k] for p in self._path), output, "score")  # type: ignore[arg-type]

    def pretrained_mean(self, k: int, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``m_k = a_k x + b_k f_pre(s_k, x)``: the mean of the pretrained transition from ``x`` (``f``: the
        model's prediction in the integrator's form, :meth:`predict`)."""
        return kernel.step_mean(self.discretization, k, x, self.predict(k, x, cond))

    def transition_mean(self, k: int, x: Tensor, delta: Tensor | None, cond: Tensor | None = None) -> Tensor:
        """``a_k x + b_k f_pre(s_k, x) + c_k delta``: the controlled transition's mean."""
        return kernel.step_mean(self.discretization, k, x, self.predict(k, x, cond), delta)

    # ----------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Start B new episodes from ``Y_0 ~ N(0, I)``.

        Args:
            seed: seeds the env's one torch generator (all rows draw from it). Without a seed, the
                first reset draws fresh entropy and later ones continue the stream.
            options: ``{"cond": c}`` fixes the episode's conditions (an int for all rows, or one per
                row) for a conditional model; ``{"y0": x}`` the initial states, shape
                ``(num_envs, *event_shape)`` (e.g. one noise shared within a group of rows), in place
                of the draw ``Y_0 ~ N(0, I)`` (nothing is drawn for them).
        """
        options = options or {}
        unknown = set(options) - {"cond", "y0"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected 'cond' or 'y0'")
        y0 = None if options.get("y0") is None else self._initial_states(options["y0"])
        if not self.sync_checks and self._k >= 0 and bool(self._nonfinite):
            self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
            raise ValueError("actions contained NaN or inf during the episode this reset abandons")
        if seed is not None:
            # One seed for all rows (one torch.Generator), in [0, 2**64): torch would wrap -1 around.
            self._generator.manual_seed(coerce(seed, Seed, "seed"))
        elif not self._seeded:
            self._generator.manual_seed(int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1))
        self._seeded = True
        self._cond = self._episode_conditions(options.get("cond"))
        self._x = self.draw_initial_states(self._generator) if y0 is None else y0
        self._k = 0
        self._episode_start = time.perf_counter()
        self._kl_total = torch.zeros(self.num_envs, device=self.device, dtype=self.dtype)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        return self._observation(torch.full((self.num_envs, 1), self._t0, device=self.device, dtype=self.dtype)), {}

    def draw_conditions(self, generator: torch.Generator) -> Tensor | None:
        """An episode's conditions as reset draws them, uniform over ``conditions`` (None if unconditional):
        also for code that runs the chain off the env from its own generator (the differentiable rollout)."""
        if self.conditions is None:
            return None
        pick = torch.randint(len(self.conditions), (self.num_envs,), generator=generator, device=self.device)
        return self.conditions[pick]

    def draw_initial_states(self, generator: torch.Generator) -> Tensor:
        """``Y_0 ~ N(0, I)`` for every row, as reset draws it (after the conditions)."""
        shape = (self.num_envs, *self.event_shape)
        return torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)

    def _initial_states(self, y0: Any) -> Tensor:
        """``options["y0"]`` as a fresh finite tensor of the batch's shape on the env's device and dtype."""
        x = torch.as_tensor(y0)
        expected = (self.num_envs, *self.event_shape)
        if tuple(x.shape) != expected or not x.is_floating_point():
            got = f"{tuple(x.shape)}, {x.dtype}"
            raise ValueError(f"options['y0'] must be a float tensor of shape {expected}, got {got}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("options['y0'] must be finite")
        return x.to(device=self.device, dtype=self.dtype).clone()

    def _episode_conditions(self, cond: Any) -> Tensor | None:
        if self.num_conditions is None or self.conditions is None:
            if cond is not None:
                raise ValueError("options['cond'] was given but the score model is unconditional")
            return None
        if cond is None:
            return self.draw_conditions(self._generator)
        c = torch.as_tensor(cond)
        if c.is_floating_point() or c.dtype == torch.bool or c.ndim > 1 or c.numel() not in (1, self.num_envs):
            raise ValueError(f"options['cond'] must be one int or {self.num_envs} ints, got {cond!r}")
        if not self._in_range(c):
            raise ValueError(f"conditions must lie in [0, {self.num_conditions}), got {cond!r}")
        return c.to(device=self.device, dtype=torch.int64).expand(self.num_envs).clone()

    def step(self, actions: Any) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, dict[str, Any]]:
        """Advance all B samples by one grid interval.

        Returns ``(obs, reward, terminated, truncated, info)``; ``info`` holds ``t`` (the start of
        the interval), ``dt``, ``kl`` and ``clipped`` (action components clipped to [-1, 1]), and on
        the last step ``terminal_reward``, ``gold_reward``, ``kl_total``, ``objective`` (the
        episode's return) and ``episode`` / ``_episode`` (Gymnasium's per-episode statistics).

        Raises:
            ValueError: wrong shape, a non-numeric dtype, NaN or inf in ``actions``.
            ResetNeeded: before the first reset, or after the last step with autoreset DISABLED.
        """
        if torch.is_grad_enabled():  # callers that already run without gradients skip the context's cost
            with torch.no_grad():
                return self.step(actions)
        if self._k < 0:
            raise ResetNeeded("call reset() before step()")
        if self._k >= self.n_steps:
            if self.autoreset_mode is AutoresetMode.NEXT_STEP:
                obs, _ = self.reset()
                zeros = torch.zeros(self.num_envs, device=self.device, dtype=self.dtype)
                no = torch.zeros(self.num_envs, device=self.device, dtype=torch.bool)
                return obs, zeros, no, no.clone(), {}
            raise ResetNeeded(f"the episode ended after its {self.n_steps} steps; call reset() before step()")

        action, clipped = self._clip(self._check_actions(actions))

        k, disc = self._k, self.discretization
        delta = kernel.step_delta(disc, k, action)
        noise = torch.randn(self._x.shape, generator=self._generator, device=self.device, dtype=self.dtype)
        score = self.predict(k, self._x, self._cond)
        if self.record_transitions:
            pretrained = kernel.step_mean(disc, k, self._x, score)
            self._x = kernel.step_sample(disc, k, kernel.step_shift(disc, k, pretrained, delta), noise)
        else:
            self._x = kernel.step_sample(disc, k, kernel.step_mean(disc, k, self._x, score, delta), noise)
        kl = kernel.step_kl(disc, k, delta)
        self._kl_total.add_(kl)  # a fresh tensor each episode, handed out only at its end
        reward = kl * -self.kl_coef
        self._k = k + 1
        last = self._k == self.n_steps

        # Fresh tensors (a returned tensor never aliases the env's state): rows of one copy each.
        t, dt, t_next = self._times[k].expand(3, self.num_envs).clone().unbind(0)
        terminated, truncated = self._flags[last].expand(2, self.num_envs).clone().unbind(0)
        info: dict[str, Any] = {"t": t, "dt": dt, "kl": kl, "clipped": clipped}
        if self.record_transitions:
            info["pretrained_mean"], info["delta"] = pretrained, delta
        if last:
            if not self.sync_checks and bool(self._nonfinite):
                self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # reported once
                raise ValueError("actions contained NaN or inf during this episode (checked at its end)")
            terminal = self.reward_model(self._x, self._cond)
            reward = reward + terminal
            info["terminal_reward"] = terminal
            if self.gold_model is not None:
                info["gold_reward"] = self.gold_model(self._x, self._cond)
            info["kl_total"] = self._kl_total
            info["objective"] = terminal - self.kl_coef * self._kl_total
            info["episode"], info["_episode"] = self._episode_statistics(info["objective"])
        obs = self._observation(t_next.unsqueeze(1))
        if last and self.autoreset_mode is AutoresetMode.SAME_STEP:
            # All rows finish together: final_obs / final_info hold the whole batch, the masks are all True.
            info = {**info, "final_obs": obs, "final_info": dict(info), "_final_obs": terminated.clone()}
            info["_final_info"] = terminated.clone()
            obs, _ = self.reset()
        return obs, reward, terminated, truncated, info

    def _episode_statistics(self, objective: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Each row's return, length and seconds as Gymnasium's ``RecordEpisodeStatistics`` writes them
        (``info["episode"]`` with ``r``, ``l``, ``t`` and the mask ``info["_episode"]``), so that outside
        libraries log the objective; every row ends here."""
        seconds = time.perf_counter() - self._episode_start  # the host's clock: no device sync
        full = torch.full((self.num_envs,), 1, device=self.device)
        episode = {
            "r": objective.clone(),
            "l": full.mul(self.n_steps),
            "t": full.to(torch.float64).mul_(seconds),
        }
        return episode, full.bool()

    # ----------------------------------------------------------------------------------------------
    # Gymnasium's vector-env attribute access. The rows of the batch are one torch batch, not separate
    # environments: they share every attribute, so a value "per environment" is the same for each.

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """The env's method ``name`` called once with ``args`` and ``kwargs`` (or its attribute ``name``),
        as Gymnasium's vector envs return it: one entry per environment (here all the same object)."""
        value = self._attribute(name)
        result = value(*args, **kwargs) if callable(value) else value
        return (result,) * self.num_envs

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name``, one entry per environment (the rows share it)."""
        return (self._attribute(name),) * self.num_envs

    def set_attr(self, name: str, values: Any) -> None:
        """Set the attribute ``name``: one value, or one per environment, all equal (the rows share it).

        Raises:
            AttributeError: the env has no attribute ``name``.
            ValueError: a list or tuple of the wrong length or of different values.
        """
        self._attribute(name)
        if isinstance(values, (list, tuple)):
            if len(values) != self.num_envs:
                raise ValueError(f"set_attr({name!r}): expected one value or {self.num_envs}, got {len(values)}")
            if any(v is not values[0] and v != values[0] for v in values[1:]):
                raise ValueError(f"set_attr({name!r}): the rows of one batched env share one value; got different ones")
            values = values[0]
        setattr(self, name, values)

    def _attribute(self, name: str) -> Any:
        if name.startswith("_") or not hasattr(self, name):
            raise AttributeError(f"{type(self).__name__} has no public attribute {name!r}")
        return getattr(self, name)

    def render(self) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``, the current batch as an (H, W, 3) uint8 image: 2-D states as a
        scatter over the base model's density, images as a grid; None without a render mode."""
        if self.render_mode is None:
            return None
        if self._k < 0:
            raise ResetNeeded("call reset() before render()")
        from diffusion_gym.envs.rendering import render_batch

        return render_batch(self)

    def _observation(self, t: Tensor) -> dict[str, Tensor]:
        obs = {"x": self._x.clone(), "t": t}
        if self._cond is not None:
            obs["cond"] = self._cond.clone()
        return obs

    def _check_actions(self, actions: Any) -> Tensor:
        """A real-valued tensor of the expected shape, in its own floating dtype (so that a large finite
        float64 action is clipped, not turned into inf by a cast)."""
        expected = (self.num_envs, *self.event_shape)
        if isinstance(actions, Tensor):
            a = actions
            if a.dtype == torch.bool or a.is_complex():
                raise ValueError(f"actions must be real numbers castable to {self.dtype}, got dtype {a.dtype}")
        else:
            arr = np.asarray(actions)
            if arr.dtype.kind not in "iuf":
                raise ValueError(f"actions must be real numbers castable to {self.dtype}, got dtype {arr.dtype}")
            # A native-byte-order, C-contiguous, writable copy: what torch.from_numpy accepts.
            a = torch.from_numpy(np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C"))
        if tuple(a.shape) != expected:
            raise ValueError(f"expected actions of shape {expected}, got {tuple(a.shape)}")
        return a if a.is_floating_point() else a.to(self.dtype)

    def _clip(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Check finiteness and clip to [-1, 1] in the actions' own dtype, then move them to the env's
        device and dtype; returns them with per-row counts of clipped components."""
        if self.sync_checks:
            low, high = torch.aminmax(raw)  # one pass; NaN propagates, inf is inf
            low, high = float(low), float(high)
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"actions must be finite; got {int((~torch.isfinite(raw)).sum())} NaN/inf entries")
            if -1.0 <= low and high <= 1.0:  # the common case: nothing to clip
                zeros = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
                return raw.to(device=self.device, dtype=self.dtype), zeros
        else:
            peak = raw.abs().amax()  # NaN and inf propagate
            self._nonfinite = self._nonfinite | ~torch.isfinite(peak).to(self.device)
        clipped = (raw.abs() > 1).flatten(1).sum(1)  # NaN is not counted: it is reported as non-finite
        action = raw.clamp(-1.0, 1.0)
        return action.to(device=self.device, dtype=self.dtype), clipped.to(self.device)

"""The VP forward SDE, its reverse-time discretisations and the exact per-step KL price.

Diffusion time ``s`` runs from data (s = 0) to noise (s = T); environment time ``t = T - s`` runs
the other way. Every integrator here has a Gaussian transition whose mean is affine in the action
(docs/design.md, section 1):

    Y_{k+1} | Y_k, delta_k ~ N(a_k Y_k + b_k (s_pre(s_k, Y_k) + delta_k), v_k I),

so ``m_k = a_k Y_k + b_k s_pre``, ``c_k = b_k``, and the KL between the controlled and the
pretrained transition is ``c_k^2 ||delta_k||^2 / (2 v_k)``. All coefficients depend on the time
grid only; they are computed once, in float64, and then moved to the env's device and dtype, so
the step loop holds no linear algebra and no host synchronisation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

Integrator = Literal["euler_maruyama", "ddpm", "exponential", "flow_sde", "flow_exponential"]
ActionScale = float | Callable[[Tensor], Tensor]
"""``delta = action_scale(t) * action``: a constant, or a function of the environment-time tensor."""
VP_INTEGRATORS: tuple[str, ...] = ("euler_maruyama", "ddpm", "exponential")
FLOW_INTEGRATORS: tuple[str, ...] = ("flow_sde", "flow_exponential")
INTEGRATORS: tuple[str, ...] = VP_INTEGRATORS + FLOW_INTEGRATORS
DEFAULT_NOISE_LEVEL = 0.7
"""Flow-GRPO's noise level ``a`` of the marginal-preserving flow SDE (arXiv 2505.05470)."""


class VPSchedule:
    """A variance-preserving noise schedule: ``dX = -beta(s)/2 X ds + sqrt(beta(s)) dW`` on [0, T].

    Subclasses give ``beta`` and its integral in closed form; ``alpha_s = exp(-1/2 int_0^s beta)``
    and ``sigma_s^2 = 1 - alpha_s^2`` follow, so ``X_s | X_0 ~ N(alpha_s X_0, sigma_s^2 I)``.
    """

    T: float = 1.0

    def beta(self, s: Tensor) -> Tensor:
        """The noise rate beta(s)."""
        raise NotImplementedError

    def integral_beta(self, s: Tensor) -> Tensor:
        """``int_0^s beta(u) du``."""
        raise NotImplementedError

    def log_alpha(self, s: Tensor) -> Tensor:
        """``log alpha_s = -1/2 int_0^s beta``."""
        return -0.5 * self.integral_beta(s)

    def alpha(self, s: Tensor) -> Tensor:
        """Signal scale ``alpha_s``."""
        return torch.exp(self.log_alpha(s))

    def sigma2(self, s: Tensor) -> Tensor:
        """Noise variance ``sigma_s^2 = 1 - alpha_s^2`` (via expm1: accurate as s -> 0)."""
        return -torch.expm1(2.0 * self.log_alpha(s))

    def sigma(self, s: Tensor) -> Tensor:
        """Noise scale ``sigma_s``."""
        return torch.sqrt(self.sigma2(s))

    def config(self) -> dict[str, float | str]:
        """A JSON-able description, enough to rebuild the schedule with :func:`schedule_from_config`."""
        raise NotImplementedError


class LinearVPSchedule(VPSchedule):
    """``beta(s) = beta_min + (beta_max - beta_min) s / T`` (Song et al. 2021; DDPM's linear betas).

    Args:
        beta_min: beta at s = 0.
        beta_max: beta at s = T.
        T: the horizon.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        if not (0 < beta_min <= beta_max) or T <= 0:
            raise ValueError(f"need 0 < beta_min <= beta_max and T > 0, got {beta_min}, {beta_max}, {T}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    def beta(self, s: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * s / self.T

    def integral_beta(self, s: Tensor) -> Tensor:
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2 / self.T

    def config(self) -> dict[str, float | str]:
        return {"kind": "linear", "beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}


class CosineVPSchedule(VPSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021): ``alpha_s^2 = cos^2(phi(s)) / cos^2(phi(0))``.

    ``phi`` is linear in s, from ``phi(0) = pi/2 * offset / (1 + offset)`` to the angle at which
    ``alpha_T`` equals ``alpha_end``. The original schedule reaches alpha = 0 (beta = infinity) at
    s = T; ending at a small positive alpha keeps beta finite, as the discrete schedule's beta
    clipping does. Then ``beta(s) = 2 phi'(s) tan(phi(s))``, which is stiff near s = T (about 480
    with the defaults): Euler-Maruyama needs ``beta dt < 1`` there; the "ddpm" integrator does not.

    Args:
        offset: the small offset ``s`` of Nichol & Dhariwal (0.008).
        alpha_end: alpha at s = T; the default matches the linear schedule's alpha_T.
        T: the horizon.
    """

    def __init__(self, offset: float = 0.008, alpha_end: float = 0.0065, T: float = 1.0) -> None:
        if offset < 0 or not (0 < alpha_end < 1) or T <= 0:
            raise ValueError(f"need offset >= 0, 0 < alpha_end < 1, T > 0; got {offset}, {alpha_end}, {T}")
        self.offset, self.alpha_end, self.T = float(offset), float(alpha_end), float(T)
        self._phi0 = 0.5 * math.pi * offset / (1.0 + offset)
        self._phi1 = math.acos(alpha_end * math.cos(self._phi0))
        self._rate = (self._phi1 - self._phi0) / self.T

    def _phi(self, s: Tensor) -> Tensor:
        return self._phi0 + self._rate * s

    def beta(self, s: Tensor) -> Tensor:
        return 2.0 * self._rate * torch.tan(self._phi(s))

    def integral_beta(self, s: Tensor) -> Tensor:
        return -2.0 * (torch.log(torch.cos(self._phi(s))) - math.log(math.cos(self._phi0)))

    def config(self) -> dict[str, float | str]:
        return {"kind": "cosine", "offset": self.offset, "alpha_end": self.alpha_end, "T": self.T}


class DiscreteVPSchedule(VPSchedule):
    """A discrete DDPM-family schedule (its ``alphas_cumprod``) placed on continuous time.

    Discrete timestep ``n`` in {0, ..., M-1} (noise ``abar_n``) sits at diffusion time
    ``s_n = (n + 1) T / M``, and ``s = 0`` is clean data (``abar = 1``). Between these knots
    ``log abar`` is linear in s: ``int_0^s beta`` is piecewise linear and beta piecewise constant,
    ``beta = M (log abar_{n-1} - log abar_n) / T`` on ``(s_{n-1}, s_n]``. A model is evaluated
    between its timesteps at the fractional timestep :meth:`timestep` ``= s M / T - 1`` (diffusers'
    sinusoidal time embeddings accept real values). At the knots this reproduces the discrete
    chain exactly: a DDPM step between two knots is the scheduler's own step.

    Args:
        alphas_cumprod: the scheduler's cumulative products, decreasing, in (0, 1].
        T: the horizon.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor, T: float = 1.0) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not ((abar > 0) & (abar <= 1)).all() or not (abar[1:] < abar[:-1]).all():
            raise ValueError("alphas_cumprod must be strictly decreasing values in (0, 1]")
        self.T = float(T)
        self.alphas_cumprod = abar
        self.n_timesteps = abar.numel()
        self._knots = torch.linspace(0.0, self.T, self.n_timesteps + 1, dtype=torch.float64)
        self._integral = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log(abar)])
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _tables(self, s: Tensor) -> tuple[Tensor, Tensor]:
        key = (s.device, s.dtype)
        if key not in self._cache:  # once per device and dtype: no transfer in the step loop
            self._cache[key] = (self._knots.to(s.device, s.dtype), self._integral.to(s.device, s.dtype))
        return self._cache[key]

    def _segment(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        knots, integral = self._tables(s)
        hi = torch.searchsorted(knots, s.clamp(0.0, self.T).contiguous()).clamp(1, self.n_timesteps)
        return knots[hi - 1], integral[hi - 1], (integral[hi] - integral[hi - 1]) / (knots[hi] - knots[hi - 1])

    def integral_beta(self, s: Tensor) -> Tensor:
        s = torch.as_tensor(s, dtype=torch.float64) if not isinstance(s, Tensor) else s
        left, value, slope = self._segment(s)
        return value + slope * (s - left)

    def beta(self, s: Tensor) -> Tensor:
        s = torch.as_tensor(s, dtype=torch.float64) if not isinstance(s, Tensor) else s
        return self._segment(s)[2]

    def timestep(self, s: Tensor) -> Tensor:
        """The (fractional) discrete timestep of diffusion time s: ``s M / T - 1``."""
        return s * (self.n_timesteps / self.T) - 1.0

    def config(self) -> dict[str, float | str]:
        return {"kind": "discrete", "T": self.T, "alphas_cumprod": self.alphas_cumprod.tolist()}  # type: ignore[dict-item]


class RectifiedFlowSchedule:
    """The rectified-flow path ``x = (1 - sigma) x0 + sigma eps`` of diffusers'
    ``FlowMatchEulerDiscreteScheduler``, with its time shift: at diffusion time ``s`` in [0, 1]
    (data at 0, noise at 1) ``sigma(s) = shift s / (1 + (shift - 1) s)`` (the dynamic,
    resolution-dependent shift is ``shift = exp(mu)``). ``alpha_s = 1 - sigma_s``: the path is not
    variance preserving, and it has no forward SDE of its own; its samplers are the flow integrators
    of :func:`discretize`.

    Args:
        shift: the time shift (1: none; SD3 uses 3).
    """

    T: float = 1.0

    def __init__(self, shift: float = 1.0) -> None:
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
        self.shift = float(shift)

    def sigma(self, s: Tensor) -> Tensor:
        """The noise scale ``sigma_s`` (1 at s = 1: pure noise)."""
        s = torch.as_tensor(s)
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    def time_at(self, sigma: Tensor) -> Tensor:
        """The diffusion time ``s`` at which the path's noise scale is ``sigma`` (the inverse of
        :meth:`sigma`, ``sigma / (shift - (shift - 1) sigma)``): where a scheduler's sigmas sit."""
        sigma = torch.as_tensor(sigma)
        return sigma / (self.shift - (self.shift - 1.0) * sigma)

    def alpha(self, s: Tensor) -> Tensor:
        """The signal scale ``1 - sigma_s``."""
        return 1.0 - self.sigma(s)

    def sigma2(self, s: Tensor) -> Tensor:
        return self.sigma(s) ** 2

    def log_alpha(self, s: Tensor) -> Tensor:
        return torch.log(self.alpha(s))

    def beta(self, s: Tensor) -> Tensor:
        raise TypeError("a rectified-flow path has no VP noise rate beta: use a flow integrator ('flow_sde')")

    def config(self) -> dict[str, float | str]:
        return {"kind": "rectified_flow", "shift": self.shift}


Schedule = VPSchedule | RectifiedFlowSchedule
"""A noise path ``(alpha_s, sigma_s)`` with its horizon ``T``."""


def schedule_from_config(config: dict) -> Schedule:
    """Rebuild a schedule from its ``config()``."""
    kind = str(config.get("kind"))
    if kind == "discrete":
        return DiscreteVPSchedule(config["alphas_cumprod"], T=float(config.get("T", 1.0)))
    kwargs = {k: float(v) for k, v in config.items() if k != "kind"}
    kinds: dict[str, type] = {
        "linear": LinearVPSchedule,
        "cosine": CosineVPSchedule,
        "rectified_flow": RectifiedFlowSchedule,
    }
    if kind not in kinds:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {sorted(kinds) + ['discrete']}")
    return kinds[kind](**kwargs)


def time_grid(
    T: float,
    n_steps: int | None = None,
    grid: Sequence[float] | Tensor | None = None,
    eps: float = 1e-3,
) -> Tensor:
    """The environment-time grid ``0 = t_0 < ... < t_N < T`` in float64.

    Args:
        T: the horizon.
        n_steps: N, for the uniform grid on [0, T - eps]. Ignored when ``grid`` is given.
        grid: any strictly increasing grid starting at 0 and ending before T (the score is not
            defined at diffusion time 0, so the last point must leave a positive margin).
        eps: the end margin of the uniform grid, ``t_N = T - eps``.
    """
    if grid is not None:
        g = torch.as_tensor(grid, dtype=torch.float64)
        if g.ndim != 1:
            raise ValueError(f"grid must be one-dimensional (t_0, ..., t_N), got shape {tuple(g.shape)}")
        if g.numel() < 2:
            raise ValueError(f"grid needs at least 2 points, got {g.numel()}")
        if not torch.isfinite(g).all():
            raise ValueError("grid contains NaN or inf")
        if g[0] != 0.0:
            raise ValueError(f"grid must start at t=0 (pure noise), got t_0={g[0].item()}")
        if not (g[1:] > g[:-1]).all():
            raise ValueError("grid must be strictly increasing")
        if g[-1] >= T:
            raise ValueError(f"grid must end before T={T} (diffusion time > 0), got t_N={g[-1].item()}")
        return g
    if n_steps is None or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not (0 < eps < T):
        raise ValueError(f"eps must lie in (0, T), got {eps}")
    return torch.linspace(0.0, T - eps, int(n_steps) + 1, dtype=torch.float64)


class StepConstants(NamedTuple):
    """Step k's coefficients as Python floats (from the float64 computation): what the env's step
    multiplies by, with no tensor read."""

    t: float
    dt: float
    drift_scale: float
    score_scale: float
    noise_std: float
    kl_weight: float
    action_scale: float
    control_scale: float


@dataclass(frozen=True)
class Discretization:
    """Per-step coefficients of a reverse-time integrator on a fixed grid (length N unless noted),
    with the action scale on the grid: everything :mod:`diffusion_gym.kernel` steps with.

    Attributes:
        t: environment times ``t_0..t_N`` (length N + 1).
        s: diffusion time at the start of each step, ``s_k = T - t_k``.
        dt: step lengths ``t_{k+1} - t_k``.
        drift_scale: ``a_k``, the coefficient of ``Y_k`` in the transition mean.
        score_scale: ``b_k``, the coefficient of the base model's prediction (its score on the VP
            integrators; its velocity on the flow ones: :attr:`output`).
        noise_std: ``sqrt(v_k)``.
        kl_weight: ``c_k^2 / (2 v_k)``; the step's KL is ``kl_weight_k * ||delta_k||^2``.
        action_scale: ``delta_k = action_scale_k * action_k``.
        constants: the same per step as Python floats from float64, whatever the tensors' dtype.
        control_scale: ``c_k``, the coefficient of the score correction ``delta``. The VP integrators
            add delta to the score, so ``c_k = b_k``. An SDE whose drift holds the
            score with another weight than its diffusion's (a flow's velocity field) has ``c_k != b_k``.
    """

    t: Tensor
    s: Tensor
    dt: Tensor
    drift_scale: Tensor
    score_scale: Tensor
    noise_std: Tensor
    kl_weight: Tensor
    action_scale: Tensor
    constants: tuple[StepConstants, ...]
    control_scale: Tensor
    output: str
    """The form of the base model's prediction ``b_k`` multiplies (:mod:`diffusion_gym.parametrization`):
    the score for the VP integrators, the velocity for the flow ones."""
    correction_weight: float
    """The drift's weight of the score correction per unit of diffusion variance, in continuous time:
    the correction moves the drift by ``correction_weight * g^2 * delta`` (1 on the VP reverse SDE,
    whose drift holds ``g^2`` times the score; 1/2 on the flow SDE, whose drift holds ``g^2 / 2``
    times it). Doob's optimal correction is then ``grad log h / correction_weight``."""
    time_reversal: bool
    """Whether the pretrained SDE is the time reversal of the path's Gaussian forward process (every VP
    integrator; the flow SDE at noise level ``sqrt(2)``, its memoryless schedule): then ``Y_T | Y_t``
    is the data posterior and Doob's optimal control has the closed form of
    :mod:`diffusion_gym.optimal_control`. At another noise level the marginals are the same but the
    bridges are not."""

    @property
    def n_steps(self) -> int:
        return self.dt.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Discretization:
        """The tensors on ``device`` in ``dtype``; the float constants stay those of float64."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved |= {k: v.to(device=device, dtype=dtype) for k, v in moved.items() if isinstance(v, Tensor)}
        return Discretization(**moved)

    def rounded(self) -> Discretization:
        """The same, with the float constants read back from the tensors: the coefficients as this
        dtype rounds them (what a float32 env's operations effectively multiply by)."""
        columns = (self.t[:-1], self.dt, self.drift_scale, self.score_scale, self.noise_std, self.kl_weight)
        return replace(self, constants=_constants(*columns, self.action_scale, self.control_scale))


def _constants(*columns: Tensor) -> tuple[StepConstants, ...]:
    """Per-step :class:`StepConstants` from the columns t, dt, a, b, sqrt(v), w, action scale, c."""
    return tuple(StepConstants(*row) for row in zip(*(c.tolist() for c in columns), strict=True))


def action_scales(action_scale: ActionScale, t: Tensor) -> Tensor:
    """``action_scale`` at the environment times ``t`` (float64); raises unless positive and finite."""
    if callable(action_scale):
        scale = torch.as_tensor(action_scale(t.clone()), dtype=torch.float64).expand(t.shape).clone()
    else:
        scale = torch.full_like(t, float(action_scale), dtype=torch.float64)
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("action_scale must be positive and finite at every grid time")
    return scale


def discretize(
    schedule: Schedule,
    grid: Tensor,
    integrator: Integrator = "euler_maruyama",
    action_scale: ActionScale = 1.0,
    noise_level: float | None = None,
) -> Discretization:
    """Per-step Gaussian transition coefficients of the reverse SDE on ``grid`` (float64).

    Euler-Maruyama evaluates beta at the step's start: ``a = 1 + beta dt / 2``, ``c = v = beta dt``;
    it warns when ``beta dt > 1`` on some step (N < 20 on the default schedule).
    "ddpm" is the ancestral sampler of Ho et al. (2020), i.e. the exact Gaussian posterior
    ``q(x_{s'} | x_s, x_0)`` with ``x_0`` replaced by its Tweedie estimate
    ``(x_s + sigma_s^2 score) / alpha_s``. With ``a = alpha_s / alpha_{s'}`` and
    ``sigma_{s|s'}^2 = 1 - a^2`` this gives mean ``(x_s + sigma_{s|s'}^2 score) / a`` and variance
    ``sigma_{s|s'}^2 sigma_{s'}^2 / sigma_s^2`` (DDPM's "fixed_small" variance); both integrators
    agree to first order in dt. Near the data end that variance is much smaller than ``beta dt``
    (the factor ``sigma_{s'}^2 / sigma_s^2``), so under "ddpm" a correction there costs far more
    KL on a coarse grid: its path KL reaches the Girsanov integral only once ``dt << eps``.

    On a rectified-flow path (:class:`RectifiedFlowSchedule`) the integrators are "flow_sde" and
    "flow_exponential" (see :func:`_flow_sde`), their transitions written in the velocity.

    Args:
        schedule: the base model's path (VP schedule or rectified flow).
        grid: environment times from :func:`time_grid`.
        integrator: "euler_maruyama", "ddpm" or "exponential" (VP); "flow_sde" or "flow_exponential"
            (rectified flow).
        action_scale: ``delta = action_scale(t) * action`` (a float, or a function of the time tensor).
        noise_level: the flow SDE's ``a`` (default :data:`DEFAULT_NOISE_LEVEL`); flow integrators only.
    """
    g = grid.to(torch.float64)
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; expected one of {INTEGRATORS}")
    flow = isinstance(schedule, RectifiedFlowSchedule)
    allowed = FLOW_INTEGRATORS if flow else VP_INTEGRATORS
    if integrator not in allowed:
        path = "a rectified-flow" if flow else "a VP"
        raise ValueError(f"integrator {integrator!r} does not step {path} path; expected one of {allowed}")
    if flow:
        a = DEFAULT_NOISE_LEVEL if noise_level is None else noise_level
        return _flow_sde(schedule, g, action_scale, a, exact=integrator == "flow_exponential")
    if noise_level is not None:
        raise ValueError("noise_level is the flow SDE's; a VP integrator's noise is fixed by its schedule")
    s = schedule.T - g[:-1]
    s_next = schedule.T - g[1:]
    dt = g[1:] - g[:-1]
    if integrator == "euler_maruyama":
        beta = schedule.beta(s)
        worst = int(torch.argmax(beta * dt))
        if beta[worst] * dt[worst] > 1.0:
            warnings.warn(
                f"Euler-Maruyama step with beta*dt = {(beta[worst] * dt[worst]).item():.2f} > 1 at t = "
                f"{g[worst].item():.4g}: the discretisation is coarse there; use more steps, a grid refined "
                "near t = 0, or integrator='ddpm'",
                UserWarning,
                stacklevel=2,
            )
        drift_scale = 1.0 + 0.5 * beta * dt
        score_scale = beta * dt
        var = beta * dt
    elif integrator == "ddpm":
        log_a = schedule.log_alpha(s) - schedule.log_alpha(s_next)
        var_step = -torch.expm1(2.0 * log_a)  # sigma_{s|s'}^2 = 1 - a^2
        inv_a = torch.exp(-log_a)
        drift_scale = inv_a
        score_scale = var_step * inv_a
        var = var_step * schedule.sigma2(s_next) / schedule.sigma2(s)
    elif integrator == "exponential":
        # Exact for the linear drift with the score (and the control) frozen at the step's start:
        # Y' = Y / a + 2 (1/a - 1) (score + delta) + sqrt(1/a^2 - 1) xi.
        log_a = schedule.log_alpha(s) - schedule.log_alpha(s_next)
        drift_scale = torch.exp(-log_a)
        score_scale = 2.0 * torch.expm1(-log_a)
        var = torch.expm1(-2.0 * log_a)
    return _gaussian_steps(g, schedule.T, drift_scale, score_scale, score_scale, var, action_scale, "score", 1.0, True)


def _gaussian_steps(
    g: Tensor,
    T: float,
    drift_scale: Tensor,
    prediction_scale: Tensor,
    control_scale: Tensor,
    var: Tensor,
    action_scale: ActionScale,
    output: str,
    correction_weight: float,
    time_reversal: bool,
) -> Discretization:
    """The :class:`Discretization` of Gaussian steps ``N(a y + b f + c delta, v I)`` on the grid ``g``:
    the noise s.d., the KL weight ``c^2 / (2 v)``, the action scale and the float constants derived."""
    noise_std, kl_weight, scale = torch.sqrt(var), control_scale**2 / (2.0 * var), action_scales(action_scale, g[:-1])
    dt = g[1:] - g[:-1]
    constants = _constants(g[:-1], dt, drift_scale, prediction_scale, noise_std, kl_weight, scale, control_scale)
    return Discretization(
        t=g,
        s=T - g[:-1],
        dt=dt,
        drift_scale=drift_scale,
        score_scale=prediction_scale,
        noise_std=noise_std,
        kl_weight=kl_weight,
        action_scale=scale,
        constants=constants,
        control_scale=control_scale,
        output=output,
        correction_weight=correction_weight,
        time_reversal=time_reversal,
    )


def _flow_sde(
    schedule: RectifiedFlowSchedule, g: Tensor, action_scale: ActionScale, a: float, exact: bool = False
) -> Discretization:
    """The marginal-preserving reverse SDE of a rectified flow (Flow-GRPO, arXiv 2505.05470, eq. 8;
    docs/design.md, section 2), with sigma decreasing by ``h_k = sigma_k - sigma_{k+1}``:

        dx = [v + (g^2 / (2 sigma)) (x + (1 - sigma) v) + (g^2 / 2) delta] dsigma + g dW,
        g = a sqrt(sigma / (1 - sigma)).

    "flow_sde" is its Euler-Maruyama step, ``a_k = 1 - g^2 h / (2 sigma)``, ``b_k = -(1 + g^2 (1 - sigma) /
    (2 sigma)) h`` on the velocity, ``c_k = g^2 h / 2`` on the score correction and ``v_k = g^2 h``: the
    step's KL is ``g^2 h ||delta||^2 / 8``, whose sum converges to Girsanov's integral (the ``h``
    Flow-GRPO's code drops). ``g`` diverges at sigma = 1, where the grid starts: on a step from sigma = 1
    the denominator is ``1 - sigma_{k+1}``, as in Flow-GRPO's ``sd3_sde_with_logprob`` (``sigma_max =
    sigmas[1]``), so the field's sampler is reproduced step for step. ``g^2`` is not integrable at
    sigma = 1, so the first steps have variances of order ``a^2`` (``a^2``, ``a^2 (1 - h)``, about
    ``a^2 / 2``, ...) whatever N: the Euler chain is not uniformly of weak order 1. Its terminal error
    halves with N at ``a = 0.3`` and falls faster at ``sqrt 2`` (strong contraction forgets the first
    steps), but at ``a = 0.7`` it stalls near 2e-3 in the covariance of a Gaussian (tests/test_initial_law.py).

    "flow_exponential" takes the exact step everywhere: with the model's ``x0`` prediction and the
    correction frozen at the step's start the SDE is linear, and its solution is the coefficient-preserving
    step ``x' = alpha' x0 + Phi sigma eps + sqrt(sigma'^2 - (Phi sigma)^2) xi`` (``eps = x + alpha v``, the
    form of Flow-CPS, arXiv 2509.05952, whose noise ``sigma' sin(a pi / 2)`` is another choice) with
    ``Phi sigma = sigma' (sigma' (1 - sigma) / (sigma (1 - sigma')))^(a^2 / 2)``; the correction's coefficient
    is ``c = int_{sigma'}^{sigma} Phi(sigma' <- u) g(u)^2 / 2 du`` by Gauss-Legendre quadrature. It is
    finite at sigma = 1, where the step forgets its start (``Phi = 0``: ``Y_1 ~ N(h E[x0 | Y_0], sigma_1^2)``),
    as the SDE does at every ``a > 0``, and the chain is of weak order 1 at every ``a``.
    """
    if not (math.isfinite(a) and a > 0):
        raise ValueError(
            f"noise_level must be a finite number > 0, got {a!r}: at 0 the flow SDE is its ODE, whose "
            "transitions have no density (no KL price, no likelihood ratio)"
        )
    s, s_next = schedule.T - g[:-1], schedule.T - g[1:]
    sigma, sigma_next = schedule.sigma(s), schedule.sigma(s_next)
    h = sigma - sigma_next
    if exact:
        drift_scale, velocity_scale, control_scale, var = _exact_flow_steps(sigma, sigma_next, a)
    else:
        g2 = a**2 * sigma / torch.where(sigma >= 1.0, 1.0 - sigma_next, 1.0 - sigma)
        drift_scale = 1.0 - g2 * h / (2.0 * sigma)
        velocity_scale = -(1.0 + g2 * (1.0 - sigma) / (2.0 * sigma)) * h
        control_scale, var = 0.5 * g2 * h, g2 * h
    reversal = math.isclose(a * a, 2.0, rel_tol=1e-9)  # g^2 = 2 sigma / (1 - sigma)
    return _gaussian_steps(
        g, schedule.T, drift_scale, velocity_scale, control_scale, var, action_scale, "velocity", 0.5, reversal
    )


def _exact_flow_steps(sigma: Tensor, sigma_next: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(a_k, b_k, c_k, v_k)`` of the flow SDE solved exactly over each step from ``sigma`` to ``sigma_next``
    with ``x0 = x - sigma v`` and the correction frozen (see :func:`_flow_sde`), float64.

    With ``r = a^2 / 2`` the linear part's transition is ``Phi = (sigma' / sigma)^(1 + r) ((1 - sigma) / (1 -
    sigma'))^r``; the mean ``Phi x + (alpha' - Phi alpha) x0`` (which sends ``N(alpha x0, sigma^2)`` to
    ``N(alpha' x0, sigma'^2)``, the marginal-preserving property) is ``(alpha' + Phi sigma) x + sigma (Phi
    alpha - alpha') v``, its variance ``sigma'^2 - (Phi sigma)^2``. ``c = sigma'^(1 + r) (1 - sigma')^(-r)
    int u^(-r) (1 - u)^(r - 1) r du`` over ``[sigma', sigma]``; in ``w = (1 - u)^r`` the integrand is
    ``(1 - w^(1/r))^(-r)``, smooth on the step, and 32 Gauss-Legendre nodes give it to float64 precision.
    """
    r = a * a / 2
    alpha, alpha_next = 1.0 - sigma, 1.0 - sigma_next
    phi_sigma = sigma_next * (sigma_next * alpha / (sigma * alpha_next)) ** r  # 0 from sigma = 1
    drift = alpha_next + phi_sigma
    velocity = phi_sigma * alpha - alpha_next * sigma
    var = sigma_next**2 - phi_sigma**2
    nodes, weights = (torch.as_tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(32))
    w_lo, w_hi = alpha**r, alpha_next**r
    w = (w_lo + w_hi)[:, None] / 2 + (w_hi - w_lo)[:, None] / 2 * nodes
    integral = ((1.0 - w ** (1.0 / r)) ** (-r) * weights).sum(1) * (w_hi - w_lo) / 2
    control = sigma_next ** (1.0 + r) * alpha_next ** (-r) * integral
    return drift, velocity, control, var


def girsanov_kl_rate(schedule: VPSchedule, t: Tensor) -> Tensor:
    """``beta(T - t) / 2``: the continuous-time KL rate per unit ``||delta||^2`` (Girsanov)."""
    return 0.5 * schedule.beta(schedule.T - t)

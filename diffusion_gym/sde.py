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

import torch
from torch import Tensor

Integrator = Literal["euler_maruyama", "ddpm", "exponential"]
ActionScale = float | Callable[[Tensor], Tensor]
"""``delta = action_scale(t) * action``: a constant, or a function of the environment-time tensor."""
INTEGRATORS: tuple[str, ...] = ("euler_maruyama", "ddpm", "exponential")


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


def schedule_from_config(config: dict) -> VPSchedule:
    """Rebuild a schedule from :meth:`VPSchedule.config`."""
    kind = str(config.get("kind"))
    if kind == "discrete":
        return DiscreteVPSchedule(config["alphas_cumprod"], T=float(config.get("T", 1.0)))
    kwargs = {k: float(v) for k, v in config.items() if k != "kind"}
    kinds: dict[str, type[VPSchedule]] = {"linear": LinearVPSchedule, "cosine": CosineVPSchedule}
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
        score_scale: ``b_k``, the coefficient of the base model's score.
        noise_std: ``sqrt(v_k)``.
        kl_weight: ``c_k^2 / (2 v_k)``; the step's KL is ``kl_weight_k * ||delta_k||^2``.
        action_scale: ``delta_k = action_scale_k * action_k``.
        constants: the same per step as Python floats from float64, whatever the tensors' dtype.
        control_scale: ``c_k``, the coefficient of the score correction ``delta``. The VP integrators
            add delta to the score, so ``c_k = b_k``; None means that. An SDE whose drift holds the
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
    control_scale: Tensor = None  # type: ignore[assignment]  # None: c_k = b_k (set in __post_init__)

    def __post_init__(self) -> None:
        if self.control_scale is None:
            object.__setattr__(self, "control_scale", self.score_scale)

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
    schedule: VPSchedule, grid: Tensor, integrator: Integrator = "euler_maruyama", action_scale: ActionScale = 1.0
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

    Args:
        schedule: the VP schedule of the base model.
        grid: environment times from :func:`time_grid`.
        integrator: "euler_maruyama", "ddpm" or "exponential".
        action_scale: ``delta = action_scale(t) * action`` (a float, or a function of the time tensor).
    """
    g = grid.to(torch.float64)
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
    else:
        raise ValueError(f"unknown integrator {integrator!r}; expected one of {INTEGRATORS}")
    noise_std, kl_weight, scale = torch.sqrt(var), score_scale**2 / (2.0 * var), action_scales(action_scale, g[:-1])
    constants = _constants(g[:-1], dt, drift_scale, score_scale, noise_std, kl_weight, scale, score_scale)
    return Discretization(
        t=g,
        s=s,
        dt=dt,
        drift_scale=drift_scale,
        score_scale=score_scale,
        noise_std=noise_std,
        kl_weight=kl_weight,
        action_scale=scale,
        constants=constants,
    )


def girsanov_kl_rate(schedule: VPSchedule, t: Tensor) -> Tensor:
    """``beta(T - t) / 2``: the continuous-time KL rate per unit ``||delta||^2`` (Girsanov)."""
    return 0.5 * schedule.beta(schedule.T - t)

"""J_best(N): the best policy of the env's own action class on its grid, by backward dynamic programming.

The env's action shifts the mean of each Gaussian step and leaves its variance the pretrained one
(docs/design.md, section 1). With ``u = c_k delta`` the mean shift, the best such policy
on the grid solves the Bellman recursion

    V_N = r,   V_k(y) = M_k(m_k(y)),
    M_k(z) = max_{|u_i| <= c_k action_scale_k} [ (V_{k+1} * N(0, v_k I))(z + u) - kl_coef |u|^2 / (2 v_k) ],

and ``J_best = E[V_0(Y_0)]``, ``Y_0 ~ N(0, I)``. On square grids of cell centres (one per state,
wide enough for the pretrained chain at that step) each step is

1. a Gaussian smoothing, exact in the cosine basis (the DCT-II diagonalises the heat kernel with
   reflecting walls at the box's edges, far from the mass);
2. a quadratic sup-convolution, which separates over coordinates (the penalty is a sum and the
   action box a product): one pass per axis. The shift is resolved below the grid spacing: the
   smoothed value is a cubic B-spline along the axis, searched on candidate shifts spaced
   ``sqrt(v_k / kl_coef) / resolution`` (fine where the step is small, so the optimum is never
   rounded to a grid multiple) and refined by successive parabolic steps;
3. the change of variables ``y -> m_k(y)`` (the pretrained mean), a cubic-spline interpolation.

The same recursion without step 2 is the pretrained sampler's value: its ``J`` must match the Monte
Carlo J(pre) on the same grid, a check of everything but the maximisation. The error estimate is
the difference to a solve at half the resolution in space and in shifts (the scheme converges
fast in both, so this overstates the error of the finer solve).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import fft, ndimage
from torch import Tensor, nn

from diffusion_gym import kernel
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.parametrization import prediction
from diffusion_gym.sde import Discretization


def _bspline_weights(frac: np.ndarray | float) -> tuple:
    """Cubic B-spline weights of the four coefficients around a point ``frac`` in [0, 1) past a knot."""
    f = frac
    return ((1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6)


def gaussian_smoothing(values: np.ndarray, variance: float, spacing: float) -> np.ndarray:
    """``values * N(0, variance I)`` on a grid of cell centres, exact for the cosine interpolant."""
    if variance <= 0:
        return values.copy()
    freq = [np.pi * np.arange(n) / (n * spacing) for n in values.shape]
    multiplier = np.exp(-0.5 * variance * (freq[0][:, None] ** 2 + freq[1][None, :] ** 2))
    return fft.idctn(fft.dctn(values, type=2, norm="ortho") * multiplier, type=2, norm="ortho")


def sup_convolution_1d(
    values: np.ndarray,
    axis: int,
    penalty_variance: float,
    bound: float,
    spacing: float,
    resolution: float = 16.0,
    refinements: int = 4,
    max_candidates: int = 257,
) -> tuple[np.ndarray, np.ndarray]:
    """``max_{|u| <= bound} F(x + u e_axis) - u^2 / (2 penalty_variance)`` at every grid point, and the argmax.

    ``F`` is the cubic B-spline through ``values`` along ``axis`` (edge values continue it outside).
    The maximiser obeys ``u = penalty_variance F'(x + u)``, so shifts beyond ``penalty_variance``
    times the largest slope are never needed; the candidates cover that window (capped by
    ``bound``) at a spacing of ``sqrt(penalty_variance) / resolution``, and the best one is
    refined ``refinements`` times by the vertex of a parabola through it and two exact evaluations
    on either side, at the candidates' spacing, then at a quarter of the previous one each time.
    """
    f = np.moveaxis(values, axis, 0)
    n = f.shape[0]
    slope = np.abs(np.diff(f, axis=0)).max() / spacing if n > 1 else 0.0
    window = min(bound, 1.05 * penalty_variance * slope)
    if window <= 0:
        return values.copy(), np.zeros_like(values)
    half = min(max(2, math.ceil(window * resolution / math.sqrt(penalty_variance))), (max_candidates - 1) // 2)
    step = window / half
    pad = math.ceil(2 * window / spacing) + 4
    coef = ndimage.spline_filter1d(np.pad(f, ((pad, pad), (0, 0)), mode="edge"), order=3, axis=0, mode="mirror")
    rows = np.arange(n)[:, None] + pad

    def at_shift(u: float) -> np.ndarray:  # one shift for every point: slices, no gathers
        q = math.floor(u / spacing)
        w = _bspline_weights(u / spacing - q)
        return sum(wt * coef[pad + q + t : pad + q + t + n] for t, wt in zip((-1, 0, 1, 2), w, strict=True)) - u * u / (
            2 * penalty_variance
        )

    def at_shifts(u: np.ndarray) -> np.ndarray:  # one shift per point
        q = np.floor(u / spacing).astype(np.int64)
        w = _bspline_weights(u / spacing - q)
        idx = rows + q
        return sum(
            wt * np.take_along_axis(coef, idx + t, 0) for t, wt in zip((-1, 0, 1, 2), w, strict=True)
        ) - u * u / (2 * penalty_variance)

    best = at_shift(-window)
    arg = np.full(f.shape, -window)
    for j in range(-half + 1, half + 1):
        u = j * step
        val = at_shift(u)
        better = val > best
        np.copyto(best, val, where=better)
        np.copyto(arg, u, where=better)
    for _ in range(refinements):
        # The parabola through the best shift and its two neighbours (evaluated past the window, where
        # the spline continues, so that a best shift on the window's edge still gets a vertex); its
        # vertex, kept within the neighbours and the box, is evaluated exactly.
        lo, hi = arg - step, arg + step
        f_lo, f_hi = at_shifts(lo), at_shifts(hi)
        slope_lo, slope_hi = (best - f_lo) / step, (f_hi - best) / step
        curvature = (slope_hi - slope_lo) / step
        vertex = 0.5 * (lo + arg) - slope_lo / np.where(curvature < 0, curvature, -1.0)
        vertex = np.clip(np.where(curvature < 0, vertex, arg), np.maximum(lo, -bound), np.minimum(hi, bound))
        f_vertex = at_shifts(vertex)
        for u, val in ((lo, f_lo), (hi, f_hi), (vertex, f_vertex)):
            better = (val > best) & (np.abs(u) <= bound)
            np.copyto(best, val, where=better)
            np.copyto(arg, u, where=better)
        step /= 4
    return np.moveaxis(best, 0, axis), np.moveaxis(arg, 0, axis)


def solvable(env: DiffusionSDEVectorEnv) -> bool:
    """Whether :class:`GridDP` solves ``env``'s task: 2-D, unconditional, with a KL price."""
    env = getattr(env, "unwrapped", env)
    return env.event_shape == (2,) and env.num_conditions is None and env.kl_coef > 0


@dataclass
class GridSolution:
    """One backward pass on one set of spatial grids.

    Attributes:
        j: ``E[V_0(Y_0)]``.
        value: ``V_0`` on step 0's grid (n, n).
        shifts: per step the maximisers (N, 2, n, n) on the grid of ``z = m_k(y)`` (step k + 1's),
            float32, or None: ``[k, 1]`` is ``u_2`` at ``z``, ``[k, 0]`` is ``u_1`` at
            ``(z_1, z_2 + u_2)`` (the order of the separable passes).
    """

    j: float
    value: np.ndarray
    shifts: np.ndarray | None


class GridDP:
    """The backward recursion of the module docstring for a 2-D, unconditional env.

    Each state ``Y_k`` has its own square grid of ``n_grid^2`` cell centres on
    ``[-L_k, L_k]^2``: on a coarse grid the first steps spread the chain far (their variance is
    ``e^{int beta} - 1`` under the exponential integrator: 35 at N = 5), the last ones stay near the
    data, and one grid for all would be either too narrow at the start or too coarse at the end.

    Args:
        env: the batched env whose grid, integrator, action box, kl_coef and models define the problem.
        n_grid: cells per axis of each spatial grid.
        half_width: step k's grid covers ``[-h_k, h_k]^2``, ``h_k`` this (a scalar: every step, or one
            per state); None: each step's grid holds the pretrained chain at that step
            (:func:`chain_extents`).
        resolution: candidate shifts per ``sqrt(v_k / kl_coef)`` (see :func:`sup_convolution_1d`).
    """

    def __init__(
        self,
        env: DiffusionSDEVectorEnv,
        n_grid: int = 256,
        half_width: float | np.ndarray | None = None,
        resolution: float = 16.0,
    ) -> None:
        env = getattr(env, "unwrapped", env)
        if not solvable(env):
            raise ValueError(
                "the grid DP is for 2-D unconditional tasks with kl_coef > 0, got event shape "
                f"{env.event_shape}, {env.num_conditions} conditions, kl_coef {env.kl_coef}"
            )
        self.env, self.n, self.resolution = env, int(n_grid), float(resolution)
        # The env's coefficients as its dtype rounds them, tensors and constants alike, in float64.
        self.disc: Discretization = env.discretization.to("cpu", torch.float64).rounded()
        score_model = _float64_copy(env.score_model)
        n_states = self.disc.n_steps + 1
        if half_width is None:
            self.extents = chain_extents(score_model, self.disc)
        else:
            self.extents = np.broadcast_to(np.asarray(half_width, dtype=float), (n_states,)).copy()
        self.spacings = 2 * self.extents / self.n
        self.axes = [
            np.linspace(-L + h / 2, L - h / 2, self.n) for L, h in zip(self.extents, self.spacings, strict=True)
        ]
        points = [_grid_points(axis) for axis in self.axes]
        with torch.no_grad():
            self.terminal = _float64_copy(env.reward_model)(points[-1]).double().numpy().reshape(self.n, self.n)
            # The pretrained means m_k(y) of step k's grid points, in step k + 1's grid-index coordinates.
            self.coords = []
            for k in range(self.disc.n_steps):
                f = prediction(score_model, self.disc.s[k], points[k], self.disc.output)  # type: ignore[arg-type]
                mean = kernel.step_mean(self.disc, k, points[k], f)
                self.coords.append((mean.numpy().T - self.axes[k + 1][0]) / self.spacings[k + 1])

    def solve(self, control: bool = True, keep_shifts: bool = False) -> GridSolution:
        """Run the recursion (``control=False``: the pretrained sampler's value, no maximisation)."""
        v_next = self.terminal
        shifts = np.zeros((self.disc.n_steps, 2, self.n, self.n), np.float32) if keep_shifts and control else None
        kl = self.env.kl_coef
        for k in range(self.disc.n_steps - 1, -1, -1):
            var, h = float(self.disc.noise_std[k]) ** 2, float(self.spacings[k + 1])
            smoothed = gaussian_smoothing(v_next, var, h)
            if control:
                bound = float(self.disc.control_scale[k] * self.disc.action_scale[k])
                first, u1 = sup_convolution_1d(smoothed, 0, var / kl, bound, h, self.resolution)
                smoothed, u2 = sup_convolution_1d(first, 1, var / kl, bound, h, self.resolution)
                if shifts is not None:
                    shifts[k, 0], shifts[k, 1] = u1, u2
            v_next = ndimage.map_coordinates(smoothed, self.coords[k], order=3, mode="nearest").reshape(self.n, self.n)
        weights = np.exp(-0.5 * self.axes[0] ** 2)
        weights /= weights.sum()
        return GridSolution(float(weights @ v_next @ weights), v_next, shifts)


@dataclass
class BestPolicy:
    """J_best(N) of an env with its error estimate, the pretrained value from the same recursion, and
    the optimal mean shifts (see :func:`best_policy`).

    Attributes:
        extents: the half-width of each state's grid (N + 1,).
        n_grid: cells per axis.
        shifts: the maximisers of :class:`GridSolution` (empty unless kept).
    """

    j_best: float
    error: float
    j_pretrained: float
    grid: Tensor
    extents: np.ndarray
    n_grid: int
    shifts: np.ndarray

    def policy(self, env: DiffusionSDEVectorEnv) -> BestPolicyField:
        """The DP's policy as an action map for ``env`` (which must have the DP's grid)."""
        return BestPolicyField(self, env)


class BestPolicyField:
    """``action(t_k, y)``: the DP's optimal shift at ``z = m_k(y)``, as an action of the env.

    Shifts are interpolated bilinearly (the maximiser may jump where two local maxima swap) on the
    env's device; the step is found from the observation's time on the env's grid.
    """

    def __init__(self, solution: BestPolicy, env: DiffusionSDEVectorEnv) -> None:
        env = getattr(env, "unwrapped", env)
        if env.grid.shape != solution.grid.shape or not torch.allclose(env.grid, solution.grid):
            raise ValueError("the DP policy acts on the grid it was solved on")
        if solution.shifts.shape[0] != env.n_steps:
            raise ValueError("the DP kept no shifts: solve with keep_shifts=True")
        self.env = env
        self.shifts = torch.as_tensor(solution.shifts, device=env.device, dtype=env.dtype)  # (N, 2, n, n)
        h = 2 * solution.extents / solution.n_grid
        self.centre_extents = (solution.extents - h / 2).tolist()  # outermost cell centres, per state
        self.times = env.grid[:-1].to(env.device, env.dtype)

    @staticmethod
    def _sample(field: Tensor, z: Tensor, extent: float) -> Tensor:
        """Bilinear values of ``field`` (n, n), indexed [z_1, z_2] on ``[-extent, extent]``, at ``z`` (B, 2)."""
        grid = (z / extent).flip(-1).view(1, -1, 1, 2)  # grid_sample's (x, y) index (width, height) = (z_2, z_1)
        out = nn.functional.grid_sample(
            field[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        return out.view(-1)

    @torch.no_grad()
    def __call__(self, obs: dict[str, Tensor]) -> Tensor:
        t = obs["t"][0, 0]
        k = int(torch.argmin((self.times - t).abs()))
        z = self.env.pretrained_mean(k, obs["x"])
        extent = self.centre_extents[k + 1]
        u2 = self._sample(self.shifts[k, 1], z, extent)
        u1 = self._sample(self.shifts[k, 0], torch.stack([z[:, 0], z[:, 1] + u2], 1), extent)
        c = self.env.discretization.constants[k]
        return (torch.stack([u1, u2], 1) / (c.control_scale * c.action_scale)).clamp(-1, 1)


@torch.no_grad()
def chain_extents(score_model: nn.Module, disc: Discretization, n: int = 8192, floor: float = 9.0) -> np.ndarray:
    """Per state ``Y_0 .. Y_N`` of the pretrained chain, a half-width that holds it: 1.25 times the 99.99th
    percentile of its largest coordinate over ``n`` episodes (a fixed seed), at least ``floor``."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    spread = [float(torch.quantile(y.abs().amax(1), 0.9999))]
    for k in range(disc.n_steps):
        noise = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        f = prediction(score_model, disc.s[k], y, disc.output)  # type: ignore[arg-type]
        y = kernel.step_sample(disc, k, kernel.step_mean(disc, k, y, f), noise)
        spread.append(float(torch.quantile(y.abs().amax(1), 0.9999)))
    return np.maximum(floor, 1.25 * np.array(spread))


def best_policy(
    env: DiffusionSDEVectorEnv,
    n_grid: int = 256,
    half_width: float | None = None,
    resolution: float = 16.0,
    keep_shifts: bool = False,
) -> BestPolicy:
    """J_best(N) of ``env``'s grid and action box, with an error estimate and the pretrained value.

    Args:
        env: a 2-D unconditional batched env.
        n_grid: cells per axis; the error estimate solves again with ``n_grid // 2`` and half the
            ``resolution``.
        half_width: one half-width for every step's grid (None: :func:`chain_extents`).
        resolution: candidate shifts per ``sqrt(v_k / kl_coef)``.
        keep_shifts: keep the optimal shifts of every step (``N * 2 * n_grid^2`` float32) for
            :meth:`BestPolicy.policy`.
    """
    env = getattr(env, "unwrapped", env)
    fine = GridDP(env, n_grid, half_width, resolution)
    best = fine.solve(control=True, keep_shifts=keep_shifts)
    pretrained = fine.solve(control=False)
    coarse = GridDP(env, n_grid // 2, fine.extents, resolution / 2).solve(control=True)  # the same domains
    return BestPolicy(
        j_best=best.j,
        error=abs(best.j - coarse.j),
        j_pretrained=pretrained.j,
        grid=env.grid,
        extents=fine.extents,
        n_grid=fine.n,
        shifts=best.shifts if best.shifts is not None else np.zeros((0, 2, 0, 0), np.float32),
    )


def _grid_points(axis: np.ndarray) -> Tensor:
    """The square grid's cell centres, (n^2, 2), row-major in (z_1, z_2)."""
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    return torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], 1))


def _float64_copy(model: object) -> object:
    """A float64 copy of a module on the CPU (the caller's stays as it is); other callables as they are."""
    return copy.deepcopy(model).to("cpu", torch.float64) if isinstance(model, nn.Module) else model

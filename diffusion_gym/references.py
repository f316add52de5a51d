"""The references a policy is scored against on its grid, owned in one place (docs/design.md, section 1).

One grid's references are J* and J(pre) (:class:`~diffusion_gym.optimum.Optimum`: Monte Carlo over
the pretrained sampler), J*_0, the optimum for the env's fixed initial law (nested Monte Carlo on the
grid, :func:`~diffusion_gym.optimum.initial_law_optimum`, and in continuous time ``kl_coef E[log h(0,
Y_0)]`` where the optimal control is exact), J_best (the dynamic programme, 2-D tasks) and J_oracle (the continuous-time
optimal control applied on the grid, Gaussian-mixture tasks). This module decides which of them a
grid has and computes them (:func:`compute_references`), serialises them (:meth:`References.to_row`
/ :meth:`References.from_row`: train, tune, the benchmarks and the report read the same row),
decides which reference the reachable gap uses (:attr:`References.reachable_name`, and per task
:func:`task_reachable`), and computes every gap with its error. Where a task ships them
(:meth:`~diffusion_gym.tasks.spec.TaskSpec.shipped_references`), the shipped ones are read instead
(``python -m diffusion_gym.tasks.references`` computes a task's table).

**J_oracle with a control variate.** Under the optimal control ``delta* = grad log h`` Ito's formula
gives, path by path, ``r(Y_T) - kl_coef KL_path = kl_coef log h(0, Y_0) + kl_coef int g delta* . dB``:
the objective's noise is the stochastic integral. Its discrete version
``M = sum_k (b_k / sqrt(v_k)) delta_k . xi_k`` (:func:`~diffusion_gym.kernel.step_martingale`) has mean
zero exactly on any grid (``delta_k`` is a function of ``Y_k``, ``xi_k`` independent of it), so
``objective - kl_coef M`` estimates J_oracle without bias and with the variance that is left from
the grid and the quadrature alone (on the 8-D mixture 2-3x smaller standard errors at N = 20-50,
4x at N = 100 in 2-D; where the fixed coefficient would add variance the plain mean is used). Its
standard error is the larger of the episodes' and that of 32 batch means (a second estimate of the
same variance, reported beside it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.evaluation import Estimate, Rollouts, rollout
from diffusion_gym.optimum import Optimum, initial_law_optimum, normalized_gap, optimum_from_rewards
from diffusion_gym.scoring import derive_seed, estimates

BATCH_MEANS = 32
"""Batches of J_oracle's batch-means standard error."""
INITIAL_LAW_INNER = 256
"""Pretrained continuations of each initial state in J*_0's nested Monte Carlo: its jackknifed
estimate's leftover bias is then below its standard error on every mixture task (the shipped tables
record the jackknife's bias estimate and a half-L estimate beside it)."""

_LEGACY_NAMES = {"j_best_error": "j_best_se", "j_best_cells": "j_best_n"}
"""Row keys of results written before the references had one owner, and their names now."""


def oracle_estimate(oracle: Rollouts, kl_coef: float) -> tuple[Estimate, dict[str, Any]]:
    """J_oracle from the optimal control's episodes: the mean of ``objective - kl_coef * martingale``
    (the control variate), or of the plain objective where no martingale was recorded or where its
    standard error is the smaller one (on a grid where the discrete control is far from the
    continuous one, e.g. DDPM at N = 20, the fixed coefficient can add variance); its standard error
    the larger of the episodes' and that of :data:`BATCH_MEANS` batch means (with 64 episodes or
    more); and the estimator and both errors, by name."""
    plain = oracle.objective.double()
    candidates = {"plain": plain}
    if oracle.martingale is not None:
        candidates["control variate"] = plain - kl_coef * oracle.martingale.double()
    name, y = min(candidates.items(), key=lambda item: float(item[1].std()))
    est = Estimate.of(y)
    out: dict[str, Any] = {"j_oracle_estimator": name, "j_oracle_se_episodes": est.se}
    se = est.se
    if y.numel() >= 2 * BATCH_MEANS:
        batches = torch.stack([b.mean() for b in y.tensor_split(BATCH_MEANS)])
        out["j_oracle_se_batches"] = batches.std().item() / math.sqrt(BATCH_MEANS)
        se = max(se, out["j_oracle_se_batches"])
    return Estimate(est.mean, se, est.n), out


@dataclass(frozen=True)
class References:
    """Everything a policy's objective on one grid is compared with (docs/design.md, section 1).

    Attributes:
        optimum: J* and J(pre) (their covariance and the effective sample size behind J*).
        initial_law: J*_0 by nested Monte Carlo (:meth:`~diffusion_gym.optimum.InitialLawOptimum.row`:
            the estimate, its plain version, bias, half-L check and sizes), and in continuous time
            (``j_star_0_continuous``, ``_se``) where the optimal control is exact; None where not computed.
        j_best: J_best(N) from the dynamic programme, its ``se`` the numerical error estimate and its
            ``n`` the spatial grid's cell count (2-D tasks; None elsewhere).
        j_best_pretrained: J(pre) by the same recursion without the maximisation (a check).
        j_oracle: J_oracle(N), the optimal control's objective on the grid (Gaussian-mixture tasks).
        oracle: the optimal control's row as a policy's is scored (objective = J_oracle, proxy, gold,
            KL, each with ``_se``), and J_oracle's two standard errors; None where there is no J_oracle.
        command: the command that computed J* and J(pre), where they ship with the task (None: this run).
        oracle_command: the command that computed J_oracle, where it ships (None: this run's episodes).
    """

    optimum: Optimum
    j_best: Estimate | None = None
    j_best_pretrained: float | None = None
    j_oracle: Estimate | None = None
    oracle: Mapping[str, Any] | None = None
    command: str | None = None
    oracle_command: str | None = None
    initial_law: Mapping[str, Any] | None = None

    REACHABLE: ClassVar[tuple[str, ...]] = ("j_best", "j_oracle")
    """The reachable references in order of preference (J_oracle <= J_best <= J*_0 <= J*)."""

    @property
    def j_star_0(self) -> Estimate | None:
        """J*_0 on the grid (nested Monte Carlo), or None where not computed."""
        row = self.initial_law
        return None if row is None else Estimate(row["j_star_0"], row["j_star_0_se"], row["j_star_0_outer"])

    @property
    def ceiling(self) -> tuple[Estimate, float]:
        """What the gap is measured against, with its covariance with J(pre): J*_0 where computed (no
        policy of the env can beat it; independent samples), else J*."""
        j_star_0 = self.j_star_0
        return (self.optimum.j_star, self.optimum.covariance) if j_star_0 is None else (j_star_0, 0.0)

    @property
    def reachable_name(self) -> str | None:
        """The one rule for the reachable reference of a grid: J_best where it is computable, else
        J_oracle; None where there is neither, or where it does not beat J(pre) (the optimal control
        on a coarse grid can do worse than no control: no yardstick there)."""
        for name in self.REACHABLE:
            ref = getattr(self, name)
            if ref is not None:
                return name if ref.mean > self.optimum.j_pretrained.mean else None
        return None

    @property
    def reachable(self) -> Estimate | None:
        """The reachable reference's estimate (see :attr:`reachable_name`), or None."""
        return None if self.reachable_name is None else getattr(self, self.reachable_name)

    def gap(self, j: Estimate) -> Estimate:
        """``(J*_0 - J) / (J*_0 - J(pre))``: how far ``j`` is from the optimum over the path measures with
        the env's initial law (J* in place of J*_0 where that is not computed: :attr:`ceiling`)."""
        ceiling, cov = self.ceiling
        return normalized_gap(j, ceiling, self.optimum.j_pretrained, cov)

    def reachable_gap(self, j: Estimate) -> Estimate | None:
        """``(J_ref - J) / (J_ref - J(pre))`` with the reachable reference (independent of J(pre)'s
        samples), or None where the grid has none."""
        ref = self.reachable
        return None if ref is None else normalized_gap(j, ref, self.optimum.j_pretrained)

    def gaps(self, j: Estimate) -> dict[str, float]:
        """Both gaps of an objective ``j`` with their standard errors and the policy's own share of
        them (``_se_policy``: the references' share is common to every policy scored on the grid)."""
        pre = self.optimum.j_pretrained.mean
        gap = self.gap(j)
        out = {"gap": gap.mean, "gap_se": gap.se, "gap_se_policy": j.se / (self.ceiling[0].mean - pre)}
        reachable = self.reachable_gap(j)
        if reachable is not None and self.reachable is not None:
            out |= {"reachable_gap": reachable.mean, "reachable_gap_se": reachable.se}
            out["reachable_gap_se_policy"] = j.se / (self.reachable.mean - pre)
        return out

    def scored_oracle(self) -> dict[str, Any] | None:
        """The optimal control's row with its gaps on this grid, as a policy's is scored (None where
        the grid has no J_oracle)."""
        if self.oracle is None or self.j_oracle is None:
            return None
        return dict(self.oracle) | self.gaps(self.j_oracle)

    def reference_se(self, gap: float, key: str = "gap") -> float:
        """The references' share of the error of a gap ``gap`` (``key``: ``"gap"`` against J*, or
        ``"reachable_gap"``): what every policy's gap on this grid shares."""
        pre = self.optimum.j_pretrained
        if key == "gap":
            ref, cov = self.ceiling
        elif self.reachable is not None:
            ref, cov = self.reachable, 0.0
        else:
            raise ValueError("this grid has no reachable reference")
        j = Estimate(ref.mean - gap * (ref.mean - pre.mean), 0.0, ref.n)
        return normalized_gap(j, ref, pre, cov).se

    def to_row(self) -> dict[str, Any]:
        """The references as flat JSON numbers: results files, tuning records, shipped tables."""
        row: dict[str, Any] = dict(self.optimum.row())
        for name in self.REACHABLE:
            est = getattr(self, name)
            if est is not None:
                row |= {name: est.mean, f"{name}_se": est.se, f"{name}_n": est.n}
        if self.j_best_pretrained is not None:
            row["j_best_pretrained"] = self.j_best_pretrained
        if self.oracle is not None:
            row["oracle"] = dict(self.oracle)
        if self.command is not None:
            row["command"] = self.command
        if self.oracle_command is not None:
            row["j_oracle_command"] = self.oracle_command
        if self.initial_law is not None:
            row |= dict(self.initial_law)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> References:
        """The references of :meth:`to_row` back (also the rows of older results, whose J_best error
        and cell count were named ``j_best_error`` and ``j_best_cells``). A task's shipped entry
        whose action box matched (it keeps ``control``) shipped J_oracle with its ``command``."""
        row = {_LEGACY_NAMES.get(k, k): v for k, v in row.items() if v is not None}  # older rows write None
        oracle_command = row.get("j_oracle_command")
        if oracle_command is None and "control" in row and "j_oracle" in row:
            oracle_command = row.get("command")

        def estimate(name: str) -> Estimate | None:
            return Estimate(row[name], row[f"{name}_se"], row.get(f"{name}_n", row["n"])) if name in row else None

        initial_law = {k: v for k, v in row.items() if k.startswith("j_star_0")} or None

        return cls(
            Optimum.from_row(row),
            estimate("j_best"),
            row.get("j_best_pretrained"),
            estimate("j_oracle"),
            row.get("oracle"),
            row.get("command"),
            oracle_command,
            initial_law,
        )


def task_reachable(grids: Iterable[References]) -> str | None:
    """The reachable reference a task's claims use: the one every grid's rule picks, or None (the task
    is then scored against J* alone) when some grid has none or they differ."""
    names = {refs.reachable_name for refs in grids}
    return names.pop() if len(names) == 1 else None


def oracle_row(env: DiffusionSDEVectorEnv, n: int, seed: int) -> tuple[Estimate, dict[str, float]]:
    """J_oracle and the optimal control's row from ``n`` episodes on ``env`` (see :class:`References`)."""
    from diffusion_gym.optimal_control import MixtureOptimalControl

    control = MixtureOptimalControl.for_env(env)
    r = rollout(env, control.policy(env), n, seed=seed, martingale=True)
    j_oracle, errors = oracle_estimate(r, env.kl_coef)
    row = estimates(r.summary()) | {"objective": j_oracle.mean, "objective_se": j_oracle.se}
    return j_oracle, row | errors


def initial_law_row(env: DiffusionSDEVectorEnv, n: int, seed: int) -> dict[str, Any]:
    """J*_0 of ``env``'s grid from about ``n`` pretrained chains (:func:`~diffusion_gym.optimum.initial_law_optimum`),
    and where the optimal control is exact, ``kl_coef E[log h(0, Y_0)]`` in continuous time. At t = 0 the
    posterior of ``Y_T`` is a whole component of the terminal law, which the control's 4-node rule
    integrates poorly (0.06 low in 2-D), so this uses a rich one: Gauss-Hermite 16 per axis in 2-D
    (within 1e-3 of the quadrature J* there), 16,384 antithetic draws above (0.01 from 512 in 8-D);
    64 draws of ``Y_0`` suffice, ``log h(0, .)`` being all but constant (the chain forgets its start)."""
    from diffusion_gym.optimal_control import MixtureOptimalControl

    inner = min(INITIAL_LAW_INNER, max(4, 2 * (n // 4)))
    row: dict[str, Any] = initial_law_optimum(env, max(2, n // inner), inner, seed).row()
    if MixtureOptimalControl.applies(env):
        control = MixtureOptimalControl.for_env(env, gauss_hermite=16, max_nodes=16_384, chunk=16)
        continuous = control.initial_value(64, seed)
        row |= {"j_star_0_continuous": continuous.mean, "j_star_0_continuous_se": continuous.se}
    return row


def compute_references(
    env: DiffusionSDEVectorEnv,
    *,
    n_samples: int,
    oracle_n: int,
    best: bool = True,
    best_grid: int = 256,
    shipped: Mapping[str, Any] | None = None,
    pretrained: Rollouts | None = None,
    oracle_env: DiffusionSDEVectorEnv | None = None,
    seeds: str = "",
    initial_n: int = 0,
) -> References:
    """Decide which references ``env``'s grid has and compute them (or read the shipped ones).

    Args:
        env: the task's batched env on the grid (its integrator, kl_coef and action box define the
            problem; its batch sets the episodes drawn at once).
        n_samples: pretrained samples for J* and J(pre).
        oracle_n: episodes of the optimal control for J_oracle (Gaussian-mixture tasks).
        best: compute J_best where the task is 2-D (a few seconds at N = 200 on a CPU).
        best_grid: J_best's cells per axis.
        shipped: the task's shipped entry for this configuration
            (:meth:`~diffusion_gym.tasks.spec.TaskSpec.shipped_references`: J*, J(pre), and J_oracle
            where the action box matches), read instead of estimated.
        pretrained: pretrained rollouts on this grid to estimate J* and J(pre) from (default: drawn here).
        oracle_env: the env (another batch) the optimal control's episodes run on (default: ``env``).
        seeds: ``""`` for a run's references, ``"shipped"`` for a task's table: which seeds they draw.
        initial_n: pretrained chains for J*_0's nested Monte Carlo (``initial_n // INITIAL_LAW_INNER``
            initial states, :data:`INITIAL_LAW_INNER` continuations each); 0: J*_0 only where shipped.
    """
    from diffusion_gym.dynamic_programming import best_policy, solvable
    from diffusion_gym.optimal_control import MixtureOptimalControl

    env = getattr(env, "unwrapped", env)
    n_steps = env.n_steps
    shipped_refs = References.from_row(shipped) if shipped is not None else None
    if shipped_refs is not None:
        optimum = shipped_refs.optimum
    else:
        if pretrained is None:
            pretrained = rollout(env, None, n_samples, seed=derive_seed(seeds or "optimum", n_steps))
        optimum = optimum_from_rewards(pretrained.terminal_reward, env.kl_coef)
    refs = References(optimum, command=None if shipped_refs is None else shipped_refs.command)
    if best and solvable(env):
        solution = best_policy(env, n_grid=best_grid)
        j_best = Estimate(solution.j_best, solution.error, solution.n_grid**2)
        refs = replace(refs, j_best=j_best, j_best_pretrained=solution.j_pretrained)
    if shipped_refs is not None and shipped_refs.initial_law is not None:
        refs = replace(refs, initial_law=shipped_refs.initial_law)
    elif initial_n > 0:
        refs = replace(
            refs,
            initial_law=initial_law_row(
                env, initial_n, derive_seed(f"{seeds}_initial" if seeds else "initial", n_steps)
            ),
        )
    if shipped_refs is not None and shipped_refs.j_oracle is not None:
        refs = replace(
            refs, j_oracle=shipped_refs.j_oracle, oracle=shipped_refs.oracle, oracle_command=shipped_refs.oracle_command
        )
    elif MixtureOptimalControl.applies(env):
        seed = derive_seed(f"{seeds}_oracle" if seeds else "oracle", n_steps)
        j_oracle, row = oracle_row(getattr(oracle_env, "unwrapped", oracle_env) or env, oracle_n, seed)
        refs = replace(refs, j_oracle=j_oracle, oracle=row)
    return refs

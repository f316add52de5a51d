"""``report.md`` from ``results.json`` alone: the references of every task and grid, agents x metrics per
task (mean ± s.e. over seeds) with the optimal control as a row, the discretization-robustness table,
and the claims the suite names (its ``[claims]``: an agent against its baselines) answered from the
numbers. The report knows no agent by name.

Gaps: ``gap`` is against J*_0, the optimum for the env's initial law (J*, the optimum over all path
measures, where J*_0 is not computed); ``reachable_gap`` against the best a
policy of the env can do on the grid (J_best, else J_oracle; docs/design.md, section 1). Where a task
has a reachable reference, the claims and the queries-to-gap columns use the reachable gap.

    python -m benchmarks report DIR      # rewrites DIR/report.md and the plots from DIR/results.json
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from benchmarks.results_file import read_results
from diffusion_gym.evaluation import Estimate
from diffusion_gym.references import References
from diffusion_gym.sde import DEFAULT_NOISE_LEVEL, FLOW_INTEGRATORS
from diffusion_gym.tasks import get_task

LEVEL = 0.05
"""Two-sided level of the tests behind "significant"."""


@dataclass(frozen=True)
class Stat:
    """A mean over seeds with its standard error, the number of seeds k, and the degrees of freedom
    of the error (k - 1 when the spread over seeds sets it, infinite when Monte Carlo errors do)."""

    mean: float
    se: float
    k: int
    df: float = math.inf


def over_seeds(values: Iterable[float | None], errors: Iterable[float | None] | None = None) -> Stat:
    """Mean over the seeds that have a value and its standard error.

    The error is the larger of the spread over seeds (std / sqrt(k), undefined for one seed) and,
    when every run gives its own Monte Carlo error, the error those imply for the mean
    (sqrt(sum se^2) / k): two seeds alone can agree by chance.
    """
    errs = list(errors) if errors is not None else None
    pairs = [(x, None if errs is None else errs[i]) for i, x in enumerate(values) if x is not None and math.isfinite(x)]
    if not pairs:
        return Stat(math.nan, math.nan, 0)
    k = len(pairs)
    v = [x for x, _ in pairs]
    spread = statistics.stdev(v) / math.sqrt(k) if k > 1 else math.nan
    mc = [e for _, e in pairs if e is not None and math.isfinite(e)]
    monte_carlo = math.sqrt(sum(e * e for e in mc)) / k if mc and len(mc) == k else math.nan
    if math.isfinite(spread) and not spread < monte_carlo:
        return Stat(statistics.fmean(v), spread, k, k - 1)
    return Stat(statistics.fmean(v), monte_carlo, k)


def compare(a: Stat, b: Stat) -> tuple[float, float, str]:
    """``b - a``, its standard error and a verdict of the two-sided test at :data:`LEVEL`: Welch's t
    (Satterthwaite's degrees of freedom) where a spread over seeds sets an error, else normal."""
    diff, se = b.mean - a.mean, math.hypot(a.se, b.se)
    if not math.isfinite(se) or se == 0:
        return diff, se, "no error bar"
    terms = [x.se**4 / x.df for x in (a, b) if math.isfinite(x.df) and x.df > 0]
    df = se**4 / sum(terms) if terms else math.inf
    crit = stats.norm.ppf(1 - LEVEL / 2) if math.isinf(df) else stats.t.ppf(1 - LEVEL / 2, df)
    dof = "normal" if math.isinf(df) else f"t, {df:.1f} d.o.f."
    verdict = "significant" if abs(diff) > crit * se else "not significant"
    return diff, se, f"{verdict} at {LEVEL:.0%}, {dof}"


def fmt(stat: Stat | float, se: float = math.nan, digits: int = 3) -> str:
    mean, se = (stat.mean, stat.se) if isinstance(stat, Stat) else (stat, se)
    if not math.isfinite(mean):
        return "–"
    if digits == 0:
        return f"{mean:,.0f}" + (f" ± {se:,.0f}" if math.isfinite(se) else "")
    if abs(mean) >= 1e3:
        return f"{mean:.4g}" + (f" ± {se:.2g}" if math.isfinite(se) else "")
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if math.isfinite(se) else "")


def runs_by_agent(results: dict[str, Any], task: str, n_train: int) -> dict[str, list[dict[str, Any]]]:
    """The runs of one task and training grid, by agent label, in the suite's order."""
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        if run["task"] == task and run["n_train"] == n_train:
            by_agent.setdefault(run["agent"], []).append(run)
    return by_agent


GAP_KEYS = ("gap", "reachable_gap")


def claim_gap(task: dict[str, Any]) -> str:
    """The gap the claims use on a task: the reachable one where the task has a reachable reference."""
    return "reachable_gap" if task.get("reachable") else "gap"


def _crossings(run: dict[str, Any], gap_key: str) -> dict[str, Any]:
    return run["to_reachable_gap"] if gap_key == "reachable_gap" else run["to_gap"]


def _final(runs: list[dict[str, Any]], n: int, key: str) -> Stat:
    """A final metric at grid n over seeds; a gap with its policy's share of the error only (the
    references' error is shared by every run on the grid: see :func:`_gap_with_references`)."""
    rows = [run["final"][str(n)] for run in runs if str(n) in run["final"]]
    err = f"{key}_se_policy" if key in GAP_KEYS else f"{key}_se"
    return over_seeds([row.get(key) for row in rows], [row.get(err) for row in rows])


def _gap_with_references(task: dict[str, Any], n: int, gap: Stat, key: str = "gap") -> Stat:
    """The mean gap's error with its references' error (J* or the reachable one, and J(pre)) added
    once, in quadrature."""
    if not math.isfinite(gap.mean):
        return gap
    ref_se = References.from_row(task["optimum"][str(n)]).reference_se(gap.mean, key)
    return Stat(gap.mean, math.hypot(gap.se, ref_se), gap.k, gap.df)


def _to_gap(runs: list[dict[str, Any]], gap: float, key: str, gap_key: str = "gap") -> str:
    stat = over_seeds(_crossings(run, gap_key)[str(gap)][key] for run in runs)
    if stat.k == 0:
        return f"not reached (0/{len(runs)})"
    text = fmt(stat, digits=0 if key == "reward_queries" else 1)
    return text if stat.k == len(runs) else f"{text} ({stat.k}/{len(runs)} seeds)"


def _err(row: dict[str, Any], gap_key: str) -> float:
    return row.get(f"{gap_key}_se_policy", row.get(f"{gap_key}_se", math.nan))


def _robustness(
    run: dict[str, Any],
    n_train: int,
    gap_key: str = "gap",
    task: dict[str, Any] | None = None,
    native: dict[int, dict[str, Any]] | None = None,
) -> dict[str, float] | None:
    """A run's mean gap off its training grid, its worst rise there over the gap at the training grid,
    and (given the task's optimal-control rows and the same agent's runs trained at the other grids)
    its mean gap there minus the optimal control's and minus the natively trained policy's, with
    the policies' Monte Carlo errors (independent evaluations per grid)."""
    final = run["final"]
    others = [(n, row) for n, row in final.items() if int(n) != n_train and gap_key in row]
    if not others or str(n_train) not in final:
        return None
    base = final[str(n_train)]
    worst_n, worst = max(others, key=lambda item: item[1][gap_key])
    out = {
        "off_mean": statistics.fmean(row[gap_key] for _, row in others),
        "off_mean_se": math.sqrt(sum(_err(row, gap_key) ** 2 for _, row in others)) / len(others),
        "worst_rise": worst[gap_key] - base[gap_key],
        "worst_rise_se": math.hypot(_err(worst, gap_key), _err(base, gap_key)),
        "worst_n": int(worst_n),
    }
    oracle = (task or {}).get("oracle") or {}
    for name, refs in (
        ("vs_oracle", oracle),
        ("vs_native", {str(n): r["final"][str(n)] for n, r in (native or {}).items()}),
    ):
        pairs = [(row, refs[n]) for n, row in others if n in refs and gap_key in refs[n]]
        if pairs:
            out[name] = statistics.fmean(row[gap_key] - ref[gap_key] for row, ref in pairs)
            out[f"{name}_se"] = math.sqrt(sum(_err(a, gap_key) ** 2 + _err(b, gap_key) ** 2 for a, b in pairs)) / len(
                pairs
            )
    return out


def _native_runs(results: dict[str, Any], task: str, agent: str, seed: int) -> dict[int, dict[str, Any]]:
    """The same agent's runs with the same seed on ``task``, by training grid."""
    return {r["n_train"]: r for r in results["runs"] if r["task"] == task and r["agent"] == agent and r["seed"] == seed}


def _robust_stat(
    runs: list[dict[str, Any]], n_train: int, key: str, gap_key: str = "gap", results: dict[str, Any] | None = None
) -> Stat:
    rows = []
    for r in runs:
        task = results["tasks"][r["task"]] if results else None
        native = _native_runs(results, r["task"], r["agent"], r["seed"]) if results else None
        rows.append(_robustness(r, n_train, gap_key, task, native))
    rows = [r for r in rows if r is not None and key in r]
    return over_seeds([r[key] for r in rows], [r[f"{key}_se"] for r in rows])


def suite_claims(results: dict[str, Any]) -> dict[str, Any] | None:
    """The suite's ``[claims]`` as results.json records them (None: the suite names none)."""
    return results.get("claims")


def claims(results: dict[str, Any], task: str, n_train: int) -> list[str]:
    """The suite's claims on one task (its ``[claims]``: ours against each baseline), stated from the
    measured numbers whatever they say (with the reachable gap where the task has a reachable
    reference)."""
    spec = suite_claims(results)
    if spec is None:
        if results.get("schema_version", 2) < 3:
            return ["These results predate a suite's [claims]: `python -m benchmarks rescore DIR` records them."]
        return ["The suite names no claims ([claims] in its file); none is tested."]
    lines: list[str] = []
    compared = list(spec["baselines"])
    for family, members in spec.get("families", {}).items():
        best = strongest(results, task, n_train, [a for a in members if a != spec["ours"]])
        if best is None:
            lines.append(f"The suite ran no agent of the {family} family other than {spec['ours']} on this task.")
        elif best not in compared:
            lines.append(f"The strongest of the {family} family here (the lowest final gap): {best}.")
            compared.append(best)
    for baseline in compared:
        lines += _claims_against(results, task, n_train, spec["ours"], baseline, spec["threshold"])
    return lines


def strongest(results: dict[str, Any], task: str, n_train: int, agents: list[str]) -> str | None:
    """The agent of ``agents`` with the lowest mean final gap (the claims' gap) at ``n_train`` on
    ``task``, among those the suite ran there (None: it ran none)."""
    runs = runs_by_agent(results, task, n_train)
    gap_key = claim_gap(results["tasks"][task])
    finals = {a: _final(runs[a], n_train, gap_key).mean for a in agents if a in runs}
    finals = {a: g for a, g in finals.items() if math.isfinite(g)}
    return min(finals, key=finals.__getitem__) if finals else None


def family_table(results: dict[str, Any], task: str, n_train: int) -> list[str]:
    """The families of the suite's ``[claims]`` side by side on one task: per agent, the reward
    queries to the claims' gap threshold and the final gap, each family's strongest in bold (empty
    where the claims name no families)."""
    spec = suite_claims(results) or {}
    families = spec.get("families") or {}
    if not families:
        return []
    runs = runs_by_agent(results, task, n_train)
    task_row = results["tasks"][task]
    gap_key = claim_gap(task_row)
    gap_name = "reachable gap" if gap_key == "reachable_gap" else "gap"
    threshold = spec["threshold"]
    lines = [
        "",
        f"The algorithm families side by side ([claims] families; bold: each family's lowest final {gap_name}):",
        "",
        f"| family | agent | seeds | queries to {gap_name} {threshold} | final {gap_name} |",
        "|---|---|---|---|---|",
    ]
    placed = {a for members in families.values() for a in members}
    groups = [(f, m, True) for f, m in families.items()] + [("(none)", [a for a in runs if a not in placed], False)]
    for family, members, is_family in groups:
        ran = [a for a in members if a in runs]
        best = strongest(results, task, n_train, ran) if is_family else None
        for agent in sorted(ran, key=lambda a: _final(runs[a], n_train, gap_key).mean):
            rs = runs[agent]
            final = fmt(_gap_with_references(task_row, n_train, _final(rs, n_train, gap_key), gap_key))
            name = f"**{agent}**" if agent == best and len(ran) > 1 else agent
            lines.append(
                f"| {family} | {name} | {len(rs)} | {_to_gap(rs, threshold, 'reward_queries', gap_key)} | {final} |"
            )
    return lines


def _claims_against(
    results: dict[str, Any], task: str, n_train: int, ours: str, theirs: str, threshold: float
) -> list[str]:
    """Sample efficiency and robustness across N of agent ``ours`` against agent ``theirs``."""
    runs = runs_by_agent(results, task, n_train)
    gap_key = claim_gap(results["tasks"][task])
    gap_name = "reachable gap" if gap_key == "reachable_gap" else "normalized gap"
    if ours not in runs or theirs not in runs:
        return [f"The suite did not run both {ours} and {theirs} on this task; no claim is tested."]
    a, b = runs[ours], runs[theirs]
    budget = max(r["reward_queries"] for r in a + b)
    lines = []

    qa = over_seeds(_crossings(r, gap_key)[str(threshold)]["reward_queries"] for r in a)
    qb = over_seeds(_crossings(r, gap_key)[str(threshold)]["reward_queries"] for r in b)
    head = (
        f"**Sample efficiency, {ours} against {theirs}** (reward queries to a {gap_name} of {threshold}, i.e. "
        f"{1 - threshold:.0%} of the gap closed): "
    )
    if qa.k == len(a) and qb.k == len(b):
        diff, se, verdict = compare(qa, qb)
        if verdict.startswith("significant"):
            head += f"{ours} is {'more' if diff > 0 else 'less'} sample-efficient than {theirs} on this task"
        elif verdict == "no error bar":
            head += f"{ours} needed {'fewer' if diff > 0 else 'more'} queries than {theirs}, untested (no error bar)"
        else:
            head += f"no significant difference between {ours} and {theirs} on this task"
        head += (
            f": {fmt(qa, digits=0)} queries for {ours} against {fmt(qb, digits=0)} for {theirs} "
            f"(ratio {theirs} / {ours} {qb.mean / qa.mean:.2f}; {theirs} - {ours} {diff:,.0f} ± {se:,.0f}, "
            f"{verdict}; {len(a)} and {len(b)} seeds)."
        )
    elif qa.k or qb.k:
        fa, fb = qa.k / len(a), qb.k / len(b)
        counts = (
            f"{ours} reached it in {qa.k}/{len(a)} seeds (after {fmt(qa, digits=0)}), "
            f"{theirs} in {qb.k}/{len(b)} (after {fmt(qb, digits=0)}) within {budget:,} queries"
        )
        if fa == fb:
            head += f"inconclusive: {counts}."
        else:
            first = ours if fa > fb else theirs
            decisive = {fa, fb} == {0.0, 1.0}
            head += f"{first} reached it in more seeds: {counts}" + (
                f"; {first} is the more sample-efficient here." if decisive else "; too few seeds to conclude."
            )
    else:
        ga, gb = _final(a, n_train, gap_key), _final(b, n_train, gap_key)
        diff, se, verdict = compare(ga, gb)
        head += (
            f"neither reached it within {budget:,} queries, so this budget does not answer it; at the end "
            f"the gaps are {fmt(ga)} ({ours}) and {fmt(gb)} ({theirs}), {theirs} - {ours} {diff:.3f} ± {se:.3f} "
            f"({verdict})."
        )
    lines.append(head)

    grids = sorted({int(n) for r in a + b for n in r["final"]} - {n_train})
    if not grids:
        lines.append(
            f"**Robustness across N, {ours} against {theirs}**: the suite scored no grid other than the training grid."
        )
        return lines
    wa, wb = (_robust_stat(x, n_train, "worst_rise", gap_key) for x in (a, b))
    ma, mb = (_robust_stat(x, n_train, "off_mean", gap_key) for x in (a, b))
    w_diff, w_se, w_verdict = compare(wa, wb)
    m_diff, m_se, m_verdict = compare(ma, mb)
    if w_verdict.startswith("significant"):
        text = f"{ours} is {'more' if w_diff > 0 else 'less'} robust across N than {theirs} on this task"
    else:
        verdict = w_verdict.split(" at ")[0]
        text = f"{ours} is not measurably more robust across N than {theirs} on this task ({verdict})"
    lines.append(
        f"**Robustness across N, {ours} against {theirs}** (trained at N = {n_train}, scored at N = "
        f"{', '.join(map(str, grids))}, each against the references on that grid, by the {gap_name}): {text}. The "
        f"worst rise of the gap off the training grid over the gap at N = {n_train} is {fmt(wa)} for {ours} and "
        f"{fmt(wb)} for {theirs} ({theirs} - {ours} {w_diff:.3f} ± {w_se:.3f}, {w_verdict}). The mean gap off the "
        f"training grid is {fmt(ma)} against {fmt(mb)} ({theirs} - {ours} {m_diff:.3f} ± {m_se:.3f}, {m_verdict})."
    )
    return lines


def _references_line(task: dict[str, Any], n: int) -> str:
    """J*, J_best, J_oracle and J(pre) on grid n, as the report's sentence."""
    o = task["optimum"][str(n)]
    refs = References.from_row(o)
    ess = f" (effective sample size {o['ess']:,.0f} of {o['n']:,})" if o.get("ess") is not None else ""
    parts = [f"J* = {fmt(o['j_star'], o['j_star_se'])}{ess}"]
    if refs.j_star_0 is not None:
        law = refs.initial_law or {}
        continuous = ""
        if "j_star_0_continuous" in law:
            continuous = f"; {law['j_star_0_continuous']:.4f} in continuous time, kl_coef E log h(0, Y_0)"
        parts.append(
            f"J*_0 = {fmt(refs.j_star_0.mean, refs.j_star_0.se)} (the optimum for the env's initial law, which the "
            f"gap is against: nested Monte Carlo, {law['j_star_0_outer']:,} initial states x {law['j_star_0_inner']} "
            f"continuations, jackknife bias correction {-law['j_star_0_bias']:+.4f}{continuous})"
        )
    if refs.j_best is not None:
        parts.append(
            f"J_best = {refs.j_best.mean:.4f} (dynamic programme, numerical error {refs.j_best.se:.1e}; the same "
            f"recursion gives J(pre) = {refs.j_best_pretrained:.4f})"
        )
    if refs.j_oracle is not None:
        errors = refs.oracle or {}
        split = ""
        if "j_oracle_se_episodes" in errors:
            split = f"; s.e. {errors['j_oracle_se_episodes']:.3f} from the episodes"
        if errors.get("j_oracle_se_batches") is not None:
            split += f", {errors['j_oracle_se_batches']:.3f} from batch means"
        parts.append(
            f"J_oracle = {fmt(refs.j_oracle.mean, refs.j_oracle.se)} (the optimal control, {refs.j_oracle.n:,} "
            f"episodes{split})"
        )
    parts.append(f"J(pre) = {fmt(o['j_pretrained'], o['j_pretrained_se'])}")
    parts.append(f"headroom (J* - J(pre)) / sd = {headroom(o):.2f}")
    return ", ".join(parts)


def _references_source(task: dict[str, Any]) -> str:
    """Where a task's references come from, grid by grid: shipped with it (and the commands) or
    computed by this run."""
    rows = {int(n): References.from_row(o) for n, o in task["optimum"].items()}

    def grids(ns: list[int]) -> str:
        return "N = " + ", ".join(map(str, sorted(ns)))

    shipped = [n for n, r in rows.items() if r.command is not None]
    own = [n for n in rows if n not in shipped]
    parts = []
    if shipped:
        n_pre = rows[shipped[0]].optimum.j_star.n
        parts.append(f"J* and J(pre) shipped with the task at {grids(shipped)} (from {n_pre:,} pretrained samples)")
    if own:
        parts.append(f"J* and J(pre) from {task['optimum_n']:,} pretrained samples per grid at {grids(own)}")
    oracle = [n for n, r in rows.items() if r.j_oracle is not None]
    oracle_shipped = [n for n in oracle if rows[n].oracle_command is not None]
    if oracle_shipped:
        parts.append(f"J_oracle shipped at {grids(oracle_shipped)}")
    if own_oracle := [n for n in oracle if n not in oracle_shipped]:
        parts.append(f"J_oracle from this run's episodes of the optimal control at {grids(own_oracle)}")
    if initial := [n for n, r in rows.items() if r.j_star_0 is not None]:
        parts.append(f"J*_0 shipped at {grids(initial)}")
    extra = {(r.initial_law or {}).get("j_star_0_command") for r in rows.values()}
    commands = sorted({c for r in rows.values() for c in (r.command, r.oracle_command) if c is not None})
    commands += sorted(c for c in extra if c is not None and c not in commands)
    return "; ".join(parts) + ("".join(f"; `{c}`" for c in commands))


def headroom(optimum: dict[str, Any]) -> float:
    """``(J* - J(pre))`` in standard deviations of the pretrained sampler's per-sample objective."""
    sd = optimum["j_pretrained_se"] * math.sqrt(optimum["n"])
    return (optimum["j_star"] - optimum["j_pretrained"]) / sd if sd > 0 else math.nan


def gap_at(run: dict[str, Any], queries: float, gap_key: str) -> float:
    """The run's learning-curve gap at ``queries`` reward queries, linearly interpolated."""
    points = [(p["reward_queries"], p[gap_key]) for p in run["curve"] if p.get(gap_key) is not None]
    for (q0, g0), (q1, g1) in zip(points, points[1:], strict=False):
        if q0 <= queries <= q1:
            return g0 if q1 == q0 else g0 + (g1 - g0) * (queries - q0) / (q1 - q0)
    return math.nan


def detectable_difference(samples: list[list[float]], level: float = LEVEL, power: float = 0.8) -> float:
    """The smallest difference of two agents' means that a two-sided two-sample t-test at ``level``
    (as the claims use: two agents of k seeds each, 2 (k - 1) degrees of freedom, k the harmonic mean
    of the seed counts) detects with probability ``power``; the seed spread is pooled over agents
    (each list: one agent's seeds)."""
    groups = [g for g in samples if len(g) > 1]
    if not groups:
        return math.nan
    pooled = math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / sum(len(g) - 1 for g in groups))
    k = statistics.harmonic_mean([len(g) for g in groups])
    df = 2 * (k - 1)
    return (stats.t.ppf(1 - level / 2, df) + stats.t.ppf(power, df)) * pooled * math.sqrt(2 / k)


def saturation_verdict(quarter: float, final: float) -> tuple[float, str]:
    """The ratio of the best agent's gap at a quarter of its budget to its final gap, and what it says."""
    if not (math.isfinite(quarter) and math.isfinite(final)):
        return math.nan, "no learning curve reaches a quarter of the budget"
    if final <= 0:
        return math.inf, "the best agent ends at or past the reference, so the ratio is not informative"
    ratio = quarter / final
    if ratio >= 1.5:
        return ratio, "the task does not saturate early (ratio >= 1.5)"
    if final > 0.5:
        return ratio, "the best agent closes less than half the gap, so the budget is short, not the task saturated"
    return ratio, "the task saturates early (ratio < 1.5): the last three quarters of the budget tell little"


def discrimination(results: dict[str, Any], key: str, n_train: int) -> list[str]:
    """Whether the task can tell the agents apart: its headroom and the weights behind J*, whether
    the best agent's gap is still falling at a quarter of the budget (the task does not saturate
    early), the smallest difference in queries-to-gap and in final gap the seeds can detect, and
    whether the agents the claims name as stable ever fell measurably below the pretrained model on
    their learning curves."""
    task = results["tasks"][key]
    runs = runs_by_agent(results, key, n_train)
    gap_key = claim_gap(task)
    o = task["optimum"][str(n_train)]
    lines = [
        f"**Does this task discriminate?** Headroom {headroom(o):.2f} standard deviations of the pretrained "
        "per-sample objective"
        + (
            f"; J* rests on an effective {o['ess']:,.0f} of {o['n']:,} pretrained samples"
            if o.get("ess") is not None
            else ""
        )
        + "."
    ]
    finals = {a: _final(rs, n_train, gap_key) for a, rs in runs.items() if rs}
    finals = {a: f for a, f in finals.items() if math.isfinite(f.mean)}
    if finals:
        best = min(finals, key=lambda a: finals[a].mean)
        rs = runs[best]
        quarter = over_seeds(gap_at(r, r["reward_queries"] / 4, gap_key) for r in rs)
        final = finals[best]
        ratio, verdict = saturation_verdict(quarter.mean, final.mean)
        lines.append(
            f"Early saturation: the best agent here ({best}) has a {gap_key.replace('_', ' ')} of {fmt(quarter)} at a "
            f"quarter of its budget and {fmt(final)} at the end, ratio {ratio:.2f}: {verdict}."
        )
    threshold = (suite_claims(results) or {}).get("threshold", results["gap_thresholds"][0])
    samples = []
    for rs in runs.values():
        qs = [_crossings(r, gap_key)[str(threshold)]["reward_queries"] for r in rs]
        if rs and all(q is not None for q in qs):
            samples.append(qs)
    mdd = detectable_difference(samples)
    if math.isfinite(mdd):
        lines.append(
            f"Detectable difference: with these seeds, two agents' reward queries to a {gap_key.replace('_', ' ')} "
            f"of {threshold} must differ by about {mdd:,.0f} to be found significant at {LEVEL:.0%} with 80% power "
            f"(t-test, seed spread pooled over the {len(samples)} agents that reached it in every seed)."
        )
    else:
        lines.append(
            f"Detectable difference: no agent reached a {gap_key.replace('_', ' ')} of {threshold} in every one "
            "of two or more seeds; the queries-to-gap comparison has no error bar here."
        )
    finals_by_seed = [
        [r["final"][str(n_train)][gap_key] for r in rs if str(n_train) in r["final"]] for rs in runs.values()
    ]
    finals_by_seed = [f for f in finals_by_seed if len(f) > 1 and all(math.isfinite(x) for x in f)]
    per_agent = sorted(detectable_difference([f, f]) for f in finals_by_seed)
    if per_agent:
        lines.append(
            f"Detectable difference at the end: two agents' final {gap_key.replace('_', ' ')}s must differ by about "
            f"{statistics.median(per_agent):.3f} to be found significant at {LEVEL:.0%} with 80% power (the same "
            f"test at the median seed spread of the {len(per_agent)} agents; {per_agent[0]:.3f} to "
            f"{per_agent[-1]:.3f} over their spreads)."
        )
    pre = Estimate(o["j_pretrained"], o["j_pretrained_se"], o["n"])
    spec = suite_claims(results) or {}
    bound = spec.get("stability_se", 3.0)
    lines += below_pretrained(runs, n_train, pre, bound)
    for agent in spec.get("stable", []):
        rs = runs.get(agent, [])
        if not rs:
            continue
        worst = min((p["objective"] - pre.mean) / math.hypot(p["objective_se"], pre.se) for r in rs for p in r["curve"])
        holds = "holds" if worst >= -bound else "DOES NOT HOLD"
        lines.append(
            f"{agent} stability: its lowest learning-curve point over all seeds is {worst:.1f} standard errors "
            f"from J(pre) (the bound J >= J(pre) - {bound:g} s.e. at every point {holds}; the minimum over all "
            f"points and seeds, so a chance dip of {bound:g} s.e. is possible among many points)."
        )
    return lines


def below_pretrained(runs: dict[str, list[dict[str, Any]]], n_train: int, pre: Estimate, bound: float) -> list[str]:
    """For each agent whose final J is below J(pre) by more than ``bound`` s.e.: where its seed-mean
    learning curve is lowest and how its proxy and KL moved to get there, and where it ends: the
    measured shape of an unlearning run, which a reader needs before trusting its row."""
    lines = []
    for agent, rs in runs.items():
        j = _final(rs, n_train, "objective")
        z = (j.mean - pre.mean) / math.hypot(j.se, pre.se) if rs and math.isfinite(j.mean) else math.nan
        if not z < -bound:
            continue
        grid = [p["reward_queries"] for p in rs[0]["curve"]]
        line = (
            f"{agent} ends below J(pre): J {fmt(j)} against {fmt(pre.mean, pre.se)} ({z:.1f} s.e.) at its "
            f"{rs[0]['reward_queries']:,} queries"
        )
        if len(grid) > 1 and all([p["reward_queries"] for p in r["curve"]] == grid for r in rs):
            curve = {
                name: [statistics.fmean(r["curve"][i][name] for r in rs) for i in range(len(grid))]
                for name in ("objective", "proxy", "kl")
            }
            j_curve, kl = curve["objective"], curve["kl"]
            low = min(range(len(grid)), key=j_curve.__getitem__)
            if low == 0:
                line += (
                    f"; its seed-mean learning curve starts at its lowest, J {j_curve[0]:.3f} with KL {kl[0]:.2f} nats "
                    f"before any training, and ends at J {j_curve[-1]:.3f}"
                )
            else:
                moved = f"proxy {curve['proxy'][low] - curve['proxy'][0]:+.3f}, KL {kl[low] - kl[0]:+.2f} nats"
                shape = (
                    "still there at the end"
                    if low == len(grid) - 1
                    else f"climbing back to J {j_curve[-1]:.3f} at the end (KL {kl[-1]:.2f} nats)"
                )
                line += (
                    f"; its seed-mean learning curve is lowest at {grid[low]:,} queries (J {j_curve[low]:.3f}: "
                    f"{moved} from its first point), {shape}"
                )
        lines.append(line + ".")
    return lines


def _processes(results: dict[str, Any]) -> str:
    nproc = results.get("nproc", 1)
    if nproc == 1:
        return ""
    text = f" x {nproc} processes (data-parallel training, `--nproc {nproc}`)"
    skipped = results.get("skipped", [])
    if skipped:
        labels = ", ".join(sorted({s["agent"] for s in skipped}))
        text += f"; {len(skipped)} runs of {labels} left out (they train in one process only)"
    return text


def render(results: dict[str, Any]) -> str:
    """The markdown report of a results dict (the contents of results.json)."""
    seeds = results["seeds"]
    lines = [
        f"# Benchmark report: suite `{results['suite']}`",
        "",
        f"Generated from `results.json` by `python -m benchmarks report`. Command: `{results['command']}`; "
        f"device {results['device']}{_processes(results)}, torch {results['torch']}, {results['date']}; "
        f"{len(results['runs'])} runs, seeds {', '.join(map(str, seeds))}, "
        f"{results.get('seconds', math.nan):.0f} s in all."
        + "".join(
            f" Rescored on {r['date']} by `{r['command']}` against the references the tasks ship"
            f" ({', '.join(r['grids']) or 'no grid shipped'}): every gap and crossing follows from them."
            + (" The claims are those of the suite's file then." if r.get("claims") else "")
            for r in results.get("rescores", [])
        ),
        "",
        "Every figure is a mean over seeds ± its standard error: the larger of the spread over seeds "
        "(std / sqrt(seeds)) and the runs' own Monte Carlo errors (sqrt(sum se^2) / seeds); a gap's error "
        "also carries the error of its references on its grid (J* or J_best or J_oracle, and J(pre)), once "
        "(every run shares them), and comparisons of two agents on the same grids leave it out. "
        f'"Significant" is a two-sided test at {LEVEL:.0%}: '
        "Welch's t where the spread over seeds sets an error, normal where Monte Carlo errors do. Gaps are "
        "normalized and estimated against references on the grid the policy is scored at: 1 is the "
        "pretrained model, 0 the reference. The gap (J*_0, or J*) is (J*_0 - J) / (J*_0 - J(pre)), J*_0 the optimum "
        "over the path measures with the env's initial law (Y_0 ~ N(0, I) is drawn by the env, no policy "
        "moves it; J*_0 <= J*, the optimum over all path measures, and equal where the chain forgets its "
        "start), or J* itself on grids where J*_0 is not computed; no policy of the env reaches it on a coarse "
        "grid (its actions shift the mean of each Gaussian step, never its variance); the reachable gap is "
        "(J_ref - J) / (J_ref - J(pre)) with J_ref = J_best, the best policy of the env's own action class "
        "on that grid (a dynamic programme, 2-D tasks), else J_oracle, the continuous-time optimal control "
        "applied on the grid (Gaussian-mixture tasks). J_oracle <= J_best <= J*. Where a task has a reachable "
        "reference, the claims and the queries-to-gap columns use the reachable gap. Reward queries and "
        "seconds to a gap are interpolated on the learning curve (evaluations of the deterministic policy; "
        "their time is excluded).",
    ]
    for key, task in results["tasks"].items():
        kwargs = ", ".join(f"{k}={v}" for k, v in task["env_kwargs"].items())
        lines += ["", f"## `{key}`: {task['env']}" + (f" ({kwargs})" if kwargs else ""), ""]
        lines.append(
            f"{task['num_envs']} envs, {task['reward_queries']:,} reward queries per run (unless the table says "
            f"otherwise); learning curves "
            f"from {task['curve_n']:,} samples per point; final scores from {task['eval_n']:,} samples per "
            "grid; " + _references_source(task) + "."
        )
        for n_train in task["n_train"]:
            lines += _task_tables(results, key, task, n_train)
    lines += _twin_tables(results)
    if results.get("throughput"):
        lines += ["", "## Environment throughput: batched env vs a hand-written loop of the same model", ""]
        lines += [
            "Full Euler-Maruyama episodes from the same seed, zero actions, timed alternately in one "
            "process; particle-steps/s (median over repeats).",
            "",
            "| task | device | batch | steps | env | raw loop | env / raw | max abs diff | host syncs / episode |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in results["throughput"]:
            syncs = m.get("host_syncs_per_episode")
            lines.append(
                f"| {m['env_id']} | {m['device']} | {m['batch']:,} | {m['steps']} | {m['env_rate']:.3g} | "
                f"{m['raw_rate']:.3g} | {m['ratio']:.2f} | {m['max_diff']:.1e} | {'–' if syncs is None else syncs} |"
            )
    plots = sorted(p for p in results.get("plots", []))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


TWIN_NEUTRAL = ("model", "integrator", "noise_level", "shift")
"""Env keywords in which two tasks on the same data and reward may differ and still be twins: the base
model's family (digits' ``model="flow"``) and the sampler."""


def twin_groups(results: dict[str, Any]) -> list[list[str]]:
    """Tasks of the results on the same data and reward: tasks whose env ids belong to one task package
    (the VP mixture and its flow-matching twin ship from one folder) with the same env keywords but
    for the sampler's (:data:`TWIN_NEUTRAL`) and a training grid in common; groups of two or more."""
    groups: dict[str, list[str]] = {}
    for key, task in results["tasks"].items():
        kwargs = {k: v for k, v in task["env_kwargs"].items() if k not in TWIN_NEUTRAL}
        signature = repr((get_task(task["env"]).package, sorted(kwargs.items()), sorted(task["n_train"])))
        groups.setdefault(signature, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _twin_tables(results: dict[str, Any]) -> list[str]:
    """Per agent, its final objective and gap on each of a group of twin tasks (:func:`twin_groups`):
    a VP model against a flow-matching one (and one noise level against another) on the same data and
    reward, at each common training grid."""
    lines: list[str] = []
    for keys in twin_groups(results):
        tasks = [results["tasks"][k] for k in keys]
        for n_train in sorted(set.intersection(*(set(t["n_train"]) for t in tasks))):
            by_task = {k: runs_by_agent(results, k, n_train) for k in keys}
            agents = [a for a in by_task[keys[0]] if all(a in by_task[k] for k in keys)]
            if not agents:
                continue
            names = [
                f"`{k}` ({t['env'].removeprefix('DiffusionSDE-')}, {_sampler(t)})"
                for k, t in zip(keys, tasks, strict=True)
            ]
            lines += [
                "",
                f"## Same data and reward, another base model or sampler: {', '.join(f'`{k}`' for k in keys)}",
                "",
                f"Trained and scored at N = {n_train}: each agent's objective J and gap (against J*_0, else J*) "
                "on each task, with the task's J(pre) and J*_0 (else J*) for scale. The tasks share the data law, "
                "proxy and gold; their pretrained samplers differ (a VP score model against a flow-matching "
                "velocity model, or the flow SDE's noise level), and so do their references.",
                "",
                "| agent | " + " | ".join(f"J on {n} | gap on {n}" for n in names) + " |",
                "|" + "---|" * (1 + 2 * len(keys)),
            ]
            for agent in agents:
                cells = []
                for k, t in zip(keys, tasks, strict=True):
                    rs = by_task[k][agent]
                    cells += [
                        fmt(_final(rs, n_train, "objective")),
                        fmt(_gap_with_references(t, n_train, _final(rs, n_train, "gap"))),
                    ]
                lines.append(f"| {agent} | " + " | ".join(cells) + " |")
            for label, get in (
                ("J(pre)", lambda r: r.optimum.j_pretrained),
                ("J*_0 (else J*)", lambda r: r.ceiling[0]),
            ):
                cells = []
                for t in tasks:
                    ref = get(References.from_row(t["optimum"][str(n_train)]))
                    cells += [fmt(ref.mean, ref.se), ""]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _sampler(task: dict[str, Any]) -> str:
    """A task's sampler as the twin tables name it: its model family where the task takes one, its
    integrator and, for the flow SDE, its noise level."""
    kwargs = task["env_kwargs"]
    defaults = get_task(task["env"]).defaults_for(kwargs)
    integrator = kwargs.get("integrator", defaults.get("integrator", "euler_maruyama"))
    level = kwargs.get("noise_level", defaults.get("noise_level"))
    if level is None and integrator in FLOW_INTEGRATORS:
        level = DEFAULT_NOISE_LEVEL  # the env's own
    sampler = integrator if level is None else f"{integrator}, a = {level:.3g}"
    return sampler if "model" not in kwargs else f"{kwargs['model']} model, {sampler}"


def _task_tables(results: dict[str, Any], key: str, task: dict[str, Any], n_train: int) -> list[str]:
    runs = runs_by_agent(results, key, n_train)
    gap_key = claim_gap(task)
    gap_name = "reachable gap" if gap_key == "reachable_gap" else "gap"
    reachable = gap_key == "reachable_gap"
    pre = task["pretrained"].get(str(n_train), {})
    image = pre.get("image")
    oracle = (task.get("oracle") or {}).get(str(n_train))
    lines = [
        "",
        f"### Trained and scored at N = {n_train}",
        "",
        _references_line(task, n_train)
        + (f", pretrained gold reward {fmt(pre['gold'], pre['gold_se'])}" if "gold" in pre else "")
        + (
            f", pretrained Frechet distance {image['frechet']:.2f}, per-class diversity {image['diversity']:.2f}"
            if image
            else ""
        )
        + ".",
        "",
    ]
    thresholds = results["gap_thresholds"]
    has_gold = any("gold" in r["final"][str(n_train)] for rs in runs.values() for r in rs if str(n_train) in r["final"])
    has_image = any(r.get("image") for rs in runs.values() for r in rs)
    has_gpu = any(r.get("peak_gpu_mib") is not None for rs in runs.values() for r in rs)
    ceiling = "J*_0" if References.from_row(task["optimum"][str(n_train)]).j_star_0 is not None else "J*"
    head = ["agent", "seeds", "queries", f"gap ({ceiling})"] + (["reachable gap"] if reachable else []) + ["J", "proxy"]
    head += (["gold"] if has_gold else []) + ["KL"]
    for g in thresholds:
        head += [f"queries to {gap_name} {g}", f"s to {gap_name} {g}"]
    head += ["train s"] + (["Frechet", "diversity"] if has_image else []) + (["peak GPU MiB"] if has_gpu else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for agent, rs in runs.items():
        row = [agent, str(len(rs)), f"{statistics.fmean(r['reward_queries'] for r in rs):,.0f}"]
        for gk in ("gap", "reachable_gap") if reachable else ("gap",):
            row.append(fmt(_gap_with_references(task, n_train, _final(rs, n_train, gk), gk)))
        row += [fmt(_final(rs, n_train, "objective")), fmt(_final(rs, n_train, "proxy"))]
        if has_gold:
            row.append(fmt(_final(rs, n_train, "gold")))
        row.append(fmt(_final(rs, n_train, "kl")))
        for g in thresholds:
            row += [_to_gap(rs, g, "reward_queries", gap_key), _to_gap(rs, g, "seconds", gap_key)]
        row.append(fmt(over_seeds(r["train_seconds"] for r in rs), digits=0))
        if has_image:
            row.append(fmt(over_seeds((r["image"] or {}).get("frechet") for r in rs), digits=2))
            row.append(fmt(over_seeds((r["image"] or {}).get("diversity") for r in rs), digits=2))
        if has_gpu:
            row.append(fmt(over_seeds(r["peak_gpu_mib"] for r in rs), digits=0))
        lines.append("| " + " | ".join(row) + " |")
    if oracle:
        row = ["optimal control", "–", "0"]
        for gk in ("gap", "reachable_gap") if reachable else ("gap",):
            row.append(fmt(oracle[gk], oracle[f"{gk}_se"]))
        row += [fmt(oracle["objective"], oracle["objective_se"]), fmt(oracle["proxy"], oracle["proxy_se"])]
        if has_gold:
            row.append(fmt(oracle["gold"], oracle["gold_se"]) if "gold" in oracle else "–")
        row.append(fmt(oracle["kl"], oracle["kl_se"]))
        row += ["–"] * (len(head) - len(row))
        lines.append("| " + " | ".join(row) + " |")
        lines += [
            "",
            "The optimal control is the continuous-time optimum (Doob's h-transform, exact for the mixture up "
            "to quadrature) applied on the grid: a reference that reads the base model and the reward as white "
            "boxes, not an agent; it queries no reward.",
        ]

    grids = sorted({int(n) for rs in runs.values() for r in rs for n in r["final"]})
    if len(grids) > 1:
        trained = sorted(task["n_train"])
        lines += [
            "",
            f"Discretization robustness: the {gap_name} of the policies trained at N = {n_train}, scored at each N "
            f"(the suite's grids for this task), the mean over the other grids, the worst rise over the gap at "
            f"N = {n_train}, and the mean over the other grids of the gap minus the optimal control's there (< 0: "
            f"better than the optimal control) and minus that of the same agent trained at that N (> 0: what "
            f"transferring from N = {n_train} costs; trained here at N = {', '.join(map(str, trained))}). The last "
            "four columns leave out the references' error, as in the claims.",
            "",
            "| agent | "
            + " | ".join(f"N = {n}" for n in grids)
            + f" | mean over N ≠ {n_train} | worst rise over N = {n_train} | vs optimal control | vs trained at N |",
            "|" + "---|" * (len(grids) + 5),
        ]
        for agent, rs in runs.items():
            cells = [fmt(_gap_with_references(task, n, _final(rs, n, gap_key), gap_key)) for n in grids]
            for stat in ("off_mean", "worst_rise", "vs_oracle", "vs_native"):
                cells.append(fmt(_robust_stat(rs, n_train, stat, gap_key, results)))
            lines.append(f"| {agent} | " + " | ".join(cells) + " |")
        if task.get("oracle"):
            cells = [
                fmt(task["oracle"][str(n)][gap_key], task["oracle"][str(n)][f"{gap_key}_se"])
                if str(n) in task["oracle"]
                else "–"
                for n in grids
            ]
            lines.append("| optimal control | " + " | ".join(cells) + " | | | | |")
        by_grid = [References.from_row(task["optimum"][str(n)]) for n in grids]
        references = [
            ("J*", lambda r: r.optimum.j_star),
            ("J*_0", lambda r: r.j_star_0),
            ("J_best", lambda r: r.j_best),
        ]
        references += [("J_oracle", lambda r: r.j_oracle), ("J(pre)", lambda r: r.optimum.j_pretrained)]
        for name, get in references:
            if all(get(r) is not None for r in by_grid):
                cells = [fmt(get(r).mean, get(r).se) for r in by_grid]
                lines.append(f"| {name} | " + " | ".join(cells) + " | | | | |")
    lines += family_table(results, key, n_train)
    lines += ["", "**The suite's claims on this task.**", ""] + [f"- {c}" for c in claims(results, key, n_train)]
    lines += [""] + [f"- {c}" if i else c for i, c in enumerate(discrimination(results, key, n_train))]
    return lines


def write_report(out: str | Path) -> Path:
    """Render ``out/results.json`` into ``out/report.md``."""
    out = Path(out)
    results = read_results(out)
    path = out / "report.md"
    path.write_text(render(results))
    return path

"""PNG plots of a suite's ``results.json`` (and the samples it points to): learning curves with seed
bands, proxy vs gold reward, the reward-KL front, and sample grids before and after training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.report import runs_by_agent  # noqa: E402
from benchmarks.results_file import read_results  # noqa: E402


def _groups(results: dict[str, Any]) -> list[tuple[str, int]]:
    return [(key, n) for key, task in results["tasks"].items() for n in task["n_train"]]


def _colors(agents: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {a: cmap(i % 10) for i, a in enumerate(agents)}


def _curve_mean(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """``key`` along the learning curves of several seeds, averaged point by point."""
    length = min(len(r["curve"]) for r in runs)
    return np.mean([[p[key] for p in r["curve"][:length]] for r in runs], 0)


def _save(fig: Any, path: Path, dpi: int = 110) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _axes(n: int, width: float = 5.0, height: float = 4.0) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Objective J vs reward queries: mean over seeds, shaded between the lowest and highest seed."""
    groups = _groups(results)
    fig, axes = _axes(len(groups))
    for ax, (key, n) in zip(axes, groups, strict=True):
        runs = runs_by_agent(results, key, n)
        colors = _colors(list(runs))
        opt = results["tasks"][key]["optimum"][str(n)]
        j_star, j_pre = opt["j_star"], opt["j_pretrained"]
        span = j_star - j_pre
        low, high = j_pre - 1.0 * span, j_star + 0.25 * span
        below = []
        for agent, rs in runs.items():
            grid = np.unique(np.concatenate([[p["reward_queries"] for p in r["curve"]] for r in rs]))
            ys = np.stack(
                [
                    np.interp(grid, [p["reward_queries"] for p in r["curve"]], [p["objective"] for p in r["curve"]])
                    for r in rs
                ]
            )
            ax.plot(grid, ys.mean(0), color=colors[agent], label=agent)
            ax.fill_between(grid, ys.min(0), ys.max(0), color=colors[agent], alpha=0.2)
            if ys.mean(0)[-1] < low:
                below.append(f"{agent} (final J {ys.mean(0)[-1]:.3g})")
        ax.axhline(j_star, color="k", ls="--", lw=1, label="J*")
        if "j_star_0" in opt:
            ax.axhline(opt["j_star_0"], color="0.2", ls=(0, (5, 1, 1, 1)), lw=1, label="J*_0 (initial law fixed)")
        if "j_best" in opt:
            ax.axhline(opt["j_best"], color="0.35", ls="-.", lw=1, label="J_best (best policy on the grid)")
        if "j_oracle" in opt:
            ax.axhline(opt["j_oracle"], color="0.55", ls=(0, (1, 2)), lw=1.2, label="J_oracle (optimal control)")
        ax.axhline(j_pre, color="k", ls=":", lw=1, label="J(pretrained)")
        ax.set_ylim(low, high)
        ax.set_xlabel("reward queries")
        ax.set_ylabel("objective J")
        ax.set_title(f"{key}, N = {n} ({len(results['seeds'])} seeds: mean, min-max band)", fontsize=9)
        if below:
            ax.text(0.02, 0.02, "below the axis: " + ", ".join(below), transform=ax.transAxes, fontsize=7)
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_proxy_vs_gold(results: dict[str, Any], path: Path) -> bool:
    """Gold vs proxy reward along each agent's learning curve (mean over seeds): over-optimisation
    of the proxy shows as a curve bending away from the diagonal."""
    groups = [
        (key, n)
        for key, n in _groups(results)
        if any("gold" in r["curve"][0] for rs in runs_by_agent(results, key, n).values() for r in rs)
    ]
    if not groups:
        return False
    fig, axes = _axes(len(groups))
    for ax, (key, n) in zip(axes, groups, strict=True):
        runs = runs_by_agent(results, key, n)
        colors = _colors(list(runs))
        pre = results["tasks"][key]["pretrained"][str(n)]
        for agent, rs in runs.items():
            proxy, gold = _curve_mean(rs, "proxy"), _curve_mean(rs, "gold")
            ax.plot(proxy, gold, "o-", ms=3, color=colors[agent], label=agent)
            ax.plot(proxy[-1:], gold[-1:], "s", ms=7, color=colors[agent])
        ax.plot([pre["proxy"]], [pre["gold"]], "k*", ms=10, label="pretrained")
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--", label="gold = proxy")
        ax.set_xlabel("proxy reward (trained on)")
        ax.set_ylabel("gold reward (held out)")
        ax.set_title(f"{key}, N = {n}: along training (squares: end)", fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, path)
    return True


def kl_front(rewards: torch.Tensor, kl_coefs: np.ndarray, min_ess: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """The reward-KL front of the tilted terminal laws ``p_pre exp(r / c)``, one point per ``c``, by
    reweighting pretrained samples: ``E_c[r]`` and ``KL = E_c[r] / c - log E_pre exp(r / c)``.
    Points whose effective sample size is below ``min_ess`` are dropped."""
    r = rewards.double().flatten()
    xs, ys = [], []
    for c in kl_coefs:
        z = r / c
        logw = z - torch.logsumexp(z, 0)
        w = logw.exp()
        if 1.0 / (w * w).sum().item() < min_ess:
            continue
        mean_r = (w * r).sum().item()
        log_mean = (torch.logsumexp(z, 0) - math.log(len(r))).item()
        xs.append(mean_r / c - log_mean)
        ys.append(mean_r)
    return np.asarray(xs), np.asarray(ys)


def plot_reward_kl(results: dict[str, Any], out: Path, path: Path) -> None:
    """Proxy reward vs KL to the pretrained model: each agent's curve (mean over seeds) against the
    front of the KL-optimal tilted laws, which no policy can pass (its KL is the terminal-law KL, a
    lower bound on the path KL the env charges)."""
    groups = _groups(results)
    fig, axes = _axes(len(groups))
    for ax, (key, n) in zip(axes, groups, strict=True):
        runs = runs_by_agent(results, key, n)
        colors = _colors(list(runs))
        pre = results["tasks"][key]["pretrained"][str(n)]
        kl_coef = results["tasks"][key]["optimum"][str(n)]["kl_coef"]
        kl, reward = np.zeros(0), np.zeros(0)  # no front where the pretrained samples are not in out
        if (out / pre["samples"]).is_file():
            samples = torch.load(out / pre["samples"], weights_only=True)
            kl, reward = kl_front(samples["terminal_reward"], kl_coef * np.logspace(-1.5, 1.5, 60))
        max_kl = 0.0
        for agent, rs in runs.items():
            kls, proxy = _curve_mean(rs, "kl"), _curve_mean(rs, "proxy")
            ax.plot(kls, proxy, "o-", ms=3, color=colors[agent], label=agent)
            max_kl = max(max_kl, float(np.max(kls)))
        ax.plot(kl, reward, "k-", lw=1.5, label="optimal front (tilted laws)")
        ax.plot([0], [pre["proxy"]], "k*", ms=10, label="pretrained")
        if len(kl):
            ax.set_xlim(-0.02 * max(kl.max(), 1e-3), 1.1 * max(kl.max(), min(max_kl, 3 * kl.max())))
        ax.set_xlabel("KL to the pretrained model (nats)")
        ax.set_ylabel("proxy reward")
        ax.set_title(f"{key}, N = {n}", fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, path)


def _tile(x: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """Images (n, 1, h, w) laid out one row per class."""
    rows = []
    classes = np.unique(cond)
    per = min(int((cond == c).sum()) for c in classes)
    for c in classes:
        imgs = x[cond == c][:per, 0]
        rows.append(np.concatenate([np.pad(i, 1, constant_values=-1) for i in imgs], axis=1))
    return np.concatenate(rows, axis=0)


def _sample_panels(results: dict[str, Any], key: str, n: int) -> list[tuple[str, str]]:
    """``(title, samples file)`` of the pretrained model and of each agent's first seed at grid n."""
    runs = runs_by_agent(results, key, n)
    first = {agent: min(rs, key=lambda r: r["seed"]) for agent, rs in runs.items()}
    panels = [("pretrained", results["tasks"][key]["pretrained"][str(n)]["samples"])]
    return panels + [(f"{agent} (seed {r['seed']})", r["samples"]) for agent, r in first.items() if r.get("samples")]


def _samples_saved(results: dict[str, Any], out: Path, key: str, n: int) -> bool:
    """Whether every sample file the picture of task ``key`` at grid n is drawn from is in ``out``."""
    return all((out / rel).is_file() for _, rel in _sample_panels(results, key, n))


def plot_samples(results: dict[str, Any], out: Path, key: str, n: int, path: Path) -> None:
    """The pretrained model's samples beside each agent's (first seed), at the training grid; panels
    whose samples are not in ``out`` are left out."""
    panels = [(title, rel) for title, rel in _sample_panels(results, key, n) if (out / rel).is_file()]
    if not panels:
        return
    fig, axes = _axes(len(panels), 3.2, 3.6)
    for ax, (title, rel) in zip(axes, panels, strict=True):
        s = torch.load(out / rel, weights_only=True)
        x = s["x"].numpy()
        if "cond" in s:
            ax.imshow(_tile(x.clip(-1, 1), s["cond"].numpy()), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.axis("off")
        else:
            ax.scatter(x[:2048, 0], x[:2048, 1], s=1, alpha=0.4)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{key}, N = {n}: samples before (pretrained) and after training", fontsize=10)
    _save(fig, path, dpi=90)


def write_plots(out: str | Path) -> list[str]:
    """Every plot of ``out/results.json`` into ``out/plots/``; returns their paths relative to ``out``."""
    out = Path(out)
    results = read_results(out)
    if not results["runs"]:
        return []
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    written = [plots / "curves.png", plots / "reward_kl.png"]
    plot_curves(results, written[0])
    plot_reward_kl(results, out, written[1])
    if plot_proxy_vs_gold(results, plots / "proxy_vs_gold.png"):
        written.append(plots / "proxy_vs_gold.png")
    for key, n in _groups(results):
        if any(r["task"] == key and r["n_train"] == n for r in results["runs"]):
            path = plots / f"samples_{key}_N{n}.png"
            if _samples_saved(results, out, key, n) or not path.exists():
                plot_samples(results, out, key, n, path)
            # else: the runs' samples are gone (results.json is all a clean checkout has) and the picture
            # drawn from them is kept
            if path.exists():
                written.append(path)
    return [str(p.relative_to(out)) for p in written]

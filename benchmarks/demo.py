"""Roll out the pretrained samplers of ``DiffusionSDE-v0`` and ``DiffusionSDE-Digits-v0``.

    python -m benchmarks.demo [--samples 16384] [--n-steps 100] [--out demo]

For the 2-D task it prints the objective, proxy and gold terminal reward and KL of the pretrained
sampler (zero action) with standard errors and the optimum J* (Monte Carlo on the same grid, and
quadrature in the continuous-time limit), and writes ``<out>/mixture2d.png``: the samples over the
data density, the proxy reward, and the optimal (reward-tilted) law. For the digits task it prints
the same for 10 samples per class and writes ``<out>/digits.png``, one row per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffusion_gym.evaluation import rollout  # noqa: E402
from diffusion_gym.optimum import optimal_objective_quadrature, soft_value  # noqa: E402
from diffusion_gym.tasks.mixture2d.env import make_vector_env  # noqa: E402
from diffusion_gym.validation import NonNegativeFloat, PositiveInt, Seed, argument


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=argument(PositiveInt), default=16_384)
    parser.add_argument("--n-steps", type=argument(PositiveInt), default=100)
    parser.add_argument("--integrator", default="euler_maruyama", choices=["euler_maruyama", "ddpm"])
    parser.add_argument("--kl-coef", type=argument(NonNegativeFloat), default=1.0)
    parser.add_argument("--seed", type=argument(Seed), default=0)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    env = make_vector_env(
        min(args.samples, 16_384),
        n_steps=args.n_steps,
        integrator=args.integrator,
        kl_coef=args.kl_coef,
        device=args.device,
    )
    pre = rollout(env, None, args.samples, args.seed)
    summary = pre.summary()
    j_star = soft_value(pre.terminal_reward, env.kl_coef)
    s_end = env.T - float(env.discretization.t[-1])
    for model in (env.score_model, env.reward_model, env.gold_model):  # quadrature and plots run on the CPU
        model.cpu()
    j_star_quad, j_pre_quad = optimal_objective_quadrature(env.score_model, env.reward_model, env.kl_coef, s_end)

    print(
        f"DiffusionSDE-v0, pretrained sampler (zero action): {args.samples} samples, "
        f"N={env.n_steps}, {args.integrator}, kl_coef={env.kl_coef}"
    )
    for key, est in summary.items():
        print(f"  {key:16s} {est}")
    print(f"  J* (Monte Carlo, same grid)      {j_star}")
    print(f"  J* (quadrature, continuous time) {j_star_quad:.4f}   J(pre) by quadrature {j_pre_quad:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mixture2d.png"
    _plot(env, pre.x.cpu(), path)
    print(f"wrote {path}")
    digits_summary = _digits(args.out / "digits.png", args.seed, args.device)
    return {
        "objective": summary["objective"].mean,
        "j_star": j_star.mean,
        "j_star_quadrature": j_star_quad,
        "digits_accuracy": digits_summary["accuracy"],
    }


@torch.no_grad()
def _digits(path: Path, seed: int, device: str = "cpu", per_class: int = 10) -> dict[str, float]:
    """Sample ``per_class`` digits of each class with the pretrained digits sampler; plot one row per class."""
    from diffusion_gym.metrics import class_accuracy
    from diffusion_gym.tasks.digits.classifier import load_classifier
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    env = make_digits(10 * per_class, device=device)
    cond = torch.arange(10).repeat_interleave(per_class)
    obs, _ = env.reset(seed=seed, options={"cond": cond})
    zero = torch.zeros(env.num_envs, *env.event_shape, device=env.device)
    for _ in range(env.n_steps):
        obs, _, _, _, info = env.step(zero)
    images = obs["x"].clamp(-1, 1).cpu()
    accuracy = class_accuracy(load_classifier(), images, cond)
    print(f"DiffusionSDE-Digits-v0, pretrained sampler: {per_class} per class, N={env.n_steps}, {env.integrator}")
    for key in ("terminal_reward", "gold_reward"):
        values = info[key]
        print(f"  {key:16s} {values.mean().item():.4f} ± {values.std().item() / len(values) ** 0.5:.4f}")
    print(f"  classifier accuracy on the conditioned class: {accuracy:.3f}")

    fig, axes = plt.subplots(10, per_class, figsize=(per_class * 0.8, 8.4), constrained_layout=True)
    for ax, img in zip(axes.flat, images[:, 0], strict=True):
        ax.imshow(img.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_axis_off()
    fig.suptitle("pretrained digits sampler, one row per class")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return {"accuracy": accuracy}


@torch.no_grad()
def _plot(env, samples: torch.Tensor, path: Path, half_width: float = 5.0, n: int = 300) -> None:
    u = torch.linspace(-half_width, half_width, n)
    xx, yy = torch.meshgrid(u, u, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    s_end = torch.tensor(env.T - float(env.discretization.t[-1]))
    log_p = env.score_model.log_prob(s_end, grid).reshape(n, n)
    reward = env.reward_model(grid).reshape(n, n)
    log_tilted = log_p + reward / env.kl_coef
    gold = env.gold_model(grid).reshape(n, n) if env.gold_model is not None else None
    tilted = torch.exp(log_tilted - torch.logsumexp(log_tilted.flatten(), 0))
    pts = samples[:4000].numpy()

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), constrained_layout=True)
    axes[0].contourf(xx, yy, log_p.exp(), levels=30, cmap="Blues")
    axes[0].scatter(pts[:, 0], pts[:, 1], s=1, c="k", alpha=0.3)
    axes[0].set_title("pretrained samples (black) over the data density")
    im = axes[1].contourf(xx, yy, reward, levels=30, cmap="viridis")
    fig.colorbar(im, ax=axes[1], label="proxy reward r")
    if gold is not None:
        axes[1].contour(xx, yy, gold, levels=[0.5, 1.5, 2.5, 3.5], colors="w", linewidths=0.8)
    axes[1].set_title("learned proxy reward (white: gold utility contours)")
    axes[2].contourf(xx, yy, tilted, levels=30, cmap="Reds")
    axes[2].set_title(f"optimal terminal law ∝ p·exp(r/{env.kl_coef:g})")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlim(-half_width, half_width)
        ax.set_ylim(-half_width, half_width)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Throughput of the batched env against a hand-written sampling loop of the same model, in one process.

    python -m benchmarks.env_throughput --device cpu --batch 4096 --steps 100

Both run full Euler-Maruyama episodes of ``DiffusionSDE-v0``'s mixture score from the same seed:
the env with zero actions (validation, clipping, KL, rewards, observations and infos included),
the raw loop with nothing but the score and the update, its per-step constants precomputed. The
two are timed alternately; the script prints particle-steps/s of each (median over repeats), their
ratio, and the largest difference between their final samples (0: the same computation).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from diffusion_gym.envs.mixture2d import make_vector_env
from diffusion_gym.envs.vector import DiffusionSDEVectorEnv


def raw_loop(env: DiffusionSDEVectorEnv, seed: int) -> torch.Tensor:
    """Euler-Maruyama sampling of the env's base model, written out by hand from its schedule.

    ``Y <- Y + (beta Y / 2 + beta score) dt + sqrt(beta dt) xi`` with ``beta = beta(T - t_k)``.
    """
    model, schedule = env.score_model, env.schedule
    t = env.grid
    s = schedule.T - t[:-1]
    beta_dt = (schedule.beta(s) * (t[1:] - t[:-1])).tolist()
    s_dev = s.to(env.device, env.dtype)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    shape = (env.num_envs, *env.event_shape)
    with torch.no_grad():
        x = torch.randn(shape, generator=gen, device=env.device, dtype=env.dtype)
        for k, bdt in enumerate(beta_dt):
            noise = torch.randn(shape, generator=gen, device=env.device, dtype=env.dtype)
            x = (1 + 0.5 * bdt) * x + bdt * model.score(s_dev[k], x) + bdt**0.5 * noise
    return x


def env_loop(env: DiffusionSDEVectorEnv, seed: int) -> torch.Tensor:
    """One full episode of the batched env with zero actions."""
    zero = torch.zeros((env.num_envs, *env.event_shape), device=env.device, dtype=env.dtype)
    obs, _ = env.reset(seed=seed)
    for _ in range(env.n_steps):
        obs, *_ = env.step(zero)
    return obs["x"]


def _time(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    env = make_vector_env(args.batch, n_steps=args.steps, integrator="euler_maruyama", device=device, dtype=args.dtype)
    env_loop(env, 0), raw_loop(env, 0)  # warm-up
    env_times, raw_times = [], []
    max_diff = 0.0
    for r in tqdm(range(args.repeats), desc="episodes (env, raw)"):
        t_env, x_env = _time(lambda r=r: env_loop(env, r), device)
        t_raw, x_raw = _time(lambda r=r: raw_loop(env, r), device)
        env_times.append(t_env)
        raw_times.append(t_raw)
        max_diff = max(max_diff, (x_env - x_raw).abs().max().item())

    work = args.batch * args.steps
    env_rate, raw_rate = work / statistics.median(env_times), work / statistics.median(raw_times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}, torch {torch.__version__}, {args.dtype}")
    print(f"batch {args.batch}, steps {args.steps}, median of {args.repeats} episodes each")
    print(f"batched env : {env_rate:.3e} particle-steps/s")
    print(f"raw loop    : {raw_rate:.3e} particle-steps/s")
    print(f"ratio env/raw: {env_rate / raw_rate:.3f}")
    print(f"max |x_env - x_raw| over final samples: {max_diff:.2e}")
    return {"env_rate": env_rate, "raw_rate": raw_rate, "ratio": env_rate / raw_rate, "max_diff": max_diff}


if __name__ == "__main__":
    main()

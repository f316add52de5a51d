"""Throughput of the batched env against a hand-written sampling loop of the same model, in one process.

    python -m benchmarks.env_throughput --device cpu                  # the task's sizes: 4,096 x 100, 65,536 x 20
    python -m benchmarks.env_throughput --task digits --device cpu --batch 256 --steps 20
    python -m benchmarks.env_throughput --device cuda --compile       # the env step under torch.compile

Both run full Euler-Maruyama episodes of the task's base model from the same seed (``mixture2d``:
``DiffusionSDE-v0``'s mixture score; ``digits``: the digits UNet with guidance, every class; a flow
task, e.g. ``flow_mixture``: its velocity on Flow-GRPO's SDE) and
end with the same queries: the terminal reward and the gold utility of the final samples. The env
steps with zero actions (validation, clipping, KL, rewards, observations and infos included); the
raw loop has nothing but the score, the update with its per-step constants precomputed, and those
two queries. (Without the queries the raw loop would leave out work any rollout for RL does once per
episode: at 65,536 x 20 on 2 CPU cores the 2-D task's proxy and gold take ~15% of an episode.) The
two are timed alternately; the script prints particle-steps/s of each (median over repeats), their
ratio, the ratio of sampling alone, and the largest difference between their final samples (0: the
same computation).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
from diffusion_gym.sde import DEFAULT_NOISE_LEVEL, FLOW_INTEGRATORS
from diffusion_gym.tasks import TASKS, get_task
from diffusion_gym.validation import PositiveInt, argument


def _cond(env: DiffusionSDEVectorEnv) -> torch.Tensor | None:
    """Every class in turn, fixed for both loops (the raw loop draws no conditions)."""
    if env.num_conditions is None:
        return None
    return torch.arange(env.num_envs, device=env.device) % env.num_conditions


def raw_loop(env: DiffusionSDEVectorEnv, seed: int, rewards: bool = True) -> torch.Tensor:
    """Euler-Maruyama sampling of the env's base model, written out by hand from its schedule, then
    (``rewards``) the terminal reward and the gold of the final samples.

    VP: ``Y <- Y + (beta Y / 2 + beta score) dt + sqrt(beta dt) xi`` with ``beta = beta(T - t_k)``.
    Flow (the model predicts the velocity ``v``; Flow-GRPO's step, sigma falling by ``h``):
    ``Y <- Y - (v + g^2 (Y + (1 - sigma) v) / (2 sigma)) h + sqrt(g^2 h) xi``, ``g^2 = a^2 sigma / (1 - sigma)``
    (``1 - sigma_1`` in the denominator on the step from sigma = 1).
    """
    model, schedule = env.score_fn, env.schedule  # the env's own callable (compiled with --compile)
    t = env.grid
    s = schedule.T - t[:-1]
    update = _flow_update(env) if env.integrator == "flow_sde" else _vp_update(env)
    s_dev = s.to(env.device, env.dtype)
    gen = torch.Generator(device=env.device).manual_seed(seed)
    shape = (env.num_envs, *env.event_shape)
    cond = _cond(env)
    with torch.no_grad():
        x = torch.randn(shape, generator=gen, device=env.device, dtype=env.dtype)
        for k in range(env.n_steps):
            noise = torch.randn(shape, generator=gen, device=env.device, dtype=env.dtype)
            x = update(k, x, model(s_dev[k], x, cond), noise)
        if rewards:
            _queries(env, x, cond)
    return x


Update = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``update(k, x, prediction, noise) -> x'``: one hand-written step, its constants precomputed."""


def _vp_update(env: DiffusionSDEVectorEnv) -> Update:
    """The VP Euler-Maruyama step of :func:`raw_loop` on the score."""
    t, schedule = env.grid, env.schedule
    beta_dt = (schedule.beta(schedule.T - t[:-1]) * (t[1:] - t[:-1])).tolist()

    def update(k: int, x: torch.Tensor, score: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        bdt = beta_dt[k]
        return (1 + 0.5 * bdt) * x + bdt * score + bdt**0.5 * noise

    return update


def _flow_update(env: DiffusionSDEVectorEnv) -> Update:
    """Flow-GRPO's Euler step of :func:`raw_loop` on the velocity."""
    t, schedule = env.grid, env.schedule
    a = DEFAULT_NOISE_LEVEL if env.noise_level is None else env.noise_level
    sigma, sigma_next = schedule.sigma(schedule.T - t[:-1]).tolist(), schedule.sigma(schedule.T - t[1:]).tolist()

    def update(k: int, x: torch.Tensor, v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sig, sig_next = sigma[k], sigma_next[k]
        g2, h = a**2 * sig / ((1 - sig_next) if sig >= 1 else (1 - sig)), sig - sig_next
        return x - (v + g2 * (x + (1 - sig) * v) / (2 * sig)) * h + (g2 * h) ** 0.5 * noise

    return update


def env_loop(env: DiffusionSDEVectorEnv, seed: int) -> torch.Tensor:
    """One full episode of the batched env with zero actions."""
    zero = torch.zeros((env.num_envs, *env.event_shape), device=env.device, dtype=env.dtype)
    cond = _cond(env)
    obs, _ = env.reset(seed=seed, options=None if cond is None else {"cond": cond})
    for _ in range(env.n_steps):
        obs, *_ = env.step(zero)
    return obs["x"]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _time(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def measure(
    task: str = "mixture2d",
    batch: int = 4096,
    steps: int = 100,
    repeats: int = 10,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    progress: bool = False,
    compile: bool = False,
) -> dict[str, float | int | str]:
    """Particle-steps/s of the env and of the raw loop (medians over ``repeats`` alternated episodes),
    their ratio, the ratio of sampling alone (the two reward queries' median time taken off both)
    and the largest difference between their final samples. ``compile``: the env's score model
    under ``torch.compile``, which the raw loop then calls too (the same compiled model in both)."""
    import gymnasium as gym

    spec = get_task(task)
    device = torch.device(device)
    env = gym.make_vec(
        spec.env_id,
        num_envs=batch,
        vectorization_mode="vector_entry_point",
        n_steps=steps,
        integrator="flow_sde" if spec.defaults_for({}).get("integrator") in FLOW_INTEGRATORS else "euler_maruyama",
        device=device,
        dtype=dtype,
        compile=compile,
    ).unwrapped
    env_loop(env, 0), raw_loop(env, 0)  # warm-up (and the compilation)
    x_final = env_loop(env, 0)
    cond = _cond(env)
    syncs = host_syncs(env) if device.type == "cuda" else None
    env_times, raw_times, query_times = [], [], []
    max_diff = 0.0
    for r in tqdm(range(repeats), desc="episodes (env, raw)", disable=not progress):
        t_env, x_env = _time(lambda r=r: env_loop(env, r), device)
        t_raw, x_raw = _time(lambda r=r: raw_loop(env, r), device)
        query_times.append(_time(lambda: _queries(env, x_final, cond), device)[0])
        env_times.append(t_env)
        raw_times.append(t_raw)
        max_diff = max(max_diff, (x_env - x_raw).abs().max().item())
    work = batch * steps
    t_env, t_raw, t_query = (statistics.median(t) for t in (env_times, raw_times, query_times))
    env_rate, raw_rate = work / t_env, work / t_raw
    return {
        "env_id": spec.env_id,
        "device": device_name(device),
        "dtype": dtype,
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "env_rate": env_rate,
        "raw_rate": raw_rate,
        "ratio": env_rate / raw_rate,
        "sampling_ratio": (t_raw - t_query) / (t_env - t_query),
        "raw_sampling_rate": work / (t_raw - t_query),
        "query_share": t_query / t_raw,
        "compile": compile,
        "max_diff": max_diff,
        "host_syncs_per_episode": syncs,
    }


@torch.no_grad()
def _queries(env: DiffusionSDEVectorEnv, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """The end-of-episode queries both loops make: the terminal reward and the gold."""
    r = env.reward_model(x, cond)
    return r if env.gold_model is None else env.gold_model(x, cond)


def host_syncs(env: DiffusionSDEVectorEnv) -> int:
    """Host synchronisations of one env episode with zero actions on a GPU, counted by torch's
    sync debug mode: the env defers its action checks to the episode's end there. (On digits the
    reset's given conditions are range-checked, one sync per episode that drawn conditions skip.)"""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            env_loop(env, 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mixture2d", choices=sorted(TASKS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=argument(PositiveInt), default=None, help="default: each of the task's sizes")
    parser.add_argument("--steps", type=argument(PositiveInt), default=None, help="with --batch (default: the task's)")
    parser.add_argument("--repeats", type=argument(PositiveInt), default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--compile", action="store_true", help="the env's score model under torch.compile")
    args = parser.parse_args(argv)
    sizes = get_task(args.task).throughput
    if args.batch is not None:
        steps = args.steps if args.steps is not None else dict(sizes).get(args.batch, sizes[0][1])
        sizes = ((args.batch, steps),)
    out = []
    for batch, steps in sizes:
        m = measure(args.task, batch, steps, args.repeats, args.device, args.dtype, progress=True, compile=args.compile)
        compiled = ", env score compiled" if args.compile else ""
        print(f"{m['env_id']} on {m['device']}, torch {torch.__version__}, {args.dtype}{compiled}")
        print(f"batch {batch}, steps {steps}, median of {args.repeats} episodes each")
        print(f"batched env : {m['env_rate']:.3e} particle-steps/s")
        print(f"raw loop    : {m['raw_rate']:.3e} particle-steps/s")
        print(
            f"ratio env/raw: {m['ratio']:.3f}  (sampling alone: {m['sampling_ratio']:.3f}; the reward and gold "
            f"queries are {100 * m['query_share']:.1f}% of the raw episode)"
        )
        print(f"max |x_env - x_raw| over final samples: {m['max_diff']:.2e}")
        if m["host_syncs_per_episode"] is not None:
            print(f"host synchronisations per env episode: {m['host_syncs_per_episode']}")
        out.append(m)
    return out


if __name__ == "__main__":
    main()

"""Data-parallel training on two gloo ranks (docs/design.md, section 6): the averaged gradient is the
whole batch's, parameters stay identical, a killed two-rank run resumes to the same run, SB3
refuses, LoRA synchronises only its adapters, and the launchers (``torchrun -m agents.train``,
``benchmarks run --nproc``) work end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents import AGENTS, all_agents
from agents.common.trajectories import collect
from diffusion_gym import distributed
from tests.distributed_launch import run_ranks

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16
"""Episodes of the whole batch in the gradient checks (8 per rank)."""
CASES = {
    "ct_ppo": ("ct_ppo", "mixture", {}),
    "ct_ppo_global_mlp": ("ct_ppo", "mixture", {"advantage_norm": "global", "critic": "mlp"}),
    "ct_q_learning": ("ct_q_learning", "mixture", {}),
    "ddpo": ("ddpo", "mixture", {}),
    "ddpo_per_class": ("ddpo", "digits", {"policy_net": "mlp"}),
    "dpok": ("dpok", "mixture", {}),
}
"""Each agent, with its normalisations: per-step and global advantage scales, the per-condition
statistics of DDPO on a conditional task (two classes, so that classes hold several episodes)."""
ONE_STEP = {"lr": 0.0, "value_lr": 0.0, "max_grad_norm": 1e9, "epochs": 1, "minibatches": 1, "value_epochs": 1}
"""One actor and one critic step on the whole batch, with nothing moved (lr 0) or clipped: the
gradients the update leaves behind are those of the whole batch's losses."""
LEARNERS = sorted(name for name, (cls, _) in AGENTS.items() if cls.trains)


def make_env(kind: str, num_envs: int):
    if kind == "mixture":
        from diffusion_gym.tasks.mixture2d.env import make_vector_env

        return make_vector_env(num_envs, n_steps=5, integrator="exponential", dtype="float64")
    from diffusion_gym.tasks.digits.env import make_vector_env

    return make_vector_env(
        num_envs, n_steps=3, utility="thickness", integrator="exponential", dtype="float64", conditions=[3, 7]
    )


def make_agent(case: str, num_envs: int, **settings):
    name, kind, config = CASES[case]
    agent_cls, config_cls = AGENTS[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    settings = {k: v for k, v in (config | settings).items() if k in fields}
    return agent_cls(make_env(kind, num_envs), config_cls(progress=False, **settings))


def gradients(agent) -> dict[str, torch.Tensor]:
    return {
        f"{key}.{name}": p.grad.clone()
        for key, module in agent.modules.items()
        for name, p in module.named_parameters()
        if p.grad is not None
    }


def update_on(agent, data: dict, idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The gradients ``agent.update`` leaves on the stored episodes ``idx`` (all by default)."""
    traj = data["traj"] if idx is None else data["traj"].subset(idx)
    if data["behaviour_means"] is not None:  # q-learning's exploring policy, recorded while collecting
        agent.behaviour_means = [m if idx is None else m[idx] for m in data["behaviour_means"]]
        agent.behaviour_clipped = data["behaviour_clipped"]
    agent.update(traj)
    return gradients(agent)


def flat_state(agent) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in agent.trainable_parameters()])


# ------------------------------------------------------------------------------------------------
# What every rank runs.


def _rank_checks(directory: str) -> None:
    d, rank = Path(directory), distributed.rank()
    half = torch.arange(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    for case in CASES:
        data = torch.load(d / f"{case}.traj.pt", weights_only=False)
        agent = make_agent(case, BATCH // 2, **ONE_STEP)
        torch.save(update_on(agent, data, half), d / f"{case}.rank{rank}.pt")

    identity: dict[str, dict] = {}
    for name in [*LEARNERS, "ct_ppo_lora"]:
        if name == "ct_ppo_lora":
            from diffusion_gym.tasks.digits.env import make_vector_env

            env = make_vector_env(4, n_steps=3, utility="thickness", integrator="exponential")
            agent = AGENTS["ct_ppo"][0](env, AGENTS["ct_ppo"][1](progress=False, policy_net="lora", lr=1e-2))
            names = [n for n, p in agent.actor.named_parameters() if p.requires_grad]
        else:
            agent = AGENTS[name][0](make_env("mixture", 16), AGENTS[name][1](progress=False))
            names = []
        start = flat_state(agent)
        diffs, stats_seen = [], []

        def check(agent, stats, diffs=diffs, stats_seen=stats_seen):
            both = distributed.gather(flat_state(agent)[None])
            diffs.append((both[0] - both[1]).abs().max().item())
            stats_seen.append(stats)

        agent.learn(reward_queries=3 * agent.env.num_envs * 2, callback=check)
        first_states = distributed.gather(collect(agent.env, agent.behaviour_action).states[0].flatten(1)[None])
        identity[name] = {
            "diffs": diffs,
            "moved": (flat_state(agent) - start).abs().max().item(),
            "stats": stats_seen,
            "reward_queries": agent.reward_queries,
            "iterations": agent.iteration,
            "ranks_draw_apart": not torch.equal(first_states[0], first_states[1]),
            "trainable_actor": names,
            "synchronised": sum(p.numel() for p in agent.trainable_parameters()),
            "critic_size": sum(p.numel() for p in agent.critic.parameters()) if hasattr(agent, "critic") else 0,
        }
    try:
        all_agents()["sb3"][0](make_env("mixture", 8), all_agents()["sb3"][1](progress=False))
        identity["sb3_error"] = None
    except RuntimeError as err:
        identity["sb3_error"] = str(err)
    torch.save(identity, d / f"identity.rank{rank}.pt")


class Killed(Exception):
    """Stands for the job being killed."""


def _rank_resume(directory: str, phase: str) -> None:
    """``phase`` "first": an uninterrupted run and one killed after its iteration-2 checkpoint, for
    every learner; "resume": the killed runs resumed from their checkpoints in fresh processes."""
    d, rank = Path(directory), distributed.rank()
    torch.use_deterministic_algorithms(True)
    budget = 6 * 32

    def state(agent) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in agent.modules.items()},
            "optimizers": {k: o.state_dict()["state"] for k, o in agent.optimizers.items()},
            "rng": agent.rng_state(),
            "reward_queries": agent.reward_queries,
        }

    for name in LEARNERS:
        agent_cls, config_cls = AGENTS[name]

        def fresh(agent_cls=agent_cls, config_cls=config_cls):
            return agent_cls(make_env("mixture", 16), config_cls(progress=False, seed=3))

        ckpt = d / f"{name}.ckpt.pt"
        if phase == "first":
            torch.save(state(fresh().learn(budget)), d / f"{name}.straight.rank{rank}.pt")

            def kill_after_third(agent, stats):
                if agent.iteration == 3:
                    raise Killed  # after the checkpoint of iteration 2, before that of iteration 4

            try:
                fresh().learn(budget, callback=kill_after_third, checkpoint=ckpt, checkpoint_every=2)
            except Killed:
                pass
        else:
            resumed = fresh().load(ckpt)
            assert resumed.iteration == 2
            resumed.learn(budget, checkpoint=ckpt, checkpoint_every=2)
            torch.save(state(resumed), d / f"{name}.resumed.rank{rank}.pt")


# ------------------------------------------------------------------------------------------------
# The checks.


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The stored whole batches of every case, then every rank-side check on two gloo ranks, once."""
    d = tmp_path_factory.mktemp("two_ranks")
    for case in CASES:
        agent = make_agent(case, BATCH)
        agent.env.reset(seed=0)
        traj = collect(agent.env, agent.behaviour_action)
        data = {"traj": traj, "behaviour_means": getattr(agent, "behaviour_means", None)}
        data["behaviour_clipped"] = getattr(agent, "behaviour_clipped", [])
        torch.save(data, d / f"{case}.traj.pt")
    run_ranks(_rank_checks, str(d))
    return d


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_average_to_the_gradient_of_the_whole_batch(two_ranks, case):
    """The same stored episodes split over two ranks: the averaged gradient (of the actor and the
    critic, with every normalisation over the whole batch) equals one process's gradient on the
    whole batch (float64, within 1e-9 relative); one half's own gradient does not (the check can fail)."""
    data = torch.load(two_ranks / f"{case}.traj.pt", weights_only=False)
    whole = update_on(make_agent(case, BATCH, **ONE_STEP), data)
    ranks = [torch.load(two_ranks / f"{case}.rank{r}.pt") for r in (0, 1)]
    assert whole and set(ranks[0]) == set(whole) == set(ranks[1])
    for key, g in whole.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # the all-reduce gives both the same
        torch.testing.assert_close(ranks[0][key], g, rtol=1e-9, atol=1e-12, msg=key)
        assert (ranks[0][key] - g).abs().max() <= 1e-5
    alone = update_on(make_agent(case, BATCH, **ONE_STEP), data, torch.arange(BATCH // 2))
    assert max((alone[k] - whole[k]).abs().max().item() for k in whole) > 1e-4


@pytest.mark.parametrize("name", [*LEARNERS, "ct_ppo_lora"])
def test_parameters_are_identical_on_both_ranks_after_every_update(two_ranks, name):
    """Three iterations of ``learn`` on two ranks: after each, the ranks' parameters differ by exactly
    0 while they moved; the logged scalars agree; the budget counts both ranks' queries; the ranks
    draw their own episodes."""
    ranks = [torch.load(two_ranks / f"identity.rank{r}.pt") for r in (0, 1)]
    run = ranks[0][name]
    assert run["iterations"] == 3 and run["reward_queries"] == 3 * 2 * (4 if name.endswith("lora") else 16)
    assert run["diffs"] == [0.0, 0.0, 0.0] and run["moved"] > 0
    assert run["stats"] == ranks[1][name]["stats"]
    assert run["ranks_draw_apart"]


def test_lora_policies_synchronise_only_their_adapters(two_ranks):
    """On a UNet base, what the ranks all-reduce and broadcast is the LoRA adapters (and the critic),
    not the frozen base UNet."""
    run = torch.load(two_ranks / "identity.rank0.pt")["ct_ppo_lora"]
    assert run["trainable_actor"] and all("lora_" in n for n in run["trainable_actor"])
    from diffusion_gym.tasks.digits.env import make_vector_env

    base = make_vector_env(4, n_steps=3).score_model.unet
    base_size = sum(p.numel() for p in base.parameters())
    assert run["synchronised"] - run["critic_size"] < base_size / 10


def test_sb3_refuses_a_world_size_above_one(two_ranks):
    message = torch.load(two_ranks / "identity.rank0.pt")["sb3_error"]
    assert message is not None and "world size 2" in message and "no data-parallel update" in message


def test_a_killed_two_rank_run_resumes_bit_identical(tmp_path):
    """Deterministic mode, every learner: two ranks killed after a checkpoint and resumed in fresh
    processes end with the weights, optimiser states, random states (each rank's) and query count of
    an uninterrupted two-rank run, exactly."""
    run_ranks(_rank_resume, str(tmp_path), "first")
    run_ranks(_rank_resume, str(tmp_path), "resume")
    for name in LEARNERS:
        for r in (0, 1):
            straight = torch.load(tmp_path / f"{name}.straight.rank{r}.pt")
            resumed = torch.load(tmp_path / f"{name}.resumed.rank{r}.pt")
            torch.testing.assert_close(resumed, straight, rtol=0, atol=0, msg=f"{name} rank {r}")
        other = torch.load(tmp_path / f"{name}.straight.rank1.pt")["rng"]["generator"]
        assert not torch.equal(torch.load(tmp_path / f"{name}.straight.rank0.pt")["rng"]["generator"], other)


def test_a_checkpoint_refuses_another_number_of_ranks(tmp_path):
    agent_cls, config_cls = AGENTS["ddpo"]
    agent = agent_cls(make_env("mixture", 8), config_cls(progress=False))
    state = agent.state_dict(rng=[agent.rng_state(), agent.rng_state()])
    torch.save(state, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="2 rank"):
        agent_cls(make_env("mixture", 8), config_cls(progress=False)).load(tmp_path / "two.pt")


def test_checkpoints_written_before_they_held_every_rank_still_resume(tmp_path):
    """A one-process checkpoint of the earlier format (one set of random states at the top level)
    resumes to the same run as the current format."""
    agent_cls, config_cls = AGENTS["ct_q_learning"]
    agent = agent_cls(make_env("mixture", 16), config_cls(progress=False)).learn(32)
    state = agent.state_dict()
    rng = state.pop("rng")[0]
    state |= {"torch_rng": rng["torch"], "generator": rng["generator"], "env_rng": rng["env"]}
    torch.save(state, tmp_path / "old.pt")
    agent.save(tmp_path / "new.pt")
    old = agent_cls(make_env("mixture", 16), config_cls(progress=False)).load(tmp_path / "old.pt").learn(64)
    new = agent_cls(make_env("mixture", 16), config_cls(progress=False)).load(tmp_path / "new.pt").learn(64)
    torch.testing.assert_close(flat_state(old), flat_state(new), rtol=0, atol=0)
    torch.testing.assert_close(old.rng_state(), new.rng_state(), rtol=0, atol=0)


def torchrun(*args: str, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",)) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_trains_and_rank_zero_alone_writes(tmp_path):
    """``torchrun --nproc_per_node 2 -m agents.train``: one results file, one checkpoint, one printout,
    with the whole job's queries; a rerun through the multi-node form of the README (c10d rendezvous,
    here with one node) resumes the checkpoint."""
    args = ["-m", "agents.train", "--agent", "dpok", "--n-steps", "5", "--num-envs", "32", "--eval-n", "64"]
    args += ["--set", "progress=False", "--checkpoint", str(tmp_path / "ck.pt")]
    args += ["--out", str(tmp_path / "out.json"), "--logdir", str(tmp_path / "tb")]
    done = torchrun(*args, "--reward-queries", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("dpok on DiffusionSDE-v0") == 1 and "on 2 processes" in done.stdout
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["world_size"] == 2 and result["reward_queries"] == 64 and result["num_envs"] == 32
    assert math.isfinite(result["scores"][0]["gap"])
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    assert len(torch.load(tmp_path / "ck.pt", weights_only=False)["rng"]) == 2
    from tests.distributed_launch import free_port

    multi_node = ("--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}")
    again = torchrun(*args, "--reward-queries", "96", launcher=(*multi_node, "--rdzv-id", "resume"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and json.loads((tmp_path / "out.json").read_text())["reward_queries"] == 96


def test_torchrun_refuses_a_batch_that_does_not_split():
    done = torchrun("-m", "agents.train", "--num-envs", "33", "--reward-queries", "33", "--n-steps", "5")
    assert done.returncode != 0 and "does not split evenly over 2 ranks" in done.stderr


def test_the_scaling_benchmark_takes_one_and_two_processes_apart():
    """``benchmarks.scaling`` at a tiny size: the one- and two-process rates, both ceilings and the
    all-reduce latency, each measured by its own torchrun job."""
    from benchmarks.scaling import main as scaling_main

    sizes = ["--repeats", "1", "--num-envs", "32", "--reward-queries", "64", "--n-steps", "5"]
    rows = scaling_main(["--agent", "ct_ppo", *sizes])
    assert [row["nproc"] for row in rows] == [1, 2] and rows[0]["speedup"] == 1.0
    assert all(row["queries_per_s"] > 0 for row in rows)
    assert rows[1]["alone"] > 0 and rows[1]["side_by_side"] > 0 and rows[1]["all_reduce_latency_s"] > 0


TWO_RANK_SUITE = """
seeds = 1
agents = ["ddpo", "ct_q_learning", "sb3_ppo"]

[agent_settings.sb3_ppo]
agent = "sb3"

[tasks.mixture2d]
env = "DiffusionSDE-v0"
env_kwargs = { integrator = "exponential" }
n_train = [5]
num_envs = 64
reward_queries = 256
curve_points = 2
curve_n = 256
eval_steps = [5, 10]
eval_n = 512
optimum_n = 2048
oracle_n = 256
best_grid = 48
"""


def test_benchmarks_run_with_nproc_trains_every_run_on_two_ranks(tmp_path):
    """``python -m benchmarks run --nproc 2`` starts itself under torchrun: the runs train on two ranks
    with the suite's whole budget, SB3's runs are left out and said so, rank 0 writes one
    results.json, and a resume on another number of processes is refused (the same one is not)."""
    from benchmarks.__main__ import main as benchmarks_main
    from benchmarks.env_throughput import device_name
    from benchmarks.run import run_suite
    from benchmarks.suite import load_suite

    (tmp_path / "two.toml").write_text(TWO_RANK_SUITE)
    args = ["run", "--suite", str(tmp_path / "two.toml"), "--out", str(tmp_path / "res"), "--nproc", "2"]
    assert benchmarks_main(args) == 0
    path = tmp_path / "res" / "results.json"
    results = json.loads(path.read_text())
    assert results["nproc"] == 2 and [run["agent"] for run in results["runs"]] == ["ddpo", "ct_q_learning"]
    assert [s["agent"] for s in results["skipped"]] == ["sb3_ppo"]
    for run in results["runs"]:
        assert run["reward_queries"] == 256 and set(run["final"]) == {"5", "10"}
        assert all(math.isfinite(row["gap"]) for row in run["final"].values())
    report = (tmp_path / "res" / "report.md").read_text()
    assert "x 2 processes" in report and "1 runs of sb3_ppo left out" in report

    # This process (one rank) against the same results, on this process's device string: only the
    # number of processes differs, and it is refused; with it set to 1, the finished runs are kept.
    results["device"] = device_name(torch.device("cpu"))
    path.write_text(json.dumps(results))
    suite = load_suite(tmp_path / "two.toml")
    suite.agents.pop("sb3_ppo")  # SB3 would run here, in one process
    with pytest.raises(ValueError, match="x 2 processes, not"):
        run_suite(suite, "cpu", tmp_path / "res", resume=True)
    path.write_text(json.dumps(results | {"nproc": 1}))
    again = run_suite(suite, "cpu", tmp_path / "res", resume=True)
    assert [run["id"] for run in again["runs"]] == [run["id"] for run in results["runs"]]


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["ct_ppo", "ddpo"])
def test_two_ranks_reach_the_one_process_gap_at_equal_reward_queries(agent, tmp_path):
    """``DiffusionSDE-v0`` (N = 20, exponential), 512 envs in all, 10,240 reward queries, 3 seeds each:
    the two-rank runs' mean normalized gap equals the one-process runs' within 3 standard errors of
    the difference (each mean's error: the larger of the spread over seeds and the Monte Carlo
    errors of the evaluations, as the benchmark report takes it)."""
    from agents.train import main as train_main

    common = ["--agent", agent, "--n-steps", "20", "--env-kwargs", "integrator=exponential", "--num-envs", "512"]
    common += ["--reward-queries", "10240", "--eval-n", "16384", "--set", "progress=False"]
    gaps: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for seed in range(3):
        one = train_main([*common, "--seed", str(seed)])["scores"][0]
        gaps[1].append((one["gap"], one["gap_se"]))
        out = tmp_path / f"two-{seed}.json"
        done = torchrun("-m", "agents.train", *common, "--seed", str(seed), "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        two = json.loads(out.read_text())["scores"][0]
        gaps[2].append((two["gap"], two["gap_se"]))

    def mean_and_se(rows: list[tuple[float, float]]) -> tuple[float, float]:
        values = [g for g, _ in rows]
        spread = statistics.stdev(values) / math.sqrt(len(values))
        monte_carlo = math.sqrt(sum(se**2 for _, se in rows)) / len(rows)
        return statistics.fmean(values), max(spread, monte_carlo)

    (m1, s1), (m2, s2) = mean_and_se(gaps[1]), mean_and_se(gaps[2])
    print(f"{agent}: one process {m1:.3f} ± {s1:.3f}, two ranks {m2:.3f} ± {s2:.3f}")
    assert m1 < 0.9 and m2 < 0.9  # both learnt: the comparison is not of two untrained policies
    assert abs(m1 - m2) <= 3 * math.hypot(s1, s2)

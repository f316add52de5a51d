"""The agent zoo: the common API, exact ratios, checkpoints that resume the same run, SB3, the CLI."""

import math
import re

import gymnasium as gym
import pytest
import torch

import diffusion_gym  # noqa: F401
from agents import AGENTS, register_agent
from agents.common.agent import Agent, AgentConfig
from agents.common.trajectories import collect, policy_deltas, transition_log_probs
from agents.ct_q_learning import CTQLearning
from agents.train import main as train_main
from diffusion_gym.tasks.mixture2d.env import make_vector_env

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


LEARNERS = sorted(name for name, (cls, _) in AGENTS.items() if cls.trains)
"""The zoo's agents that learn (the oracle computes its policy)."""


def tiny_env(**kwargs):
    return make_vector_env(32, n_steps=5, integrator="exponential", **kwargs)


@pytest.mark.parametrize("name", LEARNERS)
def test_every_agent_learns_evaluates_and_reports(name, tmp_path):
    agent_cls, config_cls = AGENTS[name]
    agent = agent_cls(tiny_env(), config_cls(progress=False, logdir=str(tmp_path / "tb")))
    seen = []
    agent.learn(reward_queries=96, callback=lambda a, stats: seen.append(stats))
    assert agent.reward_queries == 96 and agent.iteration == 3 and len(seen) == 3
    assert {"objective", "proxy", "gold", "kl"} <= set(seen[-1]) and all(math.isfinite(v) for v in seen[-1].values())
    result = agent.evaluate(n=64)
    assert set(result) == {"objective", "proxy", "gold_reward", "kl"}
    assert result["objective"].se > 0
    delta = agent.policy(0.3, torch.zeros(8, 2))
    assert delta.shape == (8, 2) and (delta.abs() <= 4.0).all()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars were written


def assert_ratios_are_one(agent, traj):
    """The agent's recomputed transition densities of ``traj`` over the stored ones: 1 within 1e-5."""
    with torch.no_grad():
        ratio = torch.exp(
            transition_log_probs(agent.env, traj, policy_deltas(agent, traj))
            - transition_log_probs(agent.env, traj, traj.deltas)
        )
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["ct_ppo", "ddpo", "dpok", "grpo"])
def test_recomputed_log_probs_match_the_rollouts(name):
    """Before any update, the exact transition log-densities recomputed from the agent's own policy
    equal those of the deltas it applied: every ratio is 1 within 1e-5."""
    agent_cls, config_cls = AGENTS[name]
    agent = agent_cls(tiny_env(dtype="float64"), config_cls(progress=False))
    agent.env.reset(seed=0)
    agent.update(collect(agent.env, agent.behaviour_action))  # a policy that is not zero
    traj = collect(agent.env, agent.behaviour_action)
    assert_ratios_are_one(agent, traj)
    assert policy_deltas(agent, traj).abs().max() > 1e-3


def test_q_learning_recomputed_policy_densities_match():
    agent = CTQLearning(tiny_env(dtype="float64"), AGENTS["ct_q_learning"][1](progress=False))
    agent.env.reset(seed=0)
    agent.update(collect(agent.env, agent.behaviour_action))
    traj = collect(agent.env, agent.behaviour_action)
    with torch.no_grad():
        stored = agent.behaviour_log_probs(traj, torch.stack(agent.behaviour_means))
        recomputed = agent.behaviour_log_probs(traj, policy_deltas(agent, traj))
    torch.testing.assert_close(torch.exp(recomputed - stored), torch.ones_like(stored), rtol=0, atol=1e-5)
    assert policy_deltas(agent, traj).abs().max() > 1e-3  # a policy that is not zero


class Killed(Exception):
    pass


@pytest.mark.parametrize("name", LEARNERS)
def test_a_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(name, tmp_path):
    agent_cls, config_cls = AGENTS[name]
    torch.use_deterministic_algorithms(True)
    try:
        straight = agent_cls(tiny_env(), config_cls(progress=False, seed=3)).learn(reward_queries=32 * 6)

        def kill_after_third(agent, stats):
            if agent.iteration == 3:
                raise Killed  # after the checkpoint of iteration 2, before that of iteration 4

        first = agent_cls(tiny_env(), config_cls(progress=False, seed=3))
        with pytest.raises(Killed):
            first.learn(
                reward_queries=32 * 6, callback=kill_after_third, checkpoint=tmp_path / "ckpt.pt", checkpoint_every=2
            )
        resumed = agent_cls(tiny_env(), config_cls(progress=False, seed=3)).load(tmp_path / "ckpt.pt")
        assert resumed.iteration == 2
        resumed.learn(reward_queries=32 * 6, checkpoint=tmp_path / "ckpt.pt", checkpoint_every=2)
    finally:
        torch.use_deterministic_algorithms(False)
    for key, module in straight.modules.items():
        for (pname, a), b in zip(module.state_dict().items(), resumed.modules[key].state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"{key}.{pname}")
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_checkpoints_refuse_another_agent(tmp_path):
    ppo_cls, ppo_cfg = AGENTS["ct_ppo"]
    ppo_cls(tiny_env(), ppo_cfg(progress=False)).save(tmp_path / "a.pt")
    ddpo_cls, ddpo_cfg = AGENTS["ddpo"]
    with pytest.raises(ValueError, match="ct_ppo agent"):
        ddpo_cls(tiny_env(), ddpo_cfg(progress=False)).load(tmp_path / "a.pt")


def test_agents_need_the_batched_env():
    with pytest.raises(TypeError, match="batched"):
        AGENTS["ct_ppo"][0](gym.make("DiffusionSDE-v0"), AGENTS["ct_ppo"][1]())
    with pytest.raises(ValueError, match="SAME_STEP"):
        AGENTS["ct_ppo"][0](tiny_env(autoreset_mode="SameStep"), AGENTS["ct_ppo"][1]())


def test_a_checkpoint_refuses_another_config(tmp_path):
    """A resumed run with other settings would mix two configs (the optimiser keeps the saved lr)."""
    agent_cls, config_cls = AGENTS["ct_ppo"]
    agent_cls(tiny_env(), config_cls(progress=False, lr=1e-3)).learn(32, checkpoint=tmp_path / "c.pt")
    agent_cls(tiny_env(), config_cls(progress=True, lr=1e-3)).load(tmp_path / "c.pt")  # display only: fine
    with pytest.raises(ValueError, match="lr"):
        agent_cls(tiny_env(), config_cls(progress=False, lr=3e-4)).load(tmp_path / "c.pt")


def test_ddpo_normalises_and_prices_per_condition():
    from agents.ddpo import normalized_per_condition

    gen = torch.Generator().manual_seed(0)
    cond = torch.tensor([0] * 5 + [1] * 7 + [2])
    returns = torch.randn(13, generator=gen, dtype=torch.float64) * (1 + 9 * (cond == 1))
    adv, scale = normalized_per_condition(returns, cond)
    for c in (0, 1):
        mask = cond == c
        torch.testing.assert_close(scale[mask], returns[mask].std().expand(int(mask.sum())))
        assert abs(adv[mask].mean().item()) < 1e-12 and adv[mask].std().item() == pytest.approx(1.0, rel=1e-12)
    assert scale[-1] == returns.std() and adv[-1] == 0  # a lone episode: batch scale, its own mean
    adv, scale = normalized_per_condition(returns, None)
    torch.testing.assert_close(adv, (returns - returns.mean()) / returns.std())
    assert torch.equal(scale, returns.std().expand(13))


def test_an_external_agent_registers_with_one_function():
    class Zero(Agent):
        name = "zero"

        def mean_action(self, t, x, cond):
            return torch.zeros_like(x)

        def update(self, traj):
            return {}

    register_agent("zero", Zero, AgentConfig)
    try:
        agent = AGENTS["zero"][0](tiny_env(), AgentConfig(progress=False)).learn(64)
        assert agent.evaluate(n=64)["kl"].mean == 0.0
    finally:
        AGENTS.pop("zero")


def test_conditional_tasks_train(tmp_path):
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    agent_cls, config_cls = AGENTS["ct_ppo"]
    env = make_digits(8, n_steps=3, utility="thickness")
    agent = agent_cls(env, config_cls(progress=False)).learn(16)
    assert agent.policy(0.5, torch.zeros(2, 1, 8, 8), torch.tensor([3, 4])).shape == (2, 1, 8, 8)


def test_cli_trains_resumes_and_scores(tmp_path, capsys):
    args = ["--agent", "ddpo", "--num-envs", "32", "--n-steps", "4", "--reward-queries", "64", "--eval-n", "256"]
    args += ["--env-kwargs", "integrator='exponential'", "--set", "progress=False", "clip=0.2"]
    args += ["--checkpoint", str(tmp_path / "c.pt"), "--eval-steps", "4,8", "--out", str(tmp_path / "r.json")]
    args += ["--device", "cpu"]
    result = train_main(args)
    assert [row["n_steps"] for row in result["scores"]] == [4, 8] and result["config"]["clip"] == 0.2
    again = train_main(args[:7] + ["128"] + args[8:])
    assert again["reward_queries"] == 128 and "resumed from" in capsys.readouterr().out
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_main(args[:8] + ["--set", "clipp=0.2"])
    assert "unknown fields ['clipp']" in capsys.readouterr().err


def lora_agent(base_shift: float = 0.0, **config):
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    env = make_digits(8, n_steps=3, utility="thickness", integrator="exponential", dtype="float64")
    with torch.no_grad():
        env.score_model.unet.conv_out.bias.add_(base_shift)  # another base model of the same architecture
    agent_cls, config_cls = AGENTS["ct_ppo"]
    return agent_cls(env, config_cls(progress=False, **config))


def test_unet_bases_get_a_lora_policy_that_starts_at_the_pretrained_model():
    from agents.common.lora import LoRAScoreField

    agent = lora_agent()
    assert isinstance(agent.actor, LoRAScoreField)

    def trainable():
        return [n for n, p in agent.actor.named_parameters() if p.requires_grad]

    before = trainable()
    assert before and all("lora_" in n for n in before)
    x, cond = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
    assert torch.equal(agent.policy(0.4, x, cond), torch.zeros_like(x))  # LoRA's B starts at zero
    assert trainable() == before  # the adapters-off pass for the base score switched them back on
    base = {k: v.clone() for k, v in agent.env.score_model.state_dict().items()}
    agent.env.reset(seed=0)
    agent.update(collect(agent.env, agent.behaviour_action))
    assert agent.policy(0.4, x, cond).abs().max() > 1e-4
    for k, v in agent.env.score_model.state_dict().items():
        assert torch.equal(v, base[k]), k  # the env's base model is a different, untouched copy


def test_lora_policy_ratios_and_checkpoints(tmp_path):
    """The LoRA policy's recomputed transition densities equal the rollouts' (ratio 1 within 1e-5),
    and its checkpoint holds the adapters (not the frozen UNet) and restores the same policy."""
    agent = lora_agent()
    agent.env.reset(seed=0)
    agent.update(collect(agent.env, agent.behaviour_action))
    traj = collect(agent.env, agent.behaviour_action)
    assert_ratios_are_one(agent, traj)
    agent.save(tmp_path / "lora.pt")
    saved = torch.load(tmp_path / "lora.pt", weights_only=False)["modules"]["actor"]
    assert set(saved) - {"base_fingerprint"} and all("lora_" in k for k in set(saved) - {"base_fingerprint"})
    restored = lora_agent().load(tmp_path / "lora.pt")
    x, cond = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 2, 7, 8])
    torch.testing.assert_close(restored.policy(0.7, x, cond), agent.policy(0.7, x, cond), rtol=0, atol=0)
    # Another base UNet of the same architecture: the checkpoint's run identity refuses it (the
    # adapters' own base fingerprint would too, for a state dict loaded without the identity).
    with pytest.raises(ValueError, match=r"env.weights_sha256: \w+\.\.\. there, \w+\.\.\. here"):
        lora_agent(base_shift=1e-3).load(tmp_path / "lora.pt")
    legacy = {k: v for k, v in torch.load(tmp_path / "lora.pt", weights_only=False).items() if k != "identity"}
    with pytest.raises(ValueError, match="another base network"), pytest.warns(UserWarning, match="predates run"):
        lora_agent(base_shift=1e-3).load_state_dict(legacy)


def test_lora_needs_a_diffusers_network_base():
    with pytest.raises(TypeError, match="diffusers network base"):
        AGENTS["ct_ppo"][0](tiny_env(), AGENTS["ct_ppo"][1](progress=False, policy_net="lora"))
    with pytest.raises(ValueError, match="policy_net"):
        AGENTS["ct_ppo"][0](tiny_env(), AGENTS["ct_ppo"][1](progress=False, policy_net="unet"))


def test_a_registered_policy_is_picked_by_name_and_by_auto_where_it_fits():
    """``register_policy`` adds a network that ``policy_net="<its name>"`` builds (on the env's device
    and dtype), and ``"auto"`` once its ``fits`` accepts the env; unknown names list the registered ones."""
    from agents.common.networks import FieldMLP
    from agents.common.policies import POLICIES, register_policy

    class Tagged(FieldMLP):
        """The MLP under another name."""

    def build(env, config):
        return Tagged(env.event_shape, env.T, env.num_conditions, hidden=(8,))

    agent_cls, config_cls = AGENTS["ct_ppo"]
    register_policy("tagged", build)
    try:
        agent = agent_cls(tiny_env(dtype="float64"), config_cls(progress=False, policy_net="tagged"))
        assert isinstance(agent.actor, Tagged) and agent.actor.head.weight.dtype == torch.float64
        x = torch.ones(4, 2, dtype=torch.float64)
        assert torch.equal(agent.policy(0.3, x), torch.zeros_like(x))  # zero at initialisation
        assert type(agent_cls(tiny_env(), config_cls(progress=False)).actor) is FieldMLP  # no fits: auto keeps the MLP
        register_policy("tagged", build, fits=lambda env: env.event_shape == (2,))
        assert isinstance(agent_cls(tiny_env(), config_cls(progress=False)).actor, Tagged)
        names = r"\['auto', 'conv', 'lora', 'mlp', 'tagged'\]"
        with pytest.raises(ValueError, match=rf"policy_net must be one of {names}, got 'unet'"):
            agent_cls(tiny_env(), config_cls(progress=False, policy_net="unet"))
        with pytest.raises(ValueError, match="'auto' is not a policy's name"):
            register_policy("auto", build)
    finally:
        POLICIES.pop("tagged")


def test_tune_records_every_run_of_the_grid(tmp_path):
    import json

    from agents.tune import main as tune_main
    from agents.tuning import searches

    args = ["--env", "DiffusionSDE-v0", "--agents", "ddpo,ct_ppo_reward", "--num-envs", "64", "--n-steps", "4"]
    args += ["--reward-queries", "256", "--eval-n", "256", "--optimum-n", "512", "--curve-points", "2"]
    args += ["--curve-n", "128", "--device", "cpu", "--out", str(tmp_path)]
    runs = tune_main(args)
    record = json.loads((tmp_path / "DiffusionSDE-v0.json").read_text())
    assert len(runs) == len(record["runs"]) == 8
    grid = searches("DiffusionSDE-v0")["ddpo"].grid
    assert sorted((r["setting"]["lr"], r["setting"]["clip"]) for r in record["runs"] if r["label"] == "ddpo") == sorted(
        (lr, clip) for lr in grid["lr"] for clip in grid["clip"]
    )
    assert all(math.isfinite(r["gap"]) and r["gap_se"] > 0 and r["reachable_gap_se"] > 0 for r in record["runs"])
    assert all(r["curve"][0]["reward_queries"] == 0 and len(r["curve"]) == 3 for r in record["runs"])
    assert {r["fixed"].get("critic") for r in record["runs"] if r["label"] == "ct_ppo_reward"} == {"reward"}
    assert set(record["picks"]) == {"ddpo", "ct_ppo_reward"} and set(record["winners"]) == set()
    table = (tmp_path / "DiffusionSDE-v0.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ddpo |") or line.startswith("| ct_ppo_reward |")]
    assert len(rows) == 8 and sum("**" in row for row in rows) == 2  # one pick per search, in bold
    # Rerunning one search keeps the other's runs (same budget).
    tune_main(args[:3] + ["ddpo"] + args[4:])
    assert len(json.loads((tmp_path / "DiffusionSDE-v0.json").read_text())["runs"]) == 8
    with pytest.raises(SystemExit):
        tune_main(args[:3] + ["nope"] + args[4:])


def test_tune_makes_the_task_with_its_budgets_env_kwargs(tmp_path, monkeypatch):
    """A tuning file's [budget] env_kwargs (here D = 8) make the searched env and are recorded; a rerun of
    one search keeps the other's runs only when they were made with the same env keywords."""
    import json

    import agents.tuning
    from agents.tune import main as tune_main

    budget = "num_envs = 64\nreward_queries = 128\neval_n = 128\noptimum_n = 256\ncurve_points = 1\ncurve_n = 64\n"
    grids = "[searches.ddpo]\ngrid = { lr = [1e-3] }\n[searches.dpok]\ngrid = { lr = [1e-3] }\n"
    monkeypatch.setattr(agents.tuning, "TUNING_DIR", tmp_path)
    args = ["--env", "DiffusionSDE-Mixture-v0", "--n-steps", "4", "--out", str(tmp_path / "out")]
    (tmp_path / "DiffusionSDE-Mixture-v0.toml").write_text("[budget]\nenv_kwargs = { dim = 8 }\n" + budget + grids)
    tune_main(args)
    record = json.loads((tmp_path / "out" / "DiffusionSDE-Mixture-v0.json").read_text())
    assert record["meta"]["env_kwargs"] == {"n_steps": 4, "dim": 8, "integrator": "exponential", "device": "cpu"}
    assert len(record["runs"]) == 2
    (tmp_path / "DiffusionSDE-Mixture-v0.toml").write_text("[budget]\nenv_kwargs = { dim = 2 }\n" + budget + grids)
    tune_main(args + ["--agents", "ddpo"])
    record = json.loads((tmp_path / "out" / "DiffusionSDE-Mixture-v0.json").read_text())
    assert [r["label"] for r in record["runs"]] == ["ddpo"]  # dpok's D = 8 run is not this budget's
    (tmp_path / "DiffusionSDE-Mixture-v0.toml").write_text("[budget]\nenv_kwargs = 3\n" + budget + grids)
    with pytest.raises(ValueError, match=r"\[budget\] env_kwargs must be a table"):
        tune_main(args)


def test_tune_picks_the_lowest_gap_and_breaks_ties_by_queries():
    from agents.tune import select

    runs = [
        {"reachable_gap": 0.20, "reachable_gap_se": 0.01, "queries_to_gap": 9000},
        {"reachable_gap": 0.21, "reachable_gap_se": 0.01, "queries_to_gap": 4000},  # a tie, faster
        {"reachable_gap": 0.30, "reachable_gap_se": 0.01, "queries_to_gap": 1000},  # not a tie
        {"reachable_gap": 0.22, "reachable_gap_se": 0.01, "queries_to_gap": None},  # a tie that never crossed
    ]
    assert select(runs) is runs[1]
    assert select(runs[:1] + runs[2:]) is runs[0]


def test_denoised_states_are_tweedie_estimates_from_the_stored_means():
    """``x0_hat = (y + sigma_s^2 s_pre) / alpha_s`` recovered from the recorded pretrained means equals the
    estimate from a fresh score evaluation (float64, 1e-10)."""
    env = tiny_env(dtype="float64")
    env.record_transitions = True
    env.reset(seed=0)
    traj = collect(env, lambda k, obs: 0.3 * torch.ones_like(obs["x"]))
    t, y, _ = traj.step_inputs(env)
    s = env.T - t
    score = env.score_model.score(s, y)
    expected = (y + env.schedule.sigma2(s)[:, None] * score) / env.schedule.alpha(s)[:, None]
    torch.testing.assert_close(traj.denoised(env), expected, rtol=1e-10, atol=1e-10)


def test_the_reward_critic_is_the_reward_at_the_data_end_and_learned_at_the_noise_end():
    from agents.common.networks import DenoisedRewardCritic

    env = tiny_env(dtype="float64")
    critic = DenoisedRewardCritic(env.reward_model, env.event_shape, env.T).double()
    x, x0 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    reward, residual = env.reward_model(x0), critic.residual(torch.zeros(6, dtype=torch.float64), x)
    at_x0 = critic.denoised_reward(x0, None)
    torch.testing.assert_close(critic(torch.full((6,), env.T, dtype=torch.float64), x, None, at_x0), reward)
    torch.testing.assert_close(critic(torch.zeros(6, dtype=torch.float64), x, None, at_x0), residual)
    assert not any(name.startswith("reward") for name in critic.state_dict())  # the reward is not checkpointed


def test_ct_ppo_standardises_advantages_per_step_and_prices_kl_alike():
    """Per-step normalisation: every step's scaled TD increments have mean 0 and standard deviation 1
    (clipped at adv_clip), and the scale of each step is its own; the global one is one scale."""
    cls, cfg = AGENTS["ct_ppo"]
    agent = cls(tiny_env(dtype="float64"), cfg(progress=False, adv_clip=0.0))
    agent.env.reset(seed=0)
    traj = collect(agent.env, agent.behaviour_action)
    with torch.no_grad():
        adv, scale = agent.scaled_advantages(traj)
    torch.testing.assert_close(adv.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(adv.std(1), torch.ones(5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert scale.shape == (5, 1) and scale.unique().numel() == 5
    agent.config.adv_clip = 0.5
    with torch.no_grad():
        assert agent.scaled_advantages(traj)[0].abs().max() == 0.5
    agent.config.advantage_norm = "global"
    with torch.no_grad():
        adv, scale = agent.scaled_advantages(traj)
    assert scale.unique().numel() == 1
    with pytest.raises(ValueError, match="advantage_norm"):
        cls(tiny_env(), cfg(advantage_norm="batch"))


def test_critic_pretraining_spends_counted_queries_before_rl():
    cls, cfg = AGENTS["ct_ppo"]
    agent = cls(tiny_env(), cfg(progress=False, critic_pretrain_queries=64))
    before = [p.clone() for p in agent.critic.parameters()]
    agent.learn(reward_queries=96)
    assert agent.reward_queries == 96 and agent.iteration == 1  # 2 pretrained batches, then one RL iteration
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters(), strict=True))


@pytest.mark.slow
def test_compiled_env_and_agent_match_eager():
    """``compile=True`` (the env's score model; the agent's actor and path log-densities through
    torch.compile) samples the same law as eager (final states within float32 rounding: the same
    noise) and trains with exact ratios. Slow: the first compilation takes ~40 s on 2 CPU cores."""
    eager, compiled = (make_vector_env(256, n_steps=6, integrator="exponential", compile=c) for c in (False, True))
    runs = []
    for env in (eager, compiled):
        obs, _ = env.reset(seed=0)
        for _ in range(env.n_steps):
            obs, *_ = env.step(torch.zeros(256, 2))
        runs.append(obs["x"])
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-5)
    agent_cls, config_cls = AGENTS["ct_ppo"]
    agent = agent_cls(compiled, config_cls(progress=False, compile=True)).learn(512)
    assert_ratios_are_one(agent, collect(agent.env, agent.behaviour_action))


@pytest.mark.parametrize("name", ["ct_ppo", "ddpo", "dpok"])
def test_the_convolutional_policy_starts_at_zero_and_its_ratios_are_exact(name):
    """``policy_net="conv"`` on the digits task: zero correction at initialisation, a non-zero one after
    an update, and the recomputed transition densities equal the rollouts' (ratio 1 within 1e-5)."""
    from agents.common.networks import FieldConv
    from diffusion_gym.tasks.digits.env import make_vector_env as make_digits

    env = make_digits(8, n_steps=3, utility="thickness", integrator="exponential", dtype="float64")
    agent_cls, config_cls = AGENTS[name]
    agent = agent_cls(env, config_cls(progress=False, policy_net="conv"))
    assert isinstance(agent.actor, FieldConv)
    x, cond = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
    assert torch.equal(agent.policy(0.4, x, cond), torch.zeros_like(x))
    agent.env.reset(seed=0)
    agent.update(collect(agent.env, agent.behaviour_action))
    assert agent.policy(0.4, x, cond).abs().max() > 1e-4
    assert_ratios_are_one(agent, collect(agent.env, agent.behaviour_action))


def test_the_convolutional_field_is_translation_equivariant_away_from_the_border():
    """Shifting an image shifts the field (the interior, beyond the convolutions' reach of the
    zero padding), exactly up to float rounding; the field needs (C, H, W) states and its condition."""
    from agents.common.networks import FieldConv

    torch.manual_seed(0)
    field = FieldConv((1, 16, 16), T=1.0, num_conditions=10, depth=2, zero_init=False).double()
    x, cond, t = torch.randn(2, 1, 16, 16, dtype=torch.float64), torch.tensor([1, 4]), torch.tensor(0.3)
    x[..., :, :4] = 0.0
    x[..., :, -4:] = 0.0
    shifted = torch.roll(x, 2, dims=-1)
    out, out_shifted = field(t, x, cond), field(t, shifted, cond)
    torch.testing.assert_close(out_shifted[..., 4:-4, 6:-4], out[..., 4:-4, 4:-6], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="conditional"):
        field(t, x)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        FieldConv((2,), T=1.0)


def test_q_learning_takes_the_reward_critic():
    """``critic="reward"`` gives q-learning the denoised-reward critic; it trains with finite stats and
    its recomputed policy densities still equal the rollouts'; an unknown critic is refused."""
    from agents.common.networks import DenoisedRewardCritic

    agent_cls, config_cls = AGENTS["ct_q_learning"]
    agent = agent_cls(tiny_env(), config_cls(progress=False, critic="reward"))
    assert isinstance(agent.critic, DenoisedRewardCritic)
    seen = []
    agent.learn(64, callback=lambda a, stats: seen.append(stats))
    assert all(math.isfinite(v) for v in seen[-1].values())
    with pytest.raises(ValueError, match=r"critic must be one of \['mlp', 'reward'\], got 'unet'"):
        agent_cls(tiny_env(), config_cls(progress=False, critic="unet"))


def test_train_refuses_bad_counts_grids_and_output_paths_before_any_work(tmp_path, capsys):
    """A bad --eval-n, --eval-steps, --out, --checkpoint or --logdir is refused when the command is
    parsed, naming the option, not after training; benchmarks run refuses an --out that is a file."""
    from benchmarks.__main__ import main as benchmarks_main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["--agent", "ddpo", "--n-steps", "4", "--num-envs", "8", "--reward-queries", "8"]
    for extra, named in (
        (["--eval-n", "0"], "argument --eval-n: expected an integer >= 1, got '0'"),
        (["--eval-steps", "10,x"], "argument --eval-steps: expected a list of integers >= 1, got '10,x'"),
        (["--eval-steps", "0,10"], "argument --eval-steps: expected a list of integers >= 1"),
        (["--set", "max_grad_norm=-1"], r"DDPOConfig.max_grad_norm: expected a finite number > 0, got -1"),
        (["--set", "lr=abc"], r"DDPOConfig.lr: expected a finite number >= 0, got 'abc'"),
        (["--set", "anneal_lr=maybe"], r"DDPOConfig.anneal_lr: expected a boolean"),
        (["--set", "lr"], "--set: expected key=value, got 'lr'"),
        (["--out", str(tmp_path)], "--out: .* is a folder, expected a file"),
        (["--checkpoint", str(a_file / "ckpt.pt")], "--checkpoint: cannot create .*a_file is a file"),
        (["--logdir", str(a_file)], "--logdir: .*a_file is a file, expected a folder"),
    ):
        with pytest.raises(SystemExit):
            train_main(base + extra)
        assert re.search(named, capsys.readouterr().err), (extra, named)
    with pytest.raises(SystemExit):
        benchmarks_main(["run", "--suite", "quick", "--out", str(a_file)])
    assert "--out: " in capsys.readouterr().err

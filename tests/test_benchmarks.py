"""The benchmark suite: suite files, an end-to-end run of a tiny suite (results.json, report, plots,
TensorBoard), the report generated from results.json alone, the claims it states, and the metrics."""

import copy
import json
import math
import statistics
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from agents import AGENTS, register_agent
from agents.common.agent import Agent, AgentConfig
from agents.common.trajectories import Trajectories
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.env_throughput import measure
from benchmarks.plots import kl_front
from benchmarks.report import (
    below_pretrained,
    claims,
    detectable_difference,
    discrimination,
    gap_at,
    headroom,
    render,
    saturation_verdict,
)
from benchmarks.suite import load_suite
from diffusion_gym.evaluation import Estimate, crossing
from diffusion_gym.metrics import per_class_diversity
from diffusion_gym.references import References

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


@dataclass
class ZeroConfig(AgentConfig):
    """No settings of its own."""


class ZeroAgent(Agent):
    """An external agent that never learns: its policy is the pretrained sampler (gap 1 by definition)."""

    name = "zero"

    def mean_action(self, t: Tensor, x: Tensor, cond: Tensor | None) -> Tensor:
        return torch.zeros_like(x)

    def update(self, traj: Trajectories) -> dict[str, float]:
        return {}


TINY = """
seeds = 1
agents = ["ct_ppo", "ddpo", "zero", "sb3_ppo"]

[claims]
ours = "zero"
baselines = ["ddpo"]
stable = ["zero"]
families = { policy_gradient = ["ddpo", "sb3_ppo"] }

[agent_settings.sb3_ppo]
agent = "sb3"
algo_kwargs = { n_epochs = 1, batch_size = 512 }

[tasks.mixture2d]
env = "DiffusionSDE-v0"
env_kwargs = { integrator = "exponential" }
n_train = [10]
num_envs = 256
reward_queries = 3072
curve_points = 3
curve_n = 1024
eval_steps = [5, 10, 20]
eval_n = 8192
optimum_n = 16384
oracle_n = 1024
best_grid = 96

[tasks.digits]
env = "DiffusionSDE-Digits-v0"
env_kwargs = { integrator = "exponential" }
n_train = [4]
num_envs = 20
reward_queries = 40
curve_points = 1
curve_n = 20
eval_steps = [4]
eval_n = 40
optimum_n = 40
policy_net = "mlp"

[tasks.digits.agent_settings.ct_ppo]
clip = 0.1
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny suite above, run once through the command line, with the external agent registered
    by one call."""
    register_agent("zero", ZeroAgent, ZeroConfig, search={"lr": [1e-3]})
    out = tmp_path_factory.mktemp("bench")
    (out / "tiny.toml").write_text(TINY)
    try:
        assert benchmarks_main(["run", "--suite", str(out / "tiny.toml"), "--out", str(out / "res")]) == 0
    finally:
        AGENTS.pop("zero")
    return out / "res"


def test_shipped_suites_parse_on_both_devices():
    for device in ("cpu", "cuda"):
        quick = load_suite("quick", device)
        assert set(quick.tasks) == {"mixture8", "flow8", "digits"}
        assert quick.tasks["mixture8"].env_kwargs["dim"] == 8
        assert quick.tasks["flow8"].env == "DiffusionSDE-FlowMixture-v0"
        assert quick.tasks["flow8"].env_kwargs == {"dim": 8, "noise_level": 0.7}
        assert quick.seeds == [0, 1]
        learners = {name for name, (cls, _) in AGENTS.items() if cls.trains}  # the oracle is a reference row
        assert {agent for agent, _ in quick.agents.values()} == learners | {"sb3"}
        on_digits, on_flow = quick.tasks["digits"].agents, quick.tasks["flow8"].agents
        # the policy-gradient agents; the families of issue 23 run on mixture8 only (the 15 minutes)
        assert set(on_digits) == set(on_flow) == {"ct_ppo", "ct_q_learning", "ddpo", "dpok"}
        assert len(quick.runs()) == (len(quick.agents) + len(on_digits) + len(on_flow)) * 2
        assert {r.label for r in quick.runs() if r.task.key == "digits"} == set(on_digits)
        full = load_suite("full", device)
        assert len(full.seeds) > 2
        assert {t.env_kwargs.get("dim") for t in full.tasks.values() if t.env == "DiffusionSDE-Mixture-v0"} == {
            2,
            8,
            32,
        }
        flow = {(t.env_kwargs["dim"], t.env_kwargs["noise_level"]) for t in full.tasks.values() if "Flow" in t.env}
        assert flow == {(2, 0.7), (2, math.sqrt(2)), (8, 0.7)}
        assert "digits" in full.tasks and full.throughput
        # every agent on every task it applies to: Adjoint Matching refuses off the memoryless a = sqrt 2
        for key, task in full.tasks.items():
            if key == "digits_flow":
                continue
            memoryless = key not in ("flow2", "flow8")
            expected = {"grpo", "reward_gradient", "nft"} | ({"adjoint_matching"} if memoryless else set())
            assert expected <= set(task.agents or full.agents), key
        # the flow-matching digits model: the gradient agents and GRPO / the reward gradient, at the VP
        # digits' settings (agent_settings_from), its own model keyword
        flow_digits, digits = full.tasks["digits_flow"], full.tasks["digits"]
        assert flow_digits.env == digits.env and flow_digits.env_kwargs == {"model": "flow"}
        assert set(flow_digits.agents) == {"ct_ppo", "ct_q_learning", "ddpo", "dpok", "grpo", "reward_gradient"}
        assert flow_digits.agent_settings == {a: digits.agent_settings[a] for a in flow_digits.agents}
        families = {"policy_gradient", "q_learning", "reward_gradient", "adjoint_matching", "nft"}
        assert set(full.claims.families) == set(quick.claims.families) == families
    cpu, cuda = load_suite("full", "cpu"), load_suite("full", "cuda")
    assert cpu.tasks["mixture8"].reward_queries < cuda.tasks["mixture8"].reward_queries
    assert load_suite("quick", seeds=5).seeds == [0, 1, 2, 3, 4]


def test_tuned_settings_are_the_recorded_picks_per_suite_and_per_task(tmp_path, monkeypatch):
    """``tuned = "<env id>"`` stands for the pick of the agent's recorded search on that task: for
    every task under [agent_settings], for one task under [tasks.KEY.agent_settings] (over the former),
    the table's own keys over the pick; a missing record or a pick of another agent is refused."""
    import agents.tuning

    monkeypatch.setattr(agents.tuning, "TUNING_DIR", tmp_path)
    monkeypatch.setitem(AGENTS, "zero", (ZeroAgent, ZeroConfig))
    picks = {"ddpo": {"agent": "ddpo", "settings": {"lr": 3e-4, "clip": 0.05}}}
    picks |= {"sb3_ppo": {"agent": "ddpo", "settings": {}}}
    (tmp_path / "Everywhere-v0.json").write_text(json.dumps({"picks": picks}))
    (tmp_path / "OneTask-v0.json").write_text(
        json.dumps({"picks": {"ddpo": {"agent": "ddpo", "settings": {"lr": 1e-2}}}})
    )
    suite_file = tmp_path / "tuned.toml"
    text = TINY.replace(
        "[agent_settings.sb3_ppo]",
        '[agent_settings.ddpo]\ntuned = "Everywhere-v0"\nclip = 0.2\n\n[agent_settings.sb3_ppo]',
    )
    suite_file.write_text(text + '[tasks.mixture2d.agent_settings.ddpo]\ntuned = "OneTask-v0"\n')
    suite = load_suite(suite_file)
    assert suite.agents["ddpo"] == ("ddpo", {"lr": 3e-4, "clip": 0.2})
    assert suite.tasks["mixture2d"].agent_settings["ddpo"] == {"lr": 1e-2}
    ddpo = {r.task.key: r.overrides for r in suite.runs() if r.label == "ddpo"}
    assert ddpo == {"mixture2d": {"lr": 1e-2, "clip": 0.2}, "digits": {"lr": 3e-4, "clip": 0.2, "policy_net": "mlp"}}
    suite_file.write_text(text + '[tasks.mixture2d.agent_settings.ddpo]\ntuned = "Nowhere-v0"\n')
    with pytest.raises(ValueError, match=r"\[tasks.mixture2d.agent_settings.ddpo\] tuned: no recorded search.*Nowhere"):
        load_suite(suite_file)
    suite_file.write_text(text + '[tasks.mixture2d.agent_settings.sb3_ppo]\ntuned = "Everywhere-v0"\n')
    with pytest.raises(ValueError, match="picks another agent than 'sb3_ppo'"):
        load_suite(suite_file)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('"zero", "sb3_ppo"]', '"nope", "sb3_ppo"]'), "'nope', unknown"),
        (lambda s: s.replace("num_envs = 256\n", ""), r"missing \['num_envs'\]"),
        (lambda s: s.replace("curve_n = 1024", "curve_n = 1024\nbatch = 3"), r"unknown fields \['batch'\]"),
        # Typed fields: no float for an int, no duplicate grid (two runs with one id), no bad config value.
        (lambda s: s.replace("seeds = 1", "seeds = 2.7"), r"bad.toml: seeds: expected an integer >= 1, got 2.7"),
        (lambda s: s.replace("reward_queries = 40", "reward_queries = 32.5"), r"SuiteTask.reward_queries: expected an"),
        (lambda s: s.replace("n_train = [10]", "n_train = [10, 10]"), r"'mixture2d': n_train lists \[10\] more than"),
        (lambda s: s.replace("eval_n = 40\n", "eval_n = true\n"), r"'digits': SuiteTask.eval_n: expected an integer"),
        (lambda s: s.replace("clip = 0.1", "clip = -0.1"), r"\[agent_settings.ct_ppo\]: CTPPOConfig.clip: expected"),
        (lambda s: s.replace("clip = 0.1", "anneal_lr = 'maybe'"), r"CTPPOConfig.anneal_lr: expected a boolean"),
        (lambda s: s + "[tasks.digits.agent_settings.ddpo]\nnum_envs = 0\n", r"ddpo\] num_envs: expected an int"),
        (lambda s: s.replace('stable = ["zero"]', 'stable = ["zero"]\nthreshold = 0.3'), r"Claims.threshold: expected"),
        (lambda s: s.replace('baselines = ["ddpo"]', 'baselines = "ddpo"'), r"Claims.baselines: expected a list"),
        # The tasks' env ids and keywords, when the suite loads (not when the task's turn comes).
        (lambda s: s.replace('integrator = "exponential" }', 'integrator = "euler" }', 1), r"integrator: expected one"),
        (lambda s: s.replace('integrator = "exponential" }', "n_steps = true }", 1), r"DiffusionSDE-v0: n_steps"),
        (lambda s: s.replace('env = "DiffusionSDE-Digits-v0"', 'env = "Nope-v0"'), r"'digits': no task 'Nope-v0'"),
        (lambda s: s.replace("[tasks.digits.agent_settings.ct_ppo]", "[tasks.digits.agent_settings.dpok]"), "not in"),
        (lambda s: s.replace("clip = 0.1", "clip_range = 0.1"), r"\['clip_range'\] of 'ct_ppo' are not fields"),
        (lambda s: s.replace("eval_steps = [5, 10, 20]", "eval_steps = [5, 20]"), "n_train grid must be in"),
        (lambda s: s.replace("curve_points = 3", "curve_points = 0"), "curve_points: expected an integer >= 1, got 0"),
        (lambda s: "colour = 1\n" + s, "unknown top-level"),
        (lambda s: s.replace("curve_n = 1024", 'curve_n = 1024\nagents = ["sac"]'), "names agents not in the suite"),
        (
            lambda s: s.replace("curve_n = 20\n", 'curve_n = 20\nagents = ["ddpo"]\n'),
            "settings for agents it does not run",
        ),
    ],
)
def test_bad_suites_raise(tmp_path, edit, message):
    register_agent("zero", ZeroAgent, ZeroConfig, search={"lr": [1e-3]})
    try:
        path = tmp_path / "bad.toml"
        path.write_text(edit(TINY))
        with pytest.raises(ValueError, match=message):
            load_suite(path)
    finally:
        AGENTS.pop("zero")
    with pytest.raises(FileNotFoundError, match="known"):
        load_suite("no_such_suite")


def test_tiny_suite_writes_results_report_plots_and_logs(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["schema_version"] == 3
    assert [r["id"] for r in results["runs"]] == [
        f"{task}/{agent}/N{n}/seed0"
        for task, n in (("mixture2d", 10), ("digits", 4))
        for agent in ("ct_ppo", "ddpo", "zero", "sb3_ppo")
    ]
    for run in results["runs"]:
        task = results["tasks"][run["task"]]
        assert run["reward_queries"] >= task["reward_queries"]
        queries = [p["reward_queries"] for p in run["curve"]]
        assert queries[0] == 0 and queries == sorted(queries) and queries[-1] == run["reward_queries"]
        assert set(run["final"]) == {str(n) for n in task["eval_steps"]}
        assert run["train_seconds"] > 0 and run["peak_gpu_mib"] is None
        logs = list((tiny_run / run["tensorboard"]).rglob("events.out.tfevents.*"))
        assert any(p.name.endswith(".eval") for p in logs)  # the learning curve's scalars
        if run["zoo_agent"] != "sb3":  # the agent's training scalars (SB3 writes its own, below)
            assert any(not p.name.endswith(".eval") for p in logs)
        assert (tiny_run / run["samples"]).exists()
        assert (run["image"] is not None) == (run["task"] == "digits")
        assert set(run["to_gap"]) == {"0.5", "0.1"}
        mixture = run["task"] == "mixture2d"
        assert (run["to_reachable_gap"] is not None) == mixture
        assert all(("reachable_gap" in row) == mixture for row in [*run["final"].values(), *run["curve"]])
    mixture, digits = results["tasks"]["mixture2d"], results["tasks"]["digits"]
    assert mixture["reachable"] == "j_best" and digits["reachable"] is None and digits["oracle"] == {}
    for n, ref in mixture["optimum"].items():
        # The three references on every grid, in their order (J_oracle <= J_best <= J*, within errors),
        # and the optimal control's row scored like an agent's.
        assert ref["j_oracle"] <= ref["j_best"] + 3 * ref["j_oracle_se"]
        assert ref["j_best"] <= ref["j_star"] + 3 * ref["j_star_se"]
        assert abs(ref["j_best_pretrained"] - ref["j_pretrained"]) < 4 * ref["j_pretrained_se"]
        row = mixture["oracle"][n]
        assert row["objective"] == ref["j_oracle"]
        # Against the lower reference J_best, a policy above J(pre) has the smaller gap, one below it the larger.
        assert (row["reachable_gap"] <= row["gap"]) == (row["objective"] >= ref["j_pretrained"])
        if n != "5":  # on a 5-step grid the continuous-time optimal control is no better than the pretrained model
            assert 0 <= row["reachable_gap"] < row["gap"] < 1
    report = (tiny_run / "report.md").read_text()
    assert "| optimal control |" in report and "J_best = " in report and "| J_oracle |" in report
    assert "queries to reachable gap 0.5" in report and "reachable gap" in report.split("**The suite's claims")[1]
    for rel in results["plots"]:
        assert (tiny_run / rel).stat().st_size > 10_000
    assert {"plots/curves.png", "plots/reward_kl.png", "plots/proxy_vs_gold.png"} <= set(results["plots"])
    assert (tiny_run / "report.md").read_text() == render(results)
    (sb3,) = [r for r in results["runs"] if r["zoo_agent"] == "sb3" and r["task"] == "mixture2d"]
    # The SB3 callback drove the learning curve: 0 queries, then the first batch at or past each of
    # 341, 1365 and 3072 queries (256 envs per batch).
    assert [p["reward_queries"] for p in sb3["curve"]] == [0, 512, 1536, 3072]


def test_the_external_zero_agent_scores_a_gap_of_one_at_every_grid(tiny_run):
    """The registered agent ran through the suite; as the pretrained sampler its normalized gap is 1
    at every grid, within 4 standard errors (the policy's and the optimum's samples are independent)."""
    results = json.loads((tiny_run / "results.json").read_text())
    (zero,) = [r for r in results["runs"] if r["agent"] == "zero" and r["task"] == "mixture2d"]
    for row in zero["final"].values():
        assert abs(row["gap"] - 1) < 4 * row["gap_se"]
        assert row["kl"] == 0


def test_report_is_generated_from_results_json(tiny_run, tmp_path):
    """Edit a number in results.json and rerun `python -m benchmarks report`: the report shows the
    edit, and is otherwise what the same JSON renders to."""
    results = json.loads((tiny_run / "results.json").read_text())
    edited = copy.deepcopy(results)
    run = next(r for r in edited["runs"] if r["agent"] == "ct_ppo" and r["task"] == "mixture2d")
    run["final"]["20"]["gap"] = 0.98765
    edited["device"] = "Some Accelerator 9000"
    for sub in ("samples", "tensorboard"):
        (tmp_path / sub).symlink_to(tiny_run / sub)
    (tmp_path / "results.json").write_text(json.dumps(edited))
    assert benchmarks_main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "0.988" in report and "Some Accelerator 9000" in report
    assert report == render(json.loads((tmp_path / "results.json").read_text()))
    assert report != (tiny_run / "report.md").read_text()
    for plot in edited["plots"]:
        assert (tmp_path / plot).exists()


def test_crossing_interpolates_the_first_crossing():
    curve = [
        {"reward_queries": 0, "seconds": 0.0, "gap": 1.0},
        {"reward_queries": 100, "seconds": 2.0, "gap": 0.6},
        {"reward_queries": 200, "seconds": 4.0, "gap": 0.4},
        {"reward_queries": 300, "seconds": 6.0, "gap": 0.7},
        {"reward_queries": 400, "seconds": 8.0, "gap": 0.05},
    ]
    assert crossing(curve, 0.5, "reward_queries") == pytest.approx(150)
    assert crossing(curve, 0.5, "seconds") == pytest.approx(3.0)
    assert crossing(curve, 0.1, "reward_queries") == pytest.approx(300 + 100 * 0.6 / 0.65)
    assert crossing(curve, 0.01, "reward_queries") is None


def _synthetic(q_ct, q_dd, off_ct, off_dd, gap_se=None, reachable=False):
    """results with ct_ppo and ddpo reaching gap 0.5 after q (per seed) and scoring `off` off-grid
    (gap 0.3 at the training grid, N = 20). With ``reachable``, those are the reachable gaps and the
    gaps against J* say something else (never reached, flat across grids)."""
    runs = []
    key = "reachable_gap" if reachable else "gap"
    for agent, qs, offs in (("ct_ppo", q_ct, off_ct), ("ddpo", q_dd, off_dd)):
        for seed, (q, off) in enumerate(zip(qs, offs, strict=True)):
            final = {"20": {key: 0.3}, "10": {key: off}, "50": {key: off}}
            if reachable:
                for row in final.values():
                    row["gap"] = 0.9
            if gap_se is not None:
                for row in final.values():
                    row[f"{key}_se_policy"] = gap_se
            to_gap = {"0.5": {"reward_queries": q, "seconds": 1.0}, "0.1": {"reward_queries": None, "seconds": None}}
            never = {g: {"reward_queries": None, "seconds": None} for g in ("0.5", "0.1")}
            run = {"task": "t", "agent": agent, "seed": seed, "n_train": 20, "final": final}
            run |= {"to_gap": never, "to_reachable_gap": to_gap} if reachable else {"to_gap": to_gap}
            runs.append(run | {"reward_queries": 10_000})
    task = {"reachable": "j_best" if reachable else None}
    claims = {"ours": "ct_ppo", "baselines": ["ddpo"], "stable": [], "threshold": 0.5, "stability_se": 3.0}
    return {"runs": runs, "gap_thresholds": [0.5, 0.1], "tasks": {"t": task}, "claims": claims}


def test_claims_state_the_answer_whichever_it_is():
    faster = claims(_synthetic([1000, 1010, 990], [2000, 2020, 1980], [0.3, 0.31, 0.29], [0.6, 0.62, 0.58]), "t", 20)
    assert "ct_ppo is more sample-efficient" in faster[0] and "ct_ppo is more robust" in faster[1]
    slower = claims(_synthetic([2000, 2020, 1980], [1000, 1010, 990], [0.6, 0.62, 0.58], [0.3, 0.31, 0.29]), "t", 20)
    assert "ct_ppo is less sample-efficient" in slower[0] and "ct_ppo is less robust" in slower[1]
    same = claims(_synthetic([1000, 2000, 1500], [1400, 1600, 1500], [0.3, 0.5, 0.4], [0.35, 0.45, 0.4]), "t", 20)
    assert "no significant difference" in same[0] and "not measurably more robust" in same[1]
    partial = claims(_synthetic([1000, 1000, None], [None, None, None], [0.3] * 3, [0.3] * 3), "t", 20)
    assert "ct_ppo reached it in more seeds" in partial[0] and "too few seeds" in partial[0]
    decisive = claims(_synthetic([1000, 1000], [None, None], [0.3] * 2, [0.3] * 2), "t", 20)
    assert "ct_ppo is the more sample-efficient here" in decisive[0]
    tie = claims(_synthetic([1000, None], [None, 900], [0.3] * 2, [0.3] * 2), "t", 20)
    assert "inconclusive" in tie[0]
    one_seed = claims(_synthetic([1000], [2000], [0.3], [0.6]), "t", 20)
    assert "ct_ppo needed fewer queries than ddpo, untested (no error bar)" in one_seed[0]
    assert "not measurably more robust across N than ddpo on this task (no error bar)" in one_seed[1]


def test_claims_compare_ours_with_the_strongest_agent_of_each_family():
    """With [claims] families, ours meets each family's agent of lowest final gap on the task (grpo,
    gap 0.2, over ddpo's 0.3), named once; a family with no agent but ours there says so."""
    results = _synthetic([2000, 2020, 1980], [1000, 1010, 990], [0.6, 0.62, 0.58], [0.3, 0.31, 0.29])
    for run in [r for r in results["runs"] if r["agent"] == "ddpo"]:
        results["runs"].append(copy.deepcopy(run) | {"agent": "grpo"})
        results["runs"][-1]["final"]["20"]["gap"] = 0.2
    results["claims"] |= {"baselines": [], "families": {"pg": ["ct_ppo", "ddpo", "grpo"], "solo": ["ct_ppo"]}}
    lines = claims(results, "t", 20)
    assert lines[0] == "The strongest of the pg family here (the lowest final gap): grpo."
    assert lines[1] == "The suite ran no agent of the solo family other than ct_ppo on this task."
    assert "**Sample efficiency, ct_ppo against grpo**" in lines[2] and "less sample-efficient" in lines[2]
    assert not any("against ddpo" in line for line in lines)
    results["claims"]["baselines"] = ["grpo"]  # a baseline that is also a family's strongest: compared once
    assert sum("**Sample efficiency" in line for line in claims(results, "t", 20)) == 1


def test_claims_use_the_reachable_gap_where_the_task_has_one():
    """With a reachable reference, the claims read the reachable gap (whose crossings and profile
    across grids differ from the gap against J* here), and say so."""
    results = _synthetic([1000, 1010, 990], [2000, 2020, 1980], [0.3, 0.31, 0.29], [0.6, 0.62, 0.58], reachable=True)
    faster = claims(results, "t", 20)
    assert "ct_ppo is more sample-efficient" in faster[0] and "reachable gap of 0.5" in faster[0]
    assert "ct_ppo is more robust" in faster[1] and "by the reachable gap" in faster[1]


def test_two_seeds_need_a_t_test_and_monte_carlo_errors_bound_the_spread():
    """Two seeds per agent, worst rises 0.01 +- 0.01 against 0.05 +- 0.01: 2.8 combined errors apart,
    which a normal rule would call, but Welch's t with 2 degrees of freedom (critical value 4.3) does
    not. When the seeds agree by chance (no spread), each run's Monte Carlo error (0.05 per grid) sets
    the error instead, and a difference of 0.04 is within it."""
    spread_only = claims(_synthetic([1000, 1100], [1000, 1100], [0.30, 0.32], [0.34, 0.36]), "t", 20)
    assert "not measurably more robust" in spread_only[1] and "t, 2.0 d.o.f." in spread_only[1]
    lucky = claims(_synthetic([1000, 1000], [1000, 1000], [0.30, 0.30], [0.34, 0.34], gap_se=0.05), "t", 20)
    assert "not measurably more robust" in lucky[1] and "normal" in lucky[1]


def test_per_class_diversity_is_the_mean_within_class_distance():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 has one sample: skipped
    assert per_class_diversity(features, labels) == pytest.approx((5.0 + 4.0 / 3.0) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        per_class_diversity(features[:1], labels[:1])


def test_kl_front_of_gaussian_rewards_has_the_closed_form():
    """r ~ N(0, 1) tilted by exp(r / c) is N(1 / c, 1): E r = 1 / c and KL = 1 / (2 c^2). With 400,000
    samples the reweighted estimates agree to 0.02 for c >= 0.7 (effective sample size > 5,000)."""
    r = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    coefs = np.array([0.7, 1.0, 2.0, 5.0])
    kl, reward = kl_front(r, coefs)
    np.testing.assert_allclose(reward, 1 / coefs, atol=0.02)
    np.testing.assert_allclose(kl, 1 / (2 * coefs**2), atol=0.02)
    kl_small, _ = kl_front(r, np.array([0.05]))  # ESS far below 200: dropped
    assert len(kl_small) == 0


@pytest.mark.parametrize(("task", "batch"), [("mixture2d", 512), ("digits", 20), ("flow_mixture", 512)])
def test_throughput_compares_the_env_with_a_raw_loop_of_the_same_model(task, batch):
    """Same seed, same model: the env and the hand-written loop end at the same samples, to float64
    rounding (1e-13 here; in float32 their different operation orders leave ~1e-4 on 8-D flows)."""
    m = measure(task, batch=batch, steps=5, repeats=1, dtype="float64")
    assert m["max_diff"] < 1e-10
    assert m["env_rate"] > 0 and m["raw_rate"] > 0 and math.isfinite(m["ratio"])


def test_resume_keeps_finished_runs_and_refuses_a_changed_task(tiny_run, tmp_path):
    from benchmarks.run import run_suite

    (tmp_path / "tiny.toml").write_text(TINY)
    for sub in ("samples", "tensorboard"):
        (tmp_path / sub).symlink_to(tiny_run / sub)
    (tmp_path / "results.json").write_text((tiny_run / "results.json").read_text())
    before = json.loads((tiny_run / "results.json").read_text())
    register_agent("zero", ZeroAgent, ZeroConfig, search={"lr": [1e-3]})
    try:
        after = run_suite(load_suite(tmp_path / "tiny.toml"), "cpu", tmp_path, resume=True)
        assert after["runs"] == before["runs"]  # nothing left to run: every run kept as it was
        # An agent's settings on one task: its runs there are redone, the task's references and the
        # other runs kept.
        (tmp_path / "tiny.toml").write_text(TINY + "[tasks.mixture2d.agent_settings.ddpo]\nlr = 3e-4\n")
        after = run_suite(load_suite(tmp_path / "tiny.toml"), "cpu", tmp_path, resume=True)
        redone = {r["id"] for r in before["runs"] if r["task"] == "mixture2d" and r["agent"] == "ddpo"}
        assert redone and [r for r in after["runs"] if r["id"] not in redone] == [
            r for r in before["runs"] if r["id"] not in redone
        ]
        assert {r["id"] for r in after["runs"]} == {r["id"] for r in before["runs"]}
        assert after["tasks"]["mixture2d"]["optimum"] == before["tasks"]["mixture2d"]["optimum"]
        assert next(r for r in after["runs"] if r["id"] in redone)["config"]["lr"] == 3e-4
        (tmp_path / "tiny.toml").write_text(TINY.replace("eval_n = 8192", "eval_n = 4096"))
        with pytest.raises(ValueError, match="changed"):
            run_suite(load_suite(tmp_path / "tiny.toml"), "cpu", tmp_path, resume=True)
    finally:
        AGENTS.pop("zero")


@pytest.mark.parametrize("name", ["quick-cpu", "full-cpu"])
def test_committed_reports_are_their_results_json_rendered(name):
    """benchmarks/results/ holds the figures RESULTS.md quotes: each report must be what its
    results.json renders to with the current report code."""
    from pathlib import Path

    directory = Path(__file__).parents[1] / "benchmarks" / "results" / name
    results = json.loads((directory / "results.json").read_text())
    assert (directory / "report.md").read_text() == render(results)
    assert all((directory / p).exists() for p in results["plots"])


@pytest.mark.parametrize("name", ["quick-cpu", "full-cpu"])
def test_no_committed_objective_exceeds_the_best_policy_of_its_grid(name):
    """J_best(N) is the best any policy of the env can do on grid N: in the committed results no agent's
    J (nor the optimal control's) exceeds it by more than 3 standard errors (J*, where a task has no
    J_best)."""
    from pathlib import Path

    results = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / name / "results.json").read_text())
    checked = 0
    for run in results["runs"]:
        for n, row in run["final"].items():
            ref = results["tasks"][run["task"]]["optimum"][n]
            refs = References.from_row(ref)
            bound, err = (refs.j_best.mean, refs.j_best.se) if refs.j_best else (ref["j_star"], ref["j_star_se"])
            assert row["objective"] <= bound + 3 * math.hypot(row["objective_se"], err), (run["id"], n)
            checked += 1
    for task in results["tasks"].values():
        for n, row in task["oracle"].items():
            ref = task["optimum"][n]
            refs = References.from_row(ref)
            bound, err = (refs.j_best.mean, refs.j_best.se) if refs.j_best else (ref["j_star"], ref["j_star_se"])
            assert row["objective"] <= bound + 3 * math.hypot(row["objective_se"], err)
            checked += 1
    assert checked == sum(len(run["final"]) for run in results["runs"]) + sum(
        len(task["oracle"]) for task in results["tasks"].values()
    )
    assert checked > 0


def test_discrimination_measures_are_exact_on_known_inputs():
    """Headroom in pretrained standard deviations, the curve's gap at a query count (linear
    interpolation), and the detectable difference: with two agents of k seeds and pooled sd s it is
    ``(t_{0.975, df} + t_{0.8, df}) s sqrt(2 / k)``, df = 2 (k - 1)."""
    from scipy import stats as st

    o = {"j_star": 2.0, "j_pretrained": 1.0, "j_pretrained_se": 0.01, "n": 10_000}
    assert headroom(o) == pytest.approx(1.0, rel=1e-12)
    run = {
        "curve": [
            {"reward_queries": 0, "gap": 1.0},
            {"reward_queries": 100, "gap": 0.5},
            {"reward_queries": 300, "gap": 0.1},
        ]
    }
    assert gap_at(run, 50, "gap") == pytest.approx(0.75) and gap_at(run, 200, "gap") == pytest.approx(0.3)
    assert math.isnan(gap_at(run, 400, "gap"))
    a, b = [100.0, 120.0, 140.0], [200.0, 220.0, 240.0]  # sd 20 each
    expected = (st.t.ppf(0.975, 4) + st.t.ppf(0.8, 4)) * 20.0 * math.sqrt(2 / 3)
    assert detectable_difference([a, b]) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(detectable_difference([[5.0]]))
    ratio, verdict = saturation_verdict(0.6, 0.2)
    assert ratio == pytest.approx(3.0) and "does not saturate" in verdict
    assert "saturates early" in saturation_verdict(0.25, 0.2)[1]
    assert "budget is short" in saturation_verdict(0.9, 0.8)[1]
    assert "not informative" in saturation_verdict(0.3, -0.01)[1]


def test_the_report_flags_q_learning_below_the_pretrained_model():
    """The discrimination lines of the committed quick results state q-learning's lowest curve point
    in standard errors from J(pre), and whether the -3 bound holds, on every task it ran."""
    from pathlib import Path

    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/quick-cpu/results.json").read_text())
    tasks = {r["task"] for r in results["runs"] if r["agent"] == "ct_q_learning"}
    assert tasks
    for key in tasks:
        n_train = results["tasks"][key]["n_train"][0]
        lines = discrimination(results, key, n_train)
        assert lines[0].startswith("**Does this task discriminate?** Headroom")
        q_line = next(line for line in lines if line.startswith("ct_q_learning stability"))
        runs = [r for r in results["runs"] if r["agent"] == "ct_q_learning" and r["task"] == key]
        o = results["tasks"][key]["optimum"][str(n_train)]
        worst = min(
            (p["objective"] - o["j_pretrained"]) / math.hypot(p["objective_se"], o["j_pretrained_se"])
            for r in runs
            for p in r["curve"]
        )
        assert f"{worst:.1f} standard errors" in q_line and ("DOES NOT HOLD" in q_line) == (worst < -3)


def test_the_report_describes_the_curve_of_an_agent_that_ends_below_the_pretrained_model():
    """An agent whose final J is more than 3 s.e. below J(pre) gets a line with the seed-mean curve's
    lowest point, the proxy and KL moves that led there and where it ends; one within 3 s.e. gets none.
    On the committed quick results SB3 PPO on mixture8 is such an agent, and the report says so."""
    from pathlib import Path

    def run(objectives: list[float], final: float) -> dict:
        curve = [
            {"reward_queries": 100 * i, "objective": j, "proxy": 1.0 + 0.1 * i, "kl": 0.5 * i}
            for i, j in enumerate(objectives)
        ]
        return {"reward_queries": 200, "curve": curve, "final": {"5": {"objective": final, "objective_se": 0.01}}}

    pre = Estimate(1.0, 0.01, 1000)
    low = {"a": [run([1.0, 0.4, 0.70], 0.70), run([1.0, 0.6, 0.72], 0.72)], "b": [run([1.0, 1.1, 1.2], 0.99)] * 2}
    (line,) = below_pretrained(low, 5, pre, 3.0)
    z = (0.71 - 1.0) / math.hypot(0.01, 0.01)
    assert line.startswith(f"a ends below J(pre): J 0.710 ± 0.010 against 1.000 ± 0.010 ({z:.1f} s.e.) at its 200")
    assert "lowest at 100 queries (J 0.500: proxy +0.100, KL +0.50 nats" in line
    assert "climbing back to J 0.710 at the end (KL 1.00 nats)" in line
    assert below_pretrained({"a": [run([1.0, 0.99, 0.99], 0.99)] * 2}, 5, pre, 3.0) == []

    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/quick-cpu/results.json").read_text())
    report = (Path(__file__).parents[1] / "benchmarks/results/quick-cpu/report.md").read_text()
    lines = [x for x in discrimination(results, "mixture8", 20) if "ends below J(pre)" in x]
    assert [x.split()[0] for x in lines] == ["sb3_ppo"] and f"- {lines[0]}" in report


def test_the_report_states_the_detectable_difference_in_final_gap_on_every_task():
    """Every task of the committed quick results gets the smallest detectable difference of final
    gaps: the two-sample formula at each agent's own seed spread of final gaps, the median over
    agents (one noisy agent does not set it), so a task where no agent crosses the threshold in
    every seed still says what its seeds can resolve."""
    from pathlib import Path

    from benchmarks.report import claim_gap

    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/quick-cpu/results.json").read_text())
    for key, task in results["tasks"].items():
        n_train = task["n_train"][0]
        gap_key = claim_gap(task)
        by_agent: dict[str, list[float]] = {}
        for r in results["runs"]:
            if r["task"] == key and r["n_train"] == n_train:
                by_agent.setdefault(r["agent"], []).append(r["final"][str(n_train)][gap_key])
        expected = statistics.median(detectable_difference([g, g]) for g in by_agent.values())
        line = next(
            x for x in discrimination(results, key, n_train) if x.startswith("Detectable difference at the end")
        )
        assert math.isfinite(expected) and f"differ by about {expected:.3f}" in line, (key, line)


def test_an_agent_registered_from_outside_is_searched_and_named_in_the_claims(tiny_run):
    """The zero agent, defined in this file and registered with one call that brings its search grid,
    is the suite's "ours" against ddpo: the report states the claims with its name (nothing under
    diffusion_gym/ or benchmarks/ knows it), and agents.tune would search it on every task."""
    from agents.tuning import searches

    results = json.loads((tiny_run / "results.json").read_text())
    assert results["claims"] == {
        "ours": "zero",
        "baselines": ["ddpo"],
        "families": {"policy_gradient": ["ddpo", "sb3_ppo"]},
        "stable": ["zero"],
        "threshold": 0.5,
        "stability_se": 3.0,
    }
    report = (tiny_run / "report.md").read_text()
    assert "**Sample efficiency, zero against ddpo**" in report
    assert "**Robustness across N, zero against ddpo**" in report
    assert "zero stability: its lowest learning-curve point" in report
    assert "ct_ppo against" not in report  # the report names what the suite names, nothing else
    # the families side by side: every agent of the task in one row under its family (ct_ppo and zero,
    # in none, under "(none)", never bold), the family's lowest final gap in bold and compared with ours
    table = report.split("The algorithm families side by side")[1].split("**The suite's claims")[0]
    for family, agent in (("policy_gradient", "ddpo"), ("policy_gradient", "sb3_ppo"), ("(none)", "ct_ppo")):
        assert (
            sum(f"| {family} | {agent} |" in row or f"| {family} | **{agent}** |" in row for row in table.split("\n"))
            == 1
        )
    assert "| (none) | **" not in table
    finals = {r["agent"]: r["final"]["10"]["reachable_gap"] for r in results["runs"] if r["task"] == "mixture2d"}
    best = min(("ddpo", "sb3_ppo"), key=finals.__getitem__)
    assert f"| policy_gradient | **{best}** |" in table
    if best != "ddpo":
        assert f"**Sample efficiency, zero against {best}**" in report
    assert searches("DiffusionSDE-v0")["zero"].grid == {"lr": [1e-3]}
    assert searches("DiffusionSDE-Digits-v0")["zero"].agent == "zero"


def test_claims_must_name_agents_of_the_suite(tmp_path):
    base = TINY.split("[tasks.mixture2d]")[1]
    head = 'seeds = 1\nagents = ["ct_ppo", "ddpo"]\n'
    for table, message in (
        ('[claims]\nours = "ct_ppo"\nbaselines = ["dpok"]\n', "does not run"),
        ('[claims]\nours = "ct_ppo"\n', "baselines or families must name at least one agent other than ours"),
        ('[claims]\nours = "ct_ppo"\nfamilies = { pg = ["ct_ppo"] }\n', "at least one agent other than ours"),
        ('[claims]\nours = "ct_ppo"\nbaselines = ["ct_ppo"]\n', "must not name ours"),
        ('[claims]\nours = "ct_ppo"\nfamilies = { a = ["ddpo"], b = ["ddpo"] }\n', "'ddpo' is in both 'a' and 'b'"),
        ('[claims]\nours = "ct_ppo"\nfamilies = { pg = "ddpo" }\n', "families: expected a table"),
        ('[claims]\nours = "ct_ppo"\nfamilies = { pg = ["dpok"] }\n', "does not run"),
        ('[claims]\nours = "ct_ppo"\nbaselines = ["ddpo"]\nthreshold = 0.3\n', "threshold: expected one of 0.5, 0.1"),
        ('[claims]\nours = "ct_ppo"\nbaselines = ["ddpo"]\nagainst = "x"\n', r"unknown fields \['against'\]"),
    ):
        (tmp_path / "s.toml").write_text(head + table + "[tasks.mixture2d]" + base.split("[tasks.digits]")[0])
        with pytest.raises(ValueError, match=message):
            load_suite(tmp_path / "s.toml")


AGENT_NAMES = ("ct_ppo", "ddpo", "dpok", "sb3", "ct_q_learning")


def test_no_module_outside_agents_names_an_agent():
    """The library and the benchmark programs know no agent by name (suites and docs aside): adding an
    agent touches agents/ alone."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    files = [*sorted((root / "diffusion_gym").rglob("*.py")), *sorted((root / "benchmarks").glob("*.py"))]
    assert len(files) > 40
    found = [
        f"{path.relative_to(root)}:{i}: {name}"
        for path in files
        for i, line in enumerate(path.read_text().splitlines(), 1)
        for name in AGENT_NAMES
        if name in line
    ]
    assert found == []


def _reference_rows() -> list[tuple[str, dict]]:
    """Every grid's references in the committed results and in the tasks' shipped tables."""
    from importlib.resources import files
    from pathlib import Path

    from diffusion_gym.tasks import TASKS

    rows = []
    for name in ("quick-cpu", "full-cpu"):
        path = Path(__file__).parents[1] / "benchmarks" / "results" / name / "results.json"
        for key, task in json.loads(path.read_text())["tasks"].items():
            rows += [(f"{name}/{key}/N{n}", row) for n, row in task["optimum"].items()]
    for spec in TASKS.values():
        if spec.references is not None:
            package, _, table = spec.references.partition(":")
            entries = json.loads((files(package) / table).read_text())["entries"]
            rows += [(f"{spec.name}/{e['config']}", e) for e in entries]
    return rows


def test_the_references_agree_on_every_committed_and_shipped_grid():
    """J_oracle <= J_best + 3 s.e. and J_best <= J* + 3 s.e. (J_oracle <= J* + 3 s.e. where there is no
    J_best) on every grid of the committed results and of the shipped tables: the optimal control is
    a policy of the env's action class, J_best the best of them, J* the optimum over all path measures."""
    rows = _reference_rows()
    assert len(rows) > 20
    for where, row in rows:
        refs = References.from_row(row)
        star = refs.optimum.j_star
        if refs.j_best is not None:
            assert refs.j_best.mean <= star.mean + 3 * math.hypot(refs.j_best.se, star.se), where
        upper = refs.j_best or star
        if refs.j_oracle is not None:
            assert refs.j_oracle.mean <= upper.mean + 3 * math.hypot(refs.j_oracle.se, upper.se), where


def test_a_suite_includes_shared_settings_under_its_own(tmp_path):
    """``include`` merges a shared file's tables under the suite's (the suite's keys win), so settings
    two suites share are written once; the shipped suites share their digits settings this way."""
    (tmp_path / "shared.toml").write_text("[tasks.mixture2d.agent_settings.ddpo]\nlr = 1e-4\nclip = 0.2\n")
    body = TINY.split("[tasks.digits]")[0]
    body = body.replace('agents = ["ct_ppo", "ddpo", "zero", "sb3_ppo"]', 'agents = ["ddpo"]')
    body = body.split("[claims]")[0] + "[tasks.mixture2d]" + body.split("[tasks.mixture2d]")[1]
    suite = 'include = ["shared.toml"]\n' + body + "[tasks.mixture2d.agent_settings.ddpo]\nclip = 0.05\n"
    (tmp_path / "s.toml").write_text(suite)
    assert load_suite(tmp_path / "s.toml").tasks["mixture2d"].agent_settings["ddpo"] == {"lr": 1e-4, "clip": 0.05}
    (tmp_path / "s.toml").write_text(suite.replace("shared.toml", "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_suite(tmp_path / "s.toml")
    quick, full = load_suite("quick"), load_suite("full")
    for label in ("ct_ppo", "ddpo", "dpok", "ct_q_learning"):
        assert quick.tasks["digits"].agent_settings[label] == full.tasks["digits"].agent_settings[label]


def test_rescore_takes_the_claims_of_the_suite_file_once_every_agent_they_name_ran(tiny_run):
    """Claims follow from the results: a rescore replaces recorded claims by the suite file's (here:
    results that predate its families) and records that it did; a second rescore changes nothing."""
    from benchmarks.rescore import rescore

    results = json.loads((tiny_run / "results.json").read_text())
    recorded = dict(results["claims"])
    assert recorded["families"]
    results["claims"] = recorded | {"families": {}}
    register_agent("zero", ZeroAgent, ZeroConfig)
    try:
        rescore(results, "rescore once")
        rescore(results, "rescore twice")
    finally:
        AGENTS.pop("zero")
    assert results["claims"] == recorded
    assert [r["claims"] for r in results["rescores"]] == [True, False]


def test_rescore_recomputes_every_gap_from_the_references_and_reads_older_results(tiny_run):
    """``benchmarks rescore`` on results in the older layout (J_best's error and cells under their
    former names, no claims) with a J* moved: every final and curve gap is the references' gap of the
    recorded objective, the crossings follow the new curve, the rows are rewritten in the new names,
    claims of a suite whose file is gone are left out with a warning, and each rescore is recorded."""
    from benchmarks.rescore import rescore

    results = json.loads((tiny_run / "results.json").read_text())
    results |= {"schema_version": 2, "claims": None}
    task = results["tasks"]["mixture2d"]
    for row in task["optimum"].values():
        row["j_best_error"], row["j_best_cells"] = row.pop("j_best_se"), row.pop("j_best_n")
        row["j_star"] += 0.05
    with pytest.warns(UserWarning, match="file is not usable, the claims recorded stay"):
        changed = rescore(results, "rescore once")
    assert changed == []  # neither tiny task ships references for these grids
    assert results["schema_version"] == 3 and results["claims"] is None
    for n, row in task["optimum"].items():
        assert "j_best_se" in row and "j_best_error" not in row and "j_best_cells" not in row
        refs = References.from_row(row)
        assert refs.j_best is not None and refs.j_best.n == 96**2
        if n in task["oracle"]:
            oracle = task["oracle"][n]
            assert oracle["gap"] == refs.gaps(Estimate(oracle["objective"], oracle["objective_se"], 1))["gap"]
    for run in (r for r in results["runs"] if r["task"] == "mixture2d"):
        refs = References.from_row(task["optimum"][str(run["n_train"])])
        for point in run["curve"]:
            expected = refs.gaps(Estimate(point["objective"], point["objective_se"], 1))
            assert point["gap"] == expected["gap"] and point["reachable_gap"] == expected["reachable_gap"]
        assert run["to_gap"]["0.5"]["reward_queries"] == crossing(run["curve"], 0.5, "reward_queries")
        for n, row in run["final"].items():
            grid = References.from_row(task["optimum"][n])
            assert row["gap_se"] == grid.gaps(Estimate(row["objective"], row["objective_se"], 1))["gap_se"]
    with pytest.warns(UserWarning):
        rescore(results, "rescore twice")
    assert [r["command"] for r in results["rescores"]] == ["rescore once", "rescore twice"]


def test_twin_groups_pair_a_base_model_family_or_sampler_on_the_same_data():
    """The report's twin tables: the VP and flow-matching digits models (``model="flow"``) and the VP
    mixture with its flow twin are twins; another dimension or training grid is not."""
    from benchmarks.report import twin_groups

    def task(env, n_train=(10,), **kwargs):
        return {"env": env, "env_kwargs": kwargs, "n_train": list(n_train)}

    tasks = {
        "digits": task("DiffusionSDE-Digits-v0"),
        "digits_flow": task("DiffusionSDE-Digits-v0", model="flow"),
        "digits_thin": task("DiffusionSDE-Digits-v0", utility="alignment"),
        "mixture8": task("DiffusionSDE-Mixture-v0", (20,), dim=8, integrator="exponential"),
        "flow8": task("DiffusionSDE-FlowMixture-v0", (20,), dim=8, noise_level=0.7),
        "flow2": task("DiffusionSDE-FlowMixture-v0", (20,), dim=2, noise_level=0.7),
        "mixture8_n50": task("DiffusionSDE-Mixture-v0", (50,), dim=8),
    }
    groups = sorted(sorted(g) for g in twin_groups({"tasks": tasks}))
    assert groups == [["digits", "digits_flow"], ["flow8", "mixture8"]]


def test_a_task_takes_another_tasks_agent_settings(tmp_path, monkeypatch):
    """``agent_settings_from``: a twin task starts from another's per-task settings (for the agents
    it runs), its own over them; a task that is not there is refused, naming the choices."""
    table = """
env = "DiffusionSDE-v0"
n_train = [4]
num_envs = 8
reward_queries = 16
curve_points = 2
curve_n = 8
eval_steps = [4]
eval_n = 8
optimum_n = 8
"""
    body = (
        f'seeds = 1\nagents = ["zero"]\n[tasks.a]{table}[tasks.a.agent_settings.zero]\nnum_envs = 4\n'
        f"[tasks.a.agent_settings.zero.cpu]\nreward_queries = 8\n[tasks.b]{table}"
        'agent_settings_from = "%s"\n'
    )
    monkeypatch.setitem(AGENTS, "zero", (ZeroAgent, ZeroConfig))
    path = tmp_path / "twins.toml"
    path.write_text(body % "a")
    suite = load_suite(path, "cpu")
    settings = {"zero": {"num_envs": 4, "reward_queries": 8}}
    assert suite.tasks["b"].agent_settings == suite.tasks["a"].agent_settings == settings
    assert {(r.task.key, r.num_envs, r.reward_queries) for r in suite.runs()} == {("a", 4, 8), ("b", 4, 8)}
    path.write_text(body % "c")
    with pytest.raises(ValueError, match=r"task 'b' agent_settings_from is 'c'; expected one of \['a'\]"):
        load_suite(path, "cpu")

"""Runs that cannot be silently wrong: every input checked at the boundary, each error naming the field
or file, before any work; checkpoints and results that know what run they belong to.

The cases are a new user's mistakes (issue 21's probe), one or more per class: agent configs, CLI
options, env and task keywords, suite fields (tests/test_benchmarks.py), results and references
files, checkpoints resumed under another run, and an output folder holding another suite's results.
"""

import json
import math
from typing import Literal

import numpy as np
import pytest
import torch

import diffusion_gym  # noqa: F401
from agents import AGENTS
from agents.common.build import build_agent, make_config, make_env
from agents.train import main as train_main
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.results_file import read_results
from benchmarks.run import OUTPUTS, check_out, prepare_out
from diffusion_gym.validation import NonNegativeFloat, PositiveFloat, PositiveInt, Seed, argument, coerce

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


# ---------------------------------------------------------------------------------------------------
# The rule.


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        ("no", bool, False),
        ("OFF", bool, False),
        ("yes", bool, True),
        ("on", bool, True),
        (1, bool, True),
        (np.bool_(False), bool, False),
        (5, PositiveInt, 5),
        (np.int64(7), PositiveInt, 7),
        (3, PositiveFloat, 3.0),
        ([64, 32], tuple[PositiveInt, ...], (64, 32)),
        (None, str | None, None),
        ("per_step", Literal["global", "per_step"], "per_step"),
        (0, NonNegativeFloat, 0.0),
    ],
)
def test_values_are_coerced_to_their_annotation(value, hint, expected):
    out = coerce(value, hint, "field")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        (True, PositiveInt, "an integer >= 1, got True"),  # n_steps=True is not a 1-step env
        (2.7, PositiveInt, "an integer >= 1, got 2.7"),  # seeds = 2.7 is not 2 seeds
        (2.0, int, "an integer, got 2.0"),
        (0, PositiveInt, "an integer >= 1, got 0"),
        (True, NonNegativeFloat, "a finite number >= 0, got True"),  # kl_coef=True is not 1.0
        (math.nan, float, "a finite number, got nan"),
        (math.inf, float, "a finite number, got inf"),
        (-1, PositiveFloat, "> 0, got -1"),
        ("abc", PositiveFloat, "got 'abc'"),
        ("maybe", bool, "a boolean (true/false, yes/no, on/off, 1/0), got 'maybe'"),
        (2, bool, "a boolean"),
        (-1, Seed, "an integer >= 0 and <= 18446744073709551615, got -1"),
        (64, tuple[PositiveInt, ...], "a list of integers >= 1, got 64"),
        (["x"], tuple[PositiveInt, ...], "a list of integers >= 1"),
        ("GLOBAL", Literal["global", "per_step"], "one of 'global', 'per_step', got 'GLOBAL'"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_what_it_accepts(value, hint, message):
    with pytest.raises(ValueError) as err:
        coerce(value, hint, "the_field")
    assert str(err.value).startswith("the_field: expected ") and message in str(err.value)


def test_cli_values_parse_once_by_the_options_annotation():
    import argparse

    assert argument(list[PositiveInt])("10,20,50") == [10, 20, 50]
    assert argument(list[PositiveInt])("[4]") == [4]
    assert argument(PositiveFloat)("3e-4") == 3e-4
    for hint, text in ((PositiveInt, "0"), (PositiveInt, "2.5"), (list[PositiveInt], "10,x"), (Seed, "-1")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected .*, got '{text}'"):
            argument(hint)(text)


# ---------------------------------------------------------------------------------------------------
# Agent configs: every agent, every class of field.


BAD_FIELDS = [
    ("max_grad_norm", -1, "expected a finite number > 0"),  # flipped every gradient (J -128.9)
    ("lr", "abc", "expected a finite number >= 0, got 'abc'"),
    ("lr", math.nan, "expected a finite number >= 0, got nan"),
    ("lr", -1e-3, "expected a finite number >= 0, got -0.001"),
    ("seed", -1, "expected an integer >= 0"),
    ("hidden", [64, "x"], "expected a list of integers >= 1"),
    ("anneal_lr", "maybe", "expected a boolean"),
    ("lora_rank", 0, "expected an integer >= 1"),
    ("epochs", 0, "expected an integer >= 1"),  # trained "with no update"
    ("clip", -1, "expected a finite number > 0"),
    ("minibatches", 1.5, "expected an integer >= 1"),
    ("critic_pretrain_queries", -5, "expected an integer >= 0"),
    ("advantage_norm", "batch", "expected one of 'global', 'per_step'"),
    ("temperature", 0, "expected a finite number > 0"),
    ("gamma", 1.5, "expected a finite number > 0 and <= 1"),
    ("algorithm", "a2c", "expected one of 'ppo', 'sac'"),
    ("gauss_hermite", 0, "expected an integer >= 1"),
]


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_config_refuses_bad_values_naming_the_field(name):
    config_cls = AGENTS[name][1]
    fields = set(config_cls.__dataclass_fields__)
    tried = 0
    for field, value, message in BAD_FIELDS:
        if field not in fields:
            continue
        with pytest.raises(ValueError) as err:
            make_config(name, {field: value})
        assert f"{config_cls.__name__}.{field}: {message}" in str(err.value), (field, str(err.value))
        tried += 1
    assert tried >= 6  # the shared fields at least
    config = make_config(name, {"anneal_lr": "no", "progress": "off", "hidden": [16, 16]})
    assert config.anneal_lr is False and config.progress is False and config.hidden == (16, 16)
    with pytest.raises(ValueError, match=rf"{name} config: unknown fields \['lr_'\]"):
        make_config(name, {"lr_": 1e-3})


def test_train_cli_refuses_bad_settings_before_any_work(tmp_path, capsys):
    """Strings the shell gives (``no``, ``off``) become booleans; a bad value or env keyword stops the
    command before a reward is queried, naming what is wrong."""
    base = ["--agent", "ddpo", "--n-steps", "4", "--num-envs", "8", "--reward-queries", "8", "--eval-n", "16"]
    base += ["--env-kwargs", "integrator=exponential"]
    result = train_main(base + ["--set", "anneal_lr=no", "progress=off"])
    assert result["config"]["anneal_lr"] is False and result["config"]["progress"] is False
    for extra, named in (
        (["--set", "epochs=0"], "DDPOConfig.epochs: expected an integer >= 1, got 0"),
        (["--set", "clip=-1"], "DDPOConfig.clip: expected a finite number > 0, got -1"),
        (["--set", "lr=1e-3", "lr=3e-4"], "--set: lr is given twice"),
        (["--num-envs", "0"], "argument --num-envs: expected an integer >= 1, got '0'"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0"),
        (["--reward-queries", "32.5"], "argument --reward-queries: expected an integer >= 1, got '32.5'"),
    ):
        with pytest.raises(SystemExit):
            train_main(base + extra)
        assert named in capsys.readouterr().err, extra
    for kwargs, named in (
        ("kl_coef=True", "DiffusionSDE-v0: kl_coef: expected a finite number >= 0, got True"),
        ("n_steps=True", "DiffusionSDE-v0: n_steps: expected an integer >= 1, got True"),
        ("colour=1", "DiffusionSDE-v0: unknown keyword 'colour'; the task and its env take ["),
    ):
        with pytest.raises(SystemExit):
            train_main(base[:-1] + [kwargs])
        assert named in capsys.readouterr().err, kwargs
    with pytest.raises(SystemExit):
        train_main(base + ["--env", "DiffusionSDE-Nope-v0"])
    assert "no task 'DiffusionSDE-Nope-v0'; registered: [" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Env and task keywords.


@pytest.mark.parametrize(
    ("env_id", "kwargs", "message"),
    [
        ("DiffusionSDE-v0", {"n_steps": True}, "n_steps: expected an integer >= 1, got True"),
        ("DiffusionSDE-v0", {"n_steps": 2.5}, "n_steps: expected an integer >= 1, got 2.5"),
        ("DiffusionSDE-v0", {"kl_coef": True}, "kl_coef: expected a finite number >= 0, got True"),
        ("DiffusionSDE-v0", {"kl_coef": math.inf}, "kl_coef: expected a finite number >= 0, got inf"),
        ("DiffusionSDE-v0", {"grid": [[0.0, 0.5], [0.6, 0.9]]}, r"grid must be one-dimensional .* shape \(2, 2\)"),
        ("DiffusionSDE-v0", {"eps": 0}, "eps: expected a finite number > 0, got 0"),
        ("DiffusionSDE-v0", {"obs_bound": -1}, "obs_bound: expected a finite number > 0"),
        ("DiffusionSDE-v0", {"action_scale": True}, "action_scale: expected a finite number or a function"),
        ("DiffusionSDE-v0", {"integrator": "euler"}, "integrator: expected one of 'euler_maruyama'"),
        ("DiffusionSDE-v0", {"record_transitions": "maybe"}, "record_transitions: expected a boolean"),
        ("DiffusionSDE-v0", {"render_mode": "human"}, "render_mode: expected one of 'rgb_array' or None"),
        ("DiffusionSDE-v0", {"reward": "gld"}, "reward: expected one of 'proxy', 'gold', got 'gld'"),
        ("DiffusionSDE-v0", {"dtype": "int8"}, r"dtype must be one of \['float32', 'float64'\]"),
        ("DiffusionSDE-v0", {"autocast": "float32"}, r"autocast must be one of \['bfloat16', 'float16'\]"),
        ("DiffusionSDE-v0", {"autoreset_mode": "sometimes"}, "autoreset_mode must be one of NEXT_STEP"),
        ("DiffusionSDE-Mixture-v0", {"dim": True}, "dim: expected an integer >= 2, got True"),
        ("DiffusionSDE-Mixture-v0", {"dim": 8.0}, "dim: expected an integer >= 2, got 8.0"),
        ("DiffusionSDE-Digits-v0", {"guidance_scale": math.nan}, "guidance_scale: expected a finite number, got nan"),
        ("DiffusionSDE-Digits-v0", {"guidance_scale": -math.inf}, "guidance_scale: expected a finite number"),
    ],
)
def test_env_keywords_are_refused_naming_the_env_and_the_keyword(env_id, kwargs, message):
    import gymnasium as gym

    with pytest.raises(ValueError, match=f"{env_id}: {message}"):
        make_env(env_id, 4, **kwargs)
    if "autoreset_mode" not in kwargs:  # the batched env's keyword alone
        with pytest.raises(ValueError, match=message):
            gym.make(env_id, **kwargs)


def test_the_single_env_refuses_the_batched_envs_autoreset_mode():
    import gymnasium as gym

    with pytest.raises(ValueError, match="autoreset_mode is the batched env's keyword"):
        gym.make("DiffusionSDE-v0", autoreset_mode="same_step")
    with pytest.raises(ValueError, match="flatten: expected a boolean"):
        gym.make("DiffusionSDE-v0", flatten="sometimes")


def test_both_envs_refuse_a_seed_torch_would_wrap_around():
    import gymnasium as gym

    batched = make_env("DiffusionSDE-v0", 4, n_steps=3)
    single = gym.make("DiffusionSDE-v0", n_steps=3)
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match="seed: expected an integer >= 0"):
            batched.reset(seed=bad)
        with pytest.raises((ValueError, gym.error.Error)):
            single.reset(seed=bad)
    assert torch.isfinite(batched.reset(seed=2**64 - 1)[0]["x"]).all()


# ---------------------------------------------------------------------------------------------------
# Checkpoints that know their run.


def _trained(tmp_path, **kwargs):
    env = make_env("DiffusionSDE-Mixture-v0", kwargs.pop("num_envs", 16), **({"n_steps": 5, "dim": 8} | kwargs))
    agent = build_agent("ddpo", env, {"progress": False})
    path = tmp_path / "ddpo.pt"
    agent.learn(16, checkpoint=path)
    return path


@pytest.mark.parametrize(
    ("env_id", "kwargs", "named"),
    [
        ("DiffusionSDE-Mixture-v0", {"n_steps": 10, "dim": 8}, r"env.n_steps: 5 there, 10 here"),
        ("DiffusionSDE-Mixture-v0", {"n_steps": 5, "dim": 8, "kl_coef": 0.5}, r"env.kl_coef: 1.0 there, 0.5 here"),
        ("DiffusionSDE-Mixture-v0", {"n_steps": 5, "dim": 8, "num_envs": 32}, r"env.num_envs: 16 there, 32 here"),
        ("DiffusionSDE-Mixture-v0", {"n_steps": 5, "dim": 2}, r"env.configuration.dim: 8 there, 2 here"),
        ("DiffusionSDE-Mixture-v0", {"n_steps": 5, "dim": 8, "reward": "gold"}, r"env.weights_sha256: "),
        ("DiffusionSDE-v0", {"n_steps": 5}, r"env.task: 'DiffusionSDE-Mixture-v0' there, 'DiffusionSDE-v0' here"),
    ],
)
def test_a_checkpoint_refuses_to_resume_another_run_naming_the_field(tmp_path, env_id, kwargs, named):
    path = _trained(tmp_path)
    num_envs = kwargs.pop("num_envs", 16)
    other = build_agent("ddpo", make_env(env_id, num_envs, **kwargs), {"progress": False})
    with pytest.raises(ValueError, match=rf"ddpo.pt: checkpoint of another run: .*{named}"):
        other.load(path)
    same = build_agent("ddpo", make_env("DiffusionSDE-Mixture-v0", 16, n_steps=5, dim=8), {"progress": False})
    assert same.load(path).reward_queries == 16
    again = build_agent(
        "ddpo", make_env("DiffusionSDE-Mixture-v0", 16, n_steps=5, dim=8), {"progress": False, "seed": 1}
    )
    with pytest.raises(ValueError, match=r"config.seed: 0 there, 1 here"):
        again.load(path)


def test_the_train_cli_refuses_to_resume_under_another_grid(tmp_path):
    args = ["--agent", "ddpo", "--num-envs", "16", "--n-steps", "4", "--reward-queries", "16", "--eval-n", "16"]
    args += ["--env-kwargs", "integrator=exponential", "--set", "progress=False"]
    args += ["--checkpoint", str(tmp_path / "c.pt")]
    train_main(args)
    before = (tmp_path / "c.pt").read_bytes()
    with pytest.raises(ValueError, match=r"c.pt: checkpoint of another run: .*n_steps: 4 there, 8 here"):
        train_main(args[:5] + ["8"] + args[6:])
    with pytest.raises(ValueError, match=r"num_envs: 16 there, 32 here"):
        train_main(args[:3] + ["32"] + args[4:])
    assert (tmp_path / "c.pt").read_bytes() == before  # not overwritten


# ---------------------------------------------------------------------------------------------------
# Results files and output folders.


def test_a_results_folder_is_never_replaced_without_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    (out / "tensorboard" / "run").mkdir(parents=True)
    (out / "plots").mkdir()
    (out / "results.json").write_text(json.dumps({"schema_version": 3, "suite": "full", "tasks": {}, "runs": []}))
    (out / "report.md").write_text("old")
    (out / "samples" / "old.pt").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        benchmarks_main(["run", "--suite", "quick", "--out", str(out)])
    assert "results.json already holds suite 'full': --resume continues it, --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmarks_main(["run", "--suite", "quick", "--out", str(out), "--resume", "--overwrite"])
    assert "give one" in capsys.readouterr().err
    check_out(out, resume=True, overwrite=False)  # resuming is allowed here (run_suite checks the suite)
    prepare_out(out, resume=False, overwrite=True)
    assert not any((out / name).exists() for name in OUTPUTS) and (out / "notes.txt").read_text() == "mine"
    check_out(out, resume=False, overwrite=False)  # nothing left to protect
    check_out(tmp_path / "fresh", resume=False, overwrite=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema_version": 3, "suite": "quick", "tas', r"is not valid JSON \(truncated or overwritten\?\)"),
        ("\x00\x01garbage", "is not valid JSON"),
        ("[1, 2]", r"is not a suite's results \(a JSON object\), it holds a list"),
        ('{"schema_version": 1, "suite": "quick", "tasks": {}, "runs": []}', "has schema_version 1; this version"),
        ('{"suite": "quick", "tasks": {}, "runs": []}', "has schema_version None"),
        ('{"schema_version": 3, "suite": "q", "tasks": {}}', r"results has no \['runs'\]"),
    ],
)
def test_a_bad_results_file_is_refused_naming_it(tmp_path, capsys, content, message):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_results(tmp_path)
    assert str(tmp_path / "results.json") in str(err.value)
    for command in ("report", "rescore"):
        with pytest.raises(SystemExit):
            benchmarks_main([command, str(tmp_path)])
        assert str(tmp_path / "results.json") in capsys.readouterr().err


def test_a_results_run_without_its_final_scores_is_refused_naming_the_run(tmp_path):
    from pathlib import Path

    results = read_results(Path(__file__).parents[1] / "benchmarks" / "results" / "quick-cpu")
    del results["runs"][3]["final"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match=rf"run '{results['runs'][3]['id']}' has no \['final'\]"):
        read_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="no results file"):
        read_results(tmp_path / "nowhere")


def test_a_config_annotated_with_a_type_checking_only_name_checks_the_rest():
    """An external agent's config may name a type its module imports only for type checkers: that
    field goes unchecked, every other field is checked as ever (no NameError from the mechanism)."""
    from dataclasses import dataclass

    from agents.common.agent import AgentConfig

    @dataclass
    class ExternalConfig(AgentConfig):
        width: PositiveInt = 3
        table: "UnimportedMapping | None" = None  # noqa: F821  (a name only type checkers see)

    config = ExternalConfig(width=5, anneal_lr="no", table={"a": 1})
    assert config.width == 5 and config.anneal_lr is False and config.table == {"a": 1}
    with pytest.raises(ValueError, match="ExternalConfig.width: expected an integer >= 1, got 0"):
        ExternalConfig(width=0)

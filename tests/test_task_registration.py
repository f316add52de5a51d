"""A task added from outside the package: one TaskSpec registered from this test module is enough for
``gym.make``, the benchmarks' suite runner, the tuning grids and the throughput benchmark."""

import json
from dataclasses import replace

import gymnasium as gym
import pytest
from torch import Tensor, nn

import diffusion_gym  # noqa: F401  (registers the built-in tasks)
from agents.tuning import budget, searches
from benchmarks.env_throughput import measure
from benchmarks.suite import load_suite
from diffusion_gym.sde import LinearVPSchedule
from diffusion_gym.tasks import TASKS, TaskSpec, get_task, register_task


class StandardNormalScore(nn.Module):
    """Data ~ N(0, I) in 3 dimensions: under a VP schedule every marginal is N(0, I), score ``-x``."""

    event_shape = (3,)

    def __init__(self) -> None:
        super().__init__()
        self.schedule = LinearVPSchedule()

    def score(self, s: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -x


class Bump(nn.Module):
    """``r(x) = -||x - c||^2 / 2``, a reward the agents can move towards."""

    def __init__(self, centre: float) -> None:
        super().__init__()
        self.centre = centre

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -0.5 * (x - self.centre).square().sum(1)


def toy_models(centre: float = 1.0) -> tuple[StandardNormalScore, Bump, Bump]:
    """The toy task: base N(0, I_3), reward and gold a bump at ``centre * (1, 1, 1)``."""
    return StandardNormalScore(), Bump(centre), Bump(centre)


TOY = TaskSpec(
    name="toy_normal",
    env_id="ToyNormal-v0",
    models=f"{__name__}:toy_models",
    defaults={"n_steps": 6, "integrator": "exponential", "kl_coef": 1.0},
    throughput=((64, 6),),
)

SUITE = """
seeds = 1
agents = ["ddpo", "ct_ppo"]

[tasks.toy]
env = "ToyNormal-v0"
env_kwargs = { centre = 0.5 }
n_train = [6]
num_envs = 64
reward_queries = 128
curve_points = 1
curve_n = 128
eval_steps = [6, 12]
eval_n = 256
optimum_n = 1024
"""


@pytest.fixture
def toy_task():
    register_task(TOY)
    try:
        yield TOY
    finally:
        TASKS.pop(TOY.name)
        gym.envs.registration.registry.pop(TOY.env_id)


def test_a_registered_task_is_a_gym_env_with_its_defaults_and_kwargs(toy_task):
    assert get_task("ToyNormal-v0") is get_task("toy_normal") is toy_task
    venv = gym.make_vec("ToyNormal-v0", num_envs=8, vectorization_mode="vector_entry_point", centre=2.0).unwrapped
    assert venv.n_steps == 6 and venv.integrator == "exponential" and venv.reward_model.centre == 2.0
    obs, _ = venv.reset(seed=0)
    assert obs["x"].shape == (8, 3)
    env = gym.make("ToyNormal-v0", n_steps=3)
    env.reset(seed=0)
    for _ in range(3):
        _, reward, terminated, _, _ = env.step(env.action_space.sample())
    assert terminated and isinstance(reward, float)
    assert register_task(TOY) is TOY  # the same spec again: nothing to do (a module imported twice)
    assert "ToyNormal-v0" in env.spec.to_json()  # string entry points: the env's spec serialises
    changed = replace(TOY, defaults={**TOY.defaults, "n_steps": 4})
    with pytest.raises(ValueError, match="registered"):
        register_task(changed)
    register_task(changed, override=True)  # a new version of the task replaces the old one
    assert get_task("toy_normal") is changed and gym.make("ToyNormal-v0").unwrapped.batched.n_steps == 4
    register_task(TOY, override=True)


def test_variant_defaults_follow_the_task_keyword_they_depend_on():
    """A default that depends on one of the task's own keywords (digits' integrator on ``model``):
    applied for that value only, under an explicit keyword, in the env and in the configuration
    shipped references are keyed by."""
    spec = replace(TOY, variant_defaults={"centre": {2.0: {"n_steps": 4, "integrator": "ddpm"}}})
    assert spec.defaults_for({}) == TOY.defaults == spec.defaults_for({"centre": 0.5})
    assert spec.defaults_for({"centre": 2.0}) == {**TOY.defaults, "n_steps": 4, "integrator": "ddpm"}
    env = spec.make_vector_env(2, centre=2.0)
    assert (env.n_steps, env.integrator) == (4, "ddpm")
    assert spec.make_vector_env(2, centre=2.0, n_steps=5).n_steps == 5
    assert spec.configuration({"centre": 2.0})["n_steps"] == 4 and spec.configuration({})["n_steps"] == 6
    assert get_task("digits").configuration({"model": "flow"})["integrator"] == "flow_sde"
    assert get_task("digits").configuration({})["integrator"] == "exponential"


@pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")  # the throughput benchmark's 6 coarse steps
def test_a_registered_task_runs_a_tiny_suite_and_the_runners(toy_task, tmp_path):
    from benchmarks.run import run_suite

    (tmp_path / "toy.toml").write_text(SUITE)
    results = run_suite(load_suite(tmp_path / "toy.toml"), "cpu", tmp_path / "out")
    assert [run["id"] for run in results["runs"]] == ["toy/ddpo/N6/seed0", "toy/ct_ppo/N6/seed0"]
    task = results["tasks"]["toy"]
    assert set(task["optimum"]) == {"6", "12"} and task["reachable"] is None  # no J_best, no oracle here
    assert all(run["image"] is None and set(run["final"]) == {"6", "12"} for run in results["runs"])
    for run in results["runs"]:
        assert all(row["gap_se"] > 0 and abs(row["gap"]) < 10 for row in run["final"].values())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"][0]["env"] == "ToyNormal-v0" and (tmp_path / "out" / "report.md").exists()
    # The throughput sizes come from the spec; a task knows no agents: no tuning file, no searches.
    from agents.tuning import REGISTERED

    assert set(searches("ToyNormal-v0")) == set(REGISTERED) and budget("ToyNormal-v0") == {}
    m = measure("toy_normal", batch=64, steps=6, repeats=1)
    assert m["env_id"] == "ToyNormal-v0" and m["max_diff"] < 1e-5


def models_with_a_device(device: str = "cpu") -> tuple[StandardNormalScore, Bump, Bump]:
    return toy_models()


def models_with_kwargs(**kwargs) -> tuple[StandardNormalScore, Bump, Bump]:
    return toy_models()


def test_task_references_resolve_lazily_and_report_bad_ones():
    spec = TaskSpec(name="broken", env_id="Broken-v0", models="no_such_module:models")
    with pytest.raises(ModuleNotFoundError):
        spec.make_vector_env(2)
    with pytest.raises(ValueError, match="module:attribute"):
        TaskSpec(name="bad", env_id="Bad-v0", models="no_colon").make_vector_env(2)
    with pytest.raises(KeyError, match="no task"):
        get_task("Nope-v0")
    assert get_task("DiffusionSDE-v0").features() is None
    # A task parameter the env also takes, or **kwargs, would make routing ambiguous.
    with pytest.raises(TypeError, match="device"):
        TaskSpec(name="t", env_id="T-v0", models=f"{__name__}:models_with_a_device").make_vector_env(2)
    with pytest.raises(TypeError, match="kwargs"):
        TaskSpec(name="t", env_id="T-v0", models=f"{__name__}:models_with_kwargs").make_vector_env(2)


def test_no_library_module_imports_a_task_or_a_runner():
    """Layering: the env library (sde, kernel, envs, evaluation, references) never imports a task, an
    agent or a benchmark; tasks never import agents or benchmarks."""
    import ast
    from pathlib import Path

    root = Path(diffusion_gym.__file__).parent
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
            if not isinstance(node, ast.ImportFrom) or node.module
        }
        assert not {m for m in imported if m.split(".")[0] in ("agents", "benchmarks")}, rel
        if not rel.startswith("tasks/") and rel != "__init__.py":
            assert not {m for m in imported if m.startswith("diffusion_gym.tasks")}, rel


def models_with_a_new_keyword(centre: float = 1.0, temperature: float = 1.0) -> tuple[StandardNormalScore, ...]:
    """A model family with a keyword no task had before: it changes the law until declared neutral."""
    return toy_models(centre)


def test_law_keys_are_derived_and_every_keyword_is_a_law_key_or_declared_neutral():
    """A task's configuration (what shipped references are keyed by) is every keyword of its models
    function and of the env except those declared neutral, so a new keyword counts until declared."""
    import inspect

    from diffusion_gym.envs.vector import CONTROL_KEYWORDS, LAW_NEUTRAL, DiffusionSDEVectorEnv
    from diffusion_gym.tasks import resolve

    env_keywords = {
        k for k, p in inspect.signature(DiffusionSDEVectorEnv).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    assert LAW_NEUTRAL | CONTROL_KEYWORDS <= env_keywords  # a renamed keyword must not hide as "neutral"
    for spec in TASKS.values():
        params = set(inspect.signature(resolve(spec.models)).parameters)
        assert set(spec.law_neutral) <= params, spec.name
        keys = set(spec.law_keys())
        assert {"n_steps", "integrator", "kl_coef", "dtype"} <= keys and not keys & (LAW_NEUTRAL | CONTROL_KEYWORDS)
    spec = replace(TOY, models=f"{__name__}:models_with_a_new_keyword")
    assert "temperature" in spec.law_keys() and spec.configuration({})["temperature"] == 1.0
    assert spec.configuration({"temperature": 2.0}) != spec.configuration({})
    assert spec.configuration({"device": "cpu", "record_transitions": True}) == spec.configuration({})
    assert spec.control_configuration({"action_scale": 2.0}) == {"action_scale": 2.0}


def test_shipped_references_match_the_configuration_and_the_action_box():
    """The mixture task ships J*, J(pre) and J_oracle: another law finds none, another action box keeps
    J* and J(pre) (the pretrained law is the same) but not J_oracle (another action class)."""
    task = get_task("mixture")
    entry = task.shipped_references({"dim": 8, "n_steps": 20})
    assert entry is not None and entry["j_oracle_n"] >= 4096 and entry["oracle"]["objective"] == entry["j_oracle"]
    assert task.shipped_references({"dim": 8, "n_steps": 20, "kl_coef": 0.5}) is None
    assert task.shipped_references({"dim": 8, "n_steps": 20, "integrator": "ddpm"}) is None
    boxed = task.shipped_references({"dim": 8, "n_steps": 20, "action_scale": 2.0})
    assert boxed is not None and "j_oracle" not in boxed and "oracle" not in boxed
    assert boxed["j_star"] == entry["j_star"]


def test_every_shipped_file_matches_its_recorded_sha256():
    """Each task package's SHA256SUMS.json lists every file it ships (weights, metadata, references),
    and the bytes match."""
    from importlib.resources import files
    from pathlib import Path

    from diffusion_gym.checkpoints import MANIFEST, sha256
    from diffusion_gym.tasks import TASKS
    from diffusion_gym.tasks.manifest import shipped_files

    checked = 0
    for spec in TASKS.values():
        shipped = shipped_files(spec)
        if not shipped:
            continue
        root = Path(str(files(spec.package)))
        table = json.loads((root / MANIFEST).read_text())["files"]
        assert sorted(table) == sorted(p.relative_to(root).as_posix() for p in shipped), spec.name
        for name, entry in table.items():
            assert sha256(root / name) == entry["sha256"], name
            assert entry["command"].startswith("python -m diffusion_gym."), name
            checked += 1
    assert checked >= 20


def test_a_flipped_byte_in_a_shipped_file_is_an_error_naming_it(tmp_path):
    """A copy of the mixture package's weights and manifest with one byte flipped: loading the proxy
    (and reading its metadata, and the references table) names the file and the regenerating command."""
    import shutil
    from importlib.resources import files
    from pathlib import Path

    from diffusion_gym.checkpoints import MANIFEST, load_weights, read_metadata, verify_shipped

    root = Path(str(files("diffusion_gym.tasks.mixture")))
    copy = tmp_path / "mixture"
    shutil.copytree(root / "weights", copy / "weights")
    shutil.copy(root / MANIFEST, copy / MANIFEST)
    shutil.copy(root / "references.json", copy / "references.json")
    weights = copy / "weights" / "mixture_d8_proxy.safetensors"
    assert load_weights(weights, "the proxy")  # intact: loads
    for target in (weights, copy / "weights" / "mixture_d8_proxy.json", copy / "references.json"):
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        named = f"{target.name} does not match the sha256.*(train_proxy|tasks.references)"
        with pytest.raises(ValueError, match=named):
            verify_shipped(target)
    with pytest.raises(ValueError, match="mixture_d8_proxy.safetensors does not match.*train_proxy"):
        load_weights(weights, "the proxy")
    with pytest.raises(ValueError, match="mixture_d8_proxy.json does not match"):
        read_metadata(weights, "the proxy")
    verify_shipped(tmp_path / "unlisted.bin")  # a file no manifest lists is the user's own: no check


def test_a_task_whose_references_are_missing_warns(toy_task):
    spec = replace(TOY, name="toy_missing", env_id="ToyMissing-v0", references="diffusion_gym.tasks.mixture:nope.json")
    with pytest.warns(UserWarning, match="nope.json, which is missing"):
        assert spec.shipped_references({}) is None


PACKAGE = """
import json
from pathlib import Path

import torch
from torch import nn

from diffusion_gym.sde import LinearVPSchedule


class Base(nn.Module):
    event_shape = (3,)

    def __init__(self):
        super().__init__()
        self.schedule = LinearVPSchedule()

    def score(self, s, x, cond=None):
        return -x


class Bump(nn.Module):
    def __init__(self, centre):
        super().__init__()
        self.register_buffer("centre", torch.tensor(centre))

    def forward(self, x, cond=None):
        return -0.5 * (x - self.centre).square().sum(1)


def models(proxy: str = "a"):
    centre = json.loads((Path(__file__).parent / "weights" / f"{proxy}.json").read_text())["centre"]
    return Base(), Bump(centre), None
"""


def test_shipped_references_go_stale_with_the_weights_their_configuration_loads(tmp_path, monkeypatch):
    """An entry records the sha256 of the weights its configuration loads (the env identity's): a file
    added beside them, or another configuration's proxy retrained, leaves it valid; its own proxy
    retrained makes it stale."""
    import sys

    from diffusion_gym.envs.identity import env_identity

    root = tmp_path / "toy_refs_pkg"
    (root / "weights").mkdir(parents=True)
    (root / "__init__.py").write_text(PACKAGE)
    for proxy, centre in (("a", 1.0), ("b", 2.0)):
        (root / "weights" / f"{proxy}.json").write_text(json.dumps({"centre": centre}))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = TaskSpec(
        name="toy_refs",
        env_id="ToyRefs-v0",
        models="toy_refs_pkg:models",
        defaults={"n_steps": 6, "integrator": "exponential"},
        references="toy_refs_pkg:references.json",
    )
    entries = [
        {"config": spec.configuration({"proxy": p}), "j_star": 1.0, "models_sha256": spec.models_sha256({"proxy": p})}
        for p in ("a", "b")
    ]
    (root / "references.json").write_text(json.dumps({"entries": entries}))
    assert spec.models_sha256({"proxy": "a"}) != spec.models_sha256({"proxy": "b"})
    assert spec.models_sha256({"proxy": "a"}) == env_identity(spec.make_vector_env(2, proxy="a"))["weights_sha256"]
    assert spec.shipped_references({"proxy": "a"})["j_star"] == 1.0

    (root / "weights" / "c.json").write_text(json.dumps({"centre": 3.0}))  # a model added beside them
    (root / "weights" / "b.json").write_text(json.dumps({"centre": 2.25}))  # another configuration's, retrained
    assert spec.shipped_references({"proxy": "a"}) is not None
    assert spec.shipped_references({"proxy": "b"}) is None
    (root / "weights" / "a.json").write_text(json.dumps({"centre": 1.25}))
    assert spec.shipped_references({"proxy": "a"}) is None
    sys.modules.pop("toy_refs_pkg", None)

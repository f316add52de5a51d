"""The environment contract (docs/design.md, section 2): registration, checkers, spaces, seeding, bad input."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import diffusion_gym  # noqa: F401
from diffusion_gym.tasks.mixture2d.env import make_env, make_vector_env

# Short episodes keep these tests fast; the coarse-grid warning of Euler-Maruyama is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


CHECKED = [("DiffusionSDE-v0", {}), ("DiffusionSDE-FlowMixture-v0", {"dim": 2, "n_steps": 10})]
"""The VP task at its defaults and the flow task (its velocity model, the flow SDE)."""


@pytest.mark.parametrize("env_id, kwargs", CHECKED)
def test_gymnasium_check_env_passes_without_warnings(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(env_id, **kwargs).unwrapped)


@pytest.mark.parametrize("env_id, kwargs", CHECKED)
def test_sb3_check_env_passes_without_warnings(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(gym.make(env_id, **kwargs))


def test_namespaced_make_and_spaces():
    env = gym.make("diffusion_gym:DiffusionSDE-v0", n_steps=7)
    assert env.observation_space["x"].shape == (2,) and env.observation_space["t"].shape == (1,)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, info = env.reset(seed=0)
    assert isinstance(obs["x"], np.ndarray) and obs["x"].dtype == np.float32 and info == {}
    assert obs["t"][0] == 0.0
    for k in range(7):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(reward, float) and terminated == (k == 6) and truncated is False
        assert obs in env.observation_space
    assert obs["t"][0] == pytest.approx(1.0 - 1e-3)
    assert set(info) >= {"t", "dt", "kl", "clipped", "terminal_reward", "gold_reward", "objective", "kl_total"}


def test_make_vec_returns_torch_and_make_returns_numpy():
    venv = gym.make_vec("DiffusionSDE-v0", num_envs=1024, vectorization_mode="vector_entry_point", n_steps=5)
    assert isinstance(venv, gym.vector.VectorEnv) and venv.num_envs == 1024
    obs, _ = venv.reset(seed=0)
    assert isinstance(obs["x"], torch.Tensor) and obs["x"].shape == (1024, 2) and obs["t"].shape == (1024, 1)
    obs, reward, terminated, truncated, info = venv.step(torch.zeros(1024, 2))
    for value in (obs["x"], reward, terminated, truncated, info["kl"], info["t"]):
        assert isinstance(value, torch.Tensor) and value.shape[0] == 1024
    assert venv.observation_space["x"].shape == (1024, 2)
    obs, _ = gym.make("DiffusionSDE-v0").reset(seed=0)
    assert isinstance(obs["x"], np.ndarray)


def test_single_and_batched_give_identical_trajectories():
    """Same seed, same actions (some out of bounds): bit-identical states, rewards and infos."""
    single, batched = make_env(n_steps=12), make_vector_env(1, n_steps=12)
    rng = np.random.default_rng(0)
    obs_s, _ = single.reset(seed=11)
    obs_b, _ = batched.reset(seed=11)
    for _ in range(12):
        np.testing.assert_array_equal(obs_s["x"], obs_b["x"][0].numpy())
        np.testing.assert_array_equal(obs_s["t"], obs_b["t"][0].numpy())
        action = rng.uniform(-1.5, 1.5, size=2).astype(np.float32)
        obs_s, r_s, term_s, _, info_s = single.step(action)
        obs_b, r_b, term_b, _, info_b = batched.step(torch.from_numpy(action)[None])
        assert r_s == r_b.item() and term_s == term_b.item()
        stats = ("episode", "_episode")  # seconds differ between two envs; the rest is the same row
        assert {k: v for k, v in info_s.items() if k not in stats} == {
            k: v[0].item() for k, v in info_b.items() if k not in stats
        }
        if "episode" in info_b:
            assert info_s["episode"]["r"] == info_b["episode"]["r"].item() == info_s["objective"]
    assert term_s
    np.testing.assert_array_equal(obs_s["x"], obs_b["x"][0].numpy())


def test_seeding_is_reproducible_and_seeds_differ():
    env = make_vector_env(64, n_steps=5)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    unseeded = [make_vector_env(8, n_steps=2).reset()[0]["x"] for _ in range(2)]
    assert not torch.equal(*unseeded)  # fresh entropy when no seed is given
    for bad in ([1, 2], -1, 2**64, True, 3.0):  # one generator for all rows; torch would wrap -1 to 2**64 - 1
        with pytest.raises(ValueError, match="seed: expected an integer >= 0"):
            env.reset(seed=bad)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(3, np.float32), r"expected an action of shape \(2,\), got \(3,\)"),
        (np.zeros((1, 2), np.float32), r"expected an action of shape \(2,\), got \(1, 2\)"),
        (np.array(["a", "b"]), "real numbers"),
        (np.array([1 + 1j, 0]), "real numbers"),
        (np.array([object(), object()]), "real numbers"),
        (np.array([np.nan, 0.0], np.float32), "finite"),
        (np.array([0.0, np.inf], np.float32), "finite"),
        (np.array([-np.inf, 0.0]), "finite"),
    ],
)
def test_single_env_rejects_bad_actions(action, message):
    env = make_env(n_steps=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (torch.zeros(4, 3), r"expected actions of shape \(4, 2\), got \(4, 3\)"),
        (torch.zeros(2), r"expected actions of shape \(4, 2\), got \(2,\)"),
        (torch.zeros(4, 2, dtype=torch.complex64), "real numbers"),
        (torch.zeros(4, 2, dtype=torch.bool), "real numbers"),
        (torch.tensor([[float("nan"), 0.0]] * 4), "finite"),
        (torch.tensor([[0.0, float("inf")]] * 4), "finite"),
    ],
)
def test_batched_env_rejects_bad_actions(action, message):
    env = make_vector_env(4, n_steps=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize(
    "action",
    [
        np.array([1, 0]),
        [1.0, 0.0],
        np.array([1.0, 0.0], np.float64),
        np.array([1.0, 0.0], ">f4"),  # non-native byte order
        np.array([0.0, 1.0], np.float32)[::-1],  # reversed strides
        np.broadcast_to(np.array([1.0, 0.0], np.float32), (2,)),  # read-only
        torch.tensor([1, 0]),
    ],
    ids=["int", "list", "float64", "big-endian", "reversed", "read-only", "torch-int"],
)
def test_castable_actions_give_the_float32_result(action):
    results = []
    for a in (np.array([1.0, 0.0], np.float32), action):
        env = make_env(n_steps=3)
        env.reset(seed=0)
        obs, reward, *_ = env.step(a)
        results.append((obs["x"], reward))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_large_finite_float64_actions_are_clipped_not_rejected():
    env = make_env(n_steps=3)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1e300, -1e300]))
    assert info["clipped"] == 2


def test_env_never_moves_the_callers_models():
    """Two envs of different precision on one model: each keeps its own, the caller's is untouched."""
    from diffusion_gym.envs.vector import DiffusionSDEVectorEnv
    from diffusion_gym.tasks.mixture2d.model import mixture_2d
    from diffusion_gym.tasks.mixture2d.rewards import load_proxy

    model, proxy = mixture_2d(), load_proxy()
    env32 = DiffusionSDEVectorEnv(4, model, proxy, n_steps=3)
    env64 = DiffusionSDEVectorEnv(4, model, proxy, n_steps=3, dtype="float64")
    assert model.means.dtype == torch.float32 and next(proxy.parameters()).dtype == torch.float32
    assert env32.score_model is model  # already right: shared, not copied
    for env, dtype in ((env32, torch.float32), (env64, torch.float64)):
        env.reset(seed=0)
        obs, reward, *_ = env.step(torch.zeros(4, 2))
        assert obs["x"].dtype == dtype and reward.dtype == dtype


def test_out_of_bounds_actions_are_clipped_and_counted():
    env = make_vector_env(3, n_steps=4, dtype="float64")
    clipped_env = make_vector_env(3, n_steps=4, dtype="float64")
    env.reset(seed=5)
    clipped_env.reset(seed=5)
    action = torch.tensor([[2.0, 0.5], [-3.0, -7.0], [0.2, 1.0]], dtype=torch.float64)
    obs, reward, _, _, info = env.step(action)
    obs_c, reward_c, _, _, info_c = clipped_env.step(action.clamp(-1, 1))
    assert info["clipped"].tolist() == [1, 2, 0] and info_c["clipped"].tolist() == [0, 0, 0]
    assert torch.equal(obs["x"], obs_c["x"]) and torch.equal(reward, reward_c)


def test_step_before_reset_and_after_termination_raise():
    env = make_env(n_steps=2)
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(np.zeros(2, np.float32))
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    _, _, terminated, _, _ = env.step(np.zeros(2, np.float32))
    assert terminated
    with pytest.raises(ResetNeeded, match="episode ended"):
        env.step(np.zeros(2, np.float32))
    env.reset()
    env.step(np.zeros(2, np.float32))  # fine again


def test_deferred_finiteness_check_raises_at_episode_end_or_reset():
    """With sync_checks=False (the default off-CPU) a NaN action is caught at the last step, or at a
    reset that abandons the episode; NaN is not counted as clipped."""
    env = make_vector_env(4, n_steps=3, sync_checks=False)
    env.reset(seed=0)
    _, _, _, _, info = env.step(torch.tensor([[float("nan"), 2.0]] * 4))
    assert info["clipped"].tolist() == [1, 1, 1, 1]
    env.step(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN or inf during this episode"):
        env.step(torch.zeros(4, 2))
    env.reset(seed=0)
    env.step(torch.full((4, 2), float("inf")))
    with pytest.raises(ValueError, match="this reset abandons"):
        env.reset(seed=0)
    env.reset(seed=0)  # the flag was reported once and cleared


def test_autoreset_modes():
    from gymnasium.vector import AutoresetMode

    zero = torch.zeros(2, 2)
    nxt = make_vector_env(2, n_steps=2)
    assert nxt.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    nxt.reset(seed=0)
    nxt.step(zero)
    nxt.step(zero)
    obs, reward, terminated, _, info = nxt.step(zero)
    assert obs["t"].eq(0).all() and reward.eq(0).all() and not terminated.any() and info == {}

    same = make_vector_env(2, n_steps=2, autoreset_mode="SameStep")
    same.reset(seed=0)
    same.step(zero)
    obs, reward, terminated, _, info = same.step(zero)
    assert terminated.all() and obs["t"].eq(0).all()
    assert info["final_obs"]["t"].eq(1 - 1e-3).all() and "objective" in info["final_info"]
    assert info["_final_obs"].all() and info["_final_info"].all()

    off = make_vector_env(2, n_steps=1, autoreset_mode=AutoresetMode.DISABLED)
    off.reset(seed=0)
    off.step(zero)
    with pytest.raises(ResetNeeded):
        off.step(zero)


def test_returned_tensors_do_not_alias_env_state():
    env = make_vector_env(3, n_steps=3)
    obs, _ = env.reset(seed=0)
    obs["x"].fill_(100.0)
    obs["t"][0] = 9.0
    obs2, _, terminated, _, info = env.step(torch.zeros(3, 2))
    assert obs2["x"].abs().max() < 50 and obs2["t"][0, 0].item() == pytest.approx(env.grid[1].item())
    info["t"][0] = 7.0
    terminated[0] = True
    obs3, _, terminated, _, info = env.step(torch.zeros(3, 2))
    assert info["t"][0].item() == pytest.approx(env.grid[1].item()) and not terminated.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_steps": 0}, "n_steps"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"kl_coef": float("nan")}, "kl_coef"),
        ({"dtype": torch.int32}, "dtype"),
        ({"dtype": "float16"}, "dtype"),
        ({"integrator": "rk4"}, "integrator"),
        ({"grid": [0.0, 0.5, 0.4]}, "increasing"),
        ({"action_scale": 0.0}, "action_scale"),
        ({"action_scale": lambda t: 1.0 - 2 * t}, "action_scale"),
        ({"autoreset_mode": "sometimes"}, "sometimes"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_vector_env(2, **kwargs)
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env(0)


def test_custom_grid_and_time_dependent_action_scale():
    grid = [0.0, 0.5, 0.8, 0.9, 0.99]
    env = make_vector_env(2, grid=grid, action_scale=lambda t: 1.0 + t, dtype="float64")
    assert env.n_steps == 4
    torch.testing.assert_close(env.discretization.action_scale, torch.tensor([1.0, 1.5, 1.8, 1.9], dtype=torch.float64))
    env.reset(seed=0)
    _, _, _, _, info = env.step(torch.ones(2, 2, dtype=torch.float64))
    expected = env.discretization.constants[0].kl_weight * 2 * 1.0**2
    torch.testing.assert_close(info["kl"], torch.full((2,), expected, dtype=torch.float64))
    assert info["dt"][0].item() == pytest.approx(0.5)


def test_vector_env_conventions_outside_libraries_expect():
    """Gymnasium's ``call`` / ``get_attr`` / ``set_attr`` (one entry per environment; the rows share
    every attribute), ``autoreset_mode`` in any spelling with the accepted ones listed when wrong, and
    the per-episode statistics where ``RecordEpisodeStatistics`` puts them (batched, single and SB3
    envs alike)."""
    from gymnasium.vector import AutoresetMode

    from diffusion_gym.envs import SB3VecEnv

    venv = make_vector_env(4, n_steps=3)
    assert venv.get_attr("kl_coef") == (1.0,) * 4 and venv.call("n_steps") == (3,) * 4
    venv.set_attr("kl_coef", 0.5)
    venv.set_attr("kl_coef", [0.5] * 4)
    assert venv.kl_coef == 0.5
    with pytest.raises(ValueError, match="share one value"):
        venv.set_attr("kl_coef", [0.5, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="expected one value or 4"):
        venv.set_attr("kl_coef", [0.5, 0.5])
    for bad in ("no_such_attribute", "_k"):
        with pytest.raises(AttributeError, match=bad):
            venv.get_attr(bad)
    venv.reset(seed=0)
    for _ in range(3):
        _, reward, _, _, info = venv.step(torch.zeros(4, 2))
    assert venv.call("render") == (None,) * 4  # no render mode: render() returns None, once
    assert torch.equal(info["episode"]["r"], info["objective"]) and info["_episode"].all()
    assert info["episode"]["l"].tolist() == [3] * 4 and (info["episode"]["t"] >= 0).all()

    for spelling in ("SAME_STEP", "same_step", "Same-Step", "SameStep", AutoresetMode.SAME_STEP):
        env = make_vector_env(2, autoreset_mode=spelling)
        assert env.autoreset_mode is AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match="NEXT_STEP .*SAME_STEP .*DISABLED"):
        make_vector_env(2, autoreset_mode="sometimes")

    single = gym.make("DiffusionSDE-v0", n_steps=2)
    single.reset(seed=0)
    single.step(single.action_space.sample() * 0)
    *_, info = single.step(single.action_space.sample() * 0)
    assert set(info["episode"]) == {"r", "l", "t"} and info["episode"]["r"] == pytest.approx(info["objective"])
    assert info["episode"]["l"] == 2 and "_episode" not in info

    sb3 = SB3VecEnv(make_vector_env(2, n_steps=2))
    sb3.reset()
    for _ in range(2):
        *_, infos = sb3.step(np.zeros((2, 2), dtype=np.float32))
    assert [row["episode"]["l"] for row in infos] == [2, 2]
    assert [row["episode"]["r"] for row in infos] == pytest.approx([row["objective"] for row in infos])

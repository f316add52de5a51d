"""The README's demo and the throughput benchmark, run small."""

import math

import pytest

from benchmarks.demo import main as demo_main
from benchmarks.env_throughput import main as throughput_main

# Short episodes keep these tests fast; the coarse-grid warning of Euler-Maruyama is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def test_demo_writes_the_plot_and_reports_the_optimum(tmp_path, capsys):
    out = demo_main(["--samples", "2048", "--n-steps", "20", "--out", str(tmp_path)])
    assert (tmp_path / "mixture2d.png").stat().st_size > 10_000
    assert out["j_star"] > out["objective"] and math.isfinite(out["j_star_quadrature"])
    assert (tmp_path / "digits.png").stat().st_size > 10_000 and out["digits_accuracy"] >= 0.9
    text = capsys.readouterr().out
    assert "±" in text and "J* (quadrature" in text


def test_throughput_benchmark_runs_the_same_computation():
    [result] = throughput_main(["--batch", "256", "--steps", "10", "--repeats", "2"])
    assert result["env_rate"] > 0 and result["raw_rate"] > 0
    assert result["max_diff"] < 1e-4  # the same sampler, up to float rounding
    assert 0 < result["query_share"] < 1 and result["sampling_ratio"] > 0


def test_action_noise_costs_its_closed_form_kl():
    """Gaussian action noise of sd s costs ``action_scale^2 s^2 D sum_k w_k`` nats per episode in
    expectation (the env charges the KL of the action taken): the benchmark's rollout estimate is
    within 4 standard errors of it (sd 0.05, far from the action box's clip)."""
    from benchmarks.action_noise import noise_cost
    from diffusion_gym.tasks.mixture2d.env import make_vector_env

    kl, se, kl_coef = noise_cost("DiffusionSDE-v0", {"n_steps": 5}, 0.05, 4096, seed=3)
    disc = make_vector_env(1, n_steps=5).discretization
    expected = float((disc.action_scale.double() ** 2 * disc.kl_weight.double()).sum()) * 0.05**2 * 2
    assert kl_coef == 1.0 and abs(kl - expected) < 4 * se, (kl, expected, se)

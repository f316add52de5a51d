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

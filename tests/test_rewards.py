"""Bradley-Terry pipeline and the shipped proxy of DiffusionSDE-v0."""

import json
import math

import pytest
import torch

from diffusion_gym.rewards import BradleyTerryReward, RewardModel, fit_bradley_terry, label_pairs, pairwise_agreement
from diffusion_gym.rewards.bradley_terry import mlp
from diffusion_gym.tasks.mixture2d.model import mixture_2d
from diffusion_gym.tasks.mixture2d.rewards import gold_utility, load_proxy
from diffusion_gym.tasks.mixture2d.train_proxy import main as train_main


class Linear(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.as_tensor(w)

    def forward(self, x, cond=None):
        return x @ self.w


def test_labels_follow_the_bradley_terry_probability():
    """For a fixed pair with u(a) - u(b) = 0.8, the preference rate is sigmoid(0.8) within 4 s.e."""
    n = 40_000
    a = torch.full((n, 2), 0.4)
    b = torch.zeros(n, 2)
    pairs = label_pairs(Linear([1.0, 1.0]), a, b, torch.Generator().manual_seed(0))
    p = torch.sigmoid(torch.tensor(0.8)).item()
    assert pairs.prefer_a.mean().item() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    with pytest.raises(ValueError, match="temperature"):
        label_pairs(Linear([1.0, 1.0]), a, b, torch.Generator(), temperature=0.0)


def test_bradley_terry_recovers_a_linear_utility():
    """Maximum likelihood on 20k noisy comparisons recovers u(x) = w.x up to a constant (w within 0.1)."""
    gen = torch.Generator().manual_seed(1)
    w = torch.tensor([1.5, -0.7])
    a, b = torch.randn(20_000, 2, generator=gen) * 2, torch.randn(20_000, 2, generator=gen) * 2
    pairs = label_pairs(Linear(w), a, b, gen)
    model = BradleyTerryReward(torch.nn.Linear(2, 1))
    fit_bradley_terry(model, pairs, steps=600, generator=gen, lr=0.05, weight_decay=0.0, progress=False)
    torch.testing.assert_close(model.net.weight.detach().flatten(), w, atol=0.1, rtol=0)


def test_pairwise_agreement_counts_orderings():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    gold = Linear([1.0, 1.0])
    wrong = Linear([1.0, -1.0])
    assert pairwise_agreement(gold, gold, a, b) == 1.0
    assert pairwise_agreement(wrong, gold, a, b) == pytest.approx(2 / 3)  # the tied pair is excluded


def test_gold_optimum_is_off_the_modes():
    """The gold utility peaks where the data density is low, and the tilted law moves mass there."""
    gold, m = gold_utility(), mixture_2d()
    peak_density = m.log_prob(0.0, gold.center[None]).exp().item()
    mode_density = m.log_prob(0.0, m.means).exp().max().item()
    assert peak_density < 0.05 * mode_density
    x = m.sample(50_000, torch.Generator().manual_seed(2))
    tilt = torch.softmax(gold(x), 0)  # self-normalised weights of p exp(u) / Z
    near = (x - gold.center).norm(dim=1) < 1.5
    assert tilt[near].sum().item() > 2 * near.float().mean().item()


def test_shipped_proxy_tracks_gold():
    proxy, gold = load_proxy(), gold_utility()
    assert isinstance(proxy, RewardModel)
    gen = torch.Generator().manual_seed(3)
    x = mixture_2d().sample(20_000, gen)
    box = (torch.rand(20_000, 2, generator=gen) * 2 - 1) * 5
    with torch.no_grad():
        assert (proxy(x) - gold(x)).square().mean().sqrt().item() < 0.1  # shipped: 0.028
        assert (proxy(box) - gold(box)).square().mean().sqrt().item() < 0.15  # shipped: 0.058
        assert proxy(x).mean().item() == pytest.approx(gold(x).mean().item(), abs=0.02)  # the anchoring
    a, b = box[:10_000], box[10_000:]
    clear = (gold(a) - gold(b)).abs() > 0.1
    assert pairwise_agreement(proxy, gold, a[clear], b[clear]) > 0.97
    meta = json.loads((proxy_dir() / "mixture2d_proxy.json").read_text())
    assert meta["metrics"]["agreement_heldout_gold_diff_gt_0.1"] > 0.97


def proxy_dir():
    from diffusion_gym.tasks.mixture2d import WEIGHTS_DIR

    return WEIGHTS_DIR


def test_training_script_writes_a_loadable_proxy(tmp_path):
    metrics = train_main(["--out", str(tmp_path), "--pairs", "2000", "--heldout", "500", "--steps", "30", "--quiet"])
    proxy = load_proxy(tmp_path)
    assert proxy(torch.zeros(3, 2)).shape == (3,)
    assert set(metrics) >= {"heldout_logloss", "agreement_heldout", "rmse_pretrained_samples"}
    assert json.loads((tmp_path / "mixture2d_proxy.json").read_text())["config"]["steps"] == 30


def test_mlp_shape():
    net = mlp(6, (8, 8))
    assert BradleyTerryReward(net)(torch.zeros(4, 2, 3)).shape == (4,)

"""Rewards of ``DiffusionSDE-v0``: the hidden gold utility and its shipped Bradley-Terry proxy.

The gold utility is a Gaussian bump centred in the gap between the two lightest mixture
components (weights 0.08 and 0.06), not on any mode: the reward-tilted law
``p(x) exp(u(x) / kl_coef) / Z`` moves most of the mass there, so the fine-tuned sampler visibly
differs from the pretrained one. The proxy is a small MLP fitted to 40,000 noisy comparisons
of that utility by :mod:`diffusion_gym.tasks.mixture2d.train_proxy`; its weights ship in the package.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from diffusion_gym.checkpoints import load_weights_into, read_metadata
from diffusion_gym.rewards.bradley_terry import (
    BradleyTerryReward,
    PreferencePairs,
    anchor_offset,
    fit_bradley_terry,
    heldout_metrics,
    label_pairs,
    mlp,
)
from diffusion_gym.tasks.mixture2d import WEIGHTS_DIR
from diffusion_gym.tasks.mixture2d.model import mixture_2d

WEIGHTS_NAME = "mixture2d_proxy"


class GaussianBumpUtility(nn.Module):
    """``u(x) = amplitude * exp(-||x - center||^2 / (2 length^2))``.

    Args:
        center: the peak, shape (D,).
        amplitude: the peak value.
        length: the bump's length scale.
    """

    def __init__(self, center: Tensor, amplitude: float, length: float) -> None:
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.amplitude, self.length = float(amplitude), float(length)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        d2 = (x - self.center).square().sum(-1)
        return self.amplitude * torch.exp(-d2 / (2 * self.length**2))


def gold_utility() -> GaussianBumpUtility:
    """The gold utility: a bump of height 4, length 1.2, at angle 6.5 * 45 degrees, radius 3."""
    angle = 6.5 * 2 * math.pi / 8
    return GaussianBumpUtility(torch.tensor([3 * math.cos(angle), 3 * math.sin(angle)]), 4.0, 1.2)


@dataclass
class ProxyConfig:
    """How the shipped proxy was trained (saved next to its weights)."""

    seed: int = 0
    n_pairs: int = 40_000
    n_heldout: int = 10_000
    hidden: tuple[int, ...] = (64, 64)
    steps: int = 3_000
    batch_size: int = 1024
    lr: float = 3e-3
    temperature: float = 1.0
    box: float = 6.0


def comparison_inputs(n: int, generator: torch.Generator, box: float = 6.0) -> Tensor:
    """Points to compare: half pretrained (mixture) samples, half uniform on ``[-box, box]^2``.

    The uniform half teaches the proxy the reward off the data manifold too, where a policy that
    over-optimises will go.
    """
    n_data = n // 2
    data = mixture_2d().sample(n_data, generator)
    uniform = (torch.rand(n - n_data, 2, generator=generator) * 2 - 1) * box
    x = torch.cat([data, uniform])
    return x[torch.randperm(n, generator=generator)]


def train_proxy(
    config: ProxyConfig, progress: bool = True, device: str | torch.device = "cpu"
) -> tuple[BradleyTerryReward, dict[str, float]]:
    """Fit the proxy to noisy comparisons of :func:`gold_utility` (on ``device``; the data and every
    random draw come from the CPU generator, so the pairs are the same on any device); returns it, on
    the CPU, and held-out metrics.

    Metrics: held-out BT log-loss on noisy labels (and the gold utility's own log-loss on the same
    labels, its floor); the fraction of pairs ordered as gold orders them, on held-out comparison
    pairs, on those whose gold utilities differ by more than 0.1 (in the flat tails of the bump
    most differences are below any label's resolution), and on pretrained samples; and the
    root-mean-square proxy error on pretrained samples and uniformly on the box.
    """
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # network initialisation
    gold = gold_utility()
    n = config.n_pairs + config.n_heldout
    a = comparison_inputs(n, gen, config.box)
    b = comparison_inputs(n, gen, config.box)
    train, held = label_pairs(gold, a, b, gen, config.temperature).split(config.n_pairs)
    model = BradleyTerryReward(mlp(2, config.hidden)).to(device)
    on_device = PreferencePairs(train.a.to(device), train.b.to(device), train.prefer_a.to(device))
    fit_bradley_terry(model, on_device, config.steps, gen, config.batch_size, config.lr, progress=progress)
    model = model.cpu().eval()
    anchor_offset(model, gold, mixture_2d().sample(100_000, gen))
    data_a, data_b = mixture_2d().sample(10_000, gen), mixture_2d().sample(10_000, gen)
    box = (torch.rand(20_000, 2, generator=gen) * 2 - 1) * config.box
    metrics = heldout_metrics(model, gold, held, config.temperature, data_a, data_b)
    with torch.no_grad():
        metrics["rmse_box"] = (model(box) - gold(box)).square().mean().sqrt().item()
    return model, metrics


def save_proxy(model: BradleyTerryReward, config: ProxyConfig, metrics: dict[str, float], directory: Path) -> None:
    """Write ``<directory>/mixture2d_proxy.safetensors`` and its JSON config and metrics."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / f"{WEIGHTS_NAME}.safetensors")
    meta = {"config": asdict(config), "metrics": metrics}
    (directory / f"{WEIGHTS_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_proxy(directory: Path | None = None) -> BradleyTerryReward:
    """The shipped proxy (or one saved by :func:`save_proxy` in ``directory``), in eval mode."""
    root = Path(directory) if directory is not None else WEIGHTS_DIR
    path = root / f"{WEIGHTS_NAME}.safetensors"
    meta = read_metadata(path, "the mixture2d proxy", keys=["config"])
    model = load_weights_into(BradleyTerryReward(mlp(2, tuple(meta["config"]["hidden"]))), path, "the mixture2d proxy")
    return model.eval().requires_grad_(False)

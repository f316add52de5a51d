"""Rewards of ``DiffusionSDE-Mixture-v0``: the hidden gold utility of each dimension and its Bradley-Terry proxies.

The gold utility (:func:`gold_utility`) is a sum of three Gaussian bumps: a high one in the gap
between two components, off every mode; one on the rare mode (weight 0.04); a low one on the
heaviest mode. Its bump widths follow the components' spread, so that the task is alike in every
dimension: at ``kl_coef = 1`` the reward-tilted law ``p(x) exp(u(x) / kl_coef) / Z`` moves most of
its mass from the heavy modes to the rare mode and the gap's two components, and J* exceeds J(pre)
by more than one standard deviation of the pretrained reward (docs/design.md, sections 1 and 3).
Measured with the shipped proxies (N = 20, exponential integrator, 65,536 pretrained samples): J* -
J(pre) = 2.82, 1.78, 1.41 at D = 2, 8, 32, that is 1.5, 1.1, 1.0 standard deviations, with an
effective sample size of the weights ``exp(r / kl_coef)`` of 7.1%, 6.6%, 7.3%.

The proxy of a dimension D is a small MLP fitted to noisy comparisons of that utility by
:mod:`diffusion_gym.tasks.mixture.train_proxy`; the weights of :data:`SHIPPED_DIMS` ship in the package.
"""

from __future__ import annotations

import itertools
import json
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
from diffusion_gym.tasks.mixture import WEIGHTS_DIR
from diffusion_gym.tasks.mixture.model import RARE, mixture, mixture_parameters

SHIPPED_DIMS: tuple[int, ...] = (2, 8, 32)
"""The dimensions whose proxy ships in the package (``weights/mixture_d{D}_proxy.safetensors``)."""
HEIGHTS = (7.0, 8.0, 1.0)
"""The gold's bump heights: off-mode (in a gap), on the rare mode, on the heaviest mode."""
BASE_LENGTH2 = 0.25
"""The squared length every bump has at least (see :func:`gold_utility`)."""
COMMON = 0
"""The heaviest component (weight 0.25), which carries the low bump."""


def weights_name(dim: int) -> str:
    """The stem of the proxy's files for dimension ``dim``."""
    return f"mixture_d{dim}_proxy"


class GaussianBumpsUtility(nn.Module):
    """``u(x) = sum_m heights_m exp(-||x - centers_m||^2 / (2 lengths_m^2))``.

    Args:
        centers: the peaks, shape (M, D).
        heights: the peak values, shape (M,).
        lengths: the bumps' length scales, shape (M,), positive.
    """

    def __init__(self, centers: Tensor, heights: Tensor, lengths: Tensor) -> None:
        super().__init__()
        centers = torch.as_tensor(centers, dtype=torch.float32)
        heights = torch.as_tensor(heights, dtype=torch.float32)
        lengths = torch.as_tensor(lengths, dtype=torch.float32)
        m = centers.shape[0]
        if centers.ndim != 2 or heights.shape != (m,) or lengths.shape != (m,):
            raise ValueError(
                f"expected centers (M, D), heights (M,), lengths (M,); got {centers.shape}, {heights.shape}, "
                f"{lengths.shape}"
            )
        if (lengths <= 0).any():
            raise ValueError("bump lengths must be positive")
        self.register_buffer("centers", centers)
        self.register_buffer("heights", heights)
        self.register_buffer("lengths", lengths)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for c, h, length in zip(self.centers, self.heights, self.lengths, strict=True):  # one (B, D) temporary
            out = out + h * torch.exp(-(x - c).square().sum(-1) / (2 * length**2))
        return out


def gap_pair(dim: int) -> tuple[int, int]:
    """The two components whose gap holds the off-mode bump: the closest pair of means among the
    components other than the heaviest (0) and the rare one (7)."""
    _, means, _ = mixture_parameters(dim)
    middle = [k for k in range(means.shape[0]) if k not in (COMMON, RARE)]
    return min(itertools.combinations(middle, 2), key=lambda p: (means[p[0]] - means[p[1]]).norm().item())


def gold_bumps(dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The centres (3, D), heights (3,) and lengths (3,) of :func:`gold_utility`, float64."""
    _, means, covs = mixture_parameters(dim)
    trace = torch.diagonal(covs, dim1=1, dim2=2).sum(1)
    i, j = gap_pair(dim)
    gap = (means[i] - means[j]).norm()
    centers = torch.stack([(means[i] + means[j]) / 2, means[RARE], means[COMMON]])
    length2 = torch.stack(
        [
            BASE_LENGTH2 + (trace[i] + trace[j]) / 2 + (gap / 2) ** 2 / 2,
            BASE_LENGTH2 + trace[RARE],
            BASE_LENGTH2 + trace[COMMON],
        ]
    )
    return centers, torch.tensor(HEIGHTS, dtype=torch.float64), length2.sqrt()


def gold_utility(dim: int) -> GaussianBumpsUtility:
    """The gold utility of dimension ``dim``: three Gaussian bumps on :func:`~.model.mixture` ``(dim)``.

    - Height 7 at the midpoint of the closest pair of means among components 1-6 (:func:`gap_pair`),
      at least 1.5 from both (2.5 of the largest component standard deviation; for the shipped
      dims from every mean): off the modes.
    - Height 8 on the rare mode's mean (component 7, weight 0.04).
    - Height 1 on the heaviest mode's mean (component 0, weight 0.25).

    The widths follow the components' spread, so that a bump covers its component(s) alike in
    every dimension (a component's samples lie about ``sqrt(tr Sigma)`` from its mean, which grows
    like ``sqrt(D)``): ``length^2 = 1/4 + tr(Sigma_k)`` for the bump on component k, and
    ``length^2 = 1/4 + (tr(Sigma_i) + tr(Sigma_j)) / 2 + (gap / 2)^2 / 2`` for the one between
    components i and j, ``gap`` apart, which then reaches the near halves of both.

    Args:
        dim: the dimension D (an integer >= 2).
    """
    return GaussianBumpsUtility(*gold_bumps(dim))


@dataclass
class ProxyConfig:
    """How a shipped proxy was trained (saved next to its weights)."""

    dim: int = 8
    seed: int = 0
    n_pairs: int = 400_000
    n_heldout: int = 20_000
    hidden: tuple[int, ...] = (64, 64)
    steps: int = 6_000
    batch_size: int = 1024
    lr: float = 3e-3
    temperature: float = 1.0
    noise: float = 0.5
    reach: float = 3.0


def comparison_inputs(dim: int, n: int, generator: torch.Generator, noise: float = 0.5, reach: float = 3.0) -> Tensor:
    """Points to compare, in equal thirds: pretrained (mixture) samples; mixture samples plus
    Gaussian noise of a standard deviation uniform in ``[0, noise]`` per row; points around the
    gold's bump centres, ``c_m + rho u`` with ``u`` a uniform direction and ``rho`` uniform in
    ``[0, reach * length_m]`` (the bump falls from its peak to ``exp(-reach^2 / 2)`` of it).

    In D dimensions a uniform box is far from everything; the last two thirds show the proxy where
    a policy that over-optimises will go: off the data, and towards and onto the bumps.

    Args:
        dim: the dimension D.
        n: how many points.
        generator: every draw comes from it (CPU).
        noise: the largest extra noise standard deviation.
        reach: how far around a bump, in its lengths.
    """
    model = mixture(dim)
    n_data, n_noisy = n // 3, n // 3
    n_bump = n - n_data - n_noisy
    data = model.sample(n_data, generator)
    noisy = model.sample(n_noisy, generator)
    noisy = noisy + noise * torch.rand(n_noisy, 1, generator=generator) * torch.randn(noisy.shape, generator=generator)
    centers, _, lengths = gold_bumps(dim)
    which = torch.randint(centers.shape[0], (n_bump,), generator=generator)
    u = torch.randn(n_bump, dim, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    rho = reach * lengths[which] * torch.rand(n_bump, generator=generator, dtype=torch.float64)
    bumps = (centers[which] + rho[:, None] * u).float()
    x = torch.cat([data, noisy, bumps])
    return x[torch.randperm(n, generator=generator)]


def train_proxy(
    dim: int, config: ProxyConfig | None = None, progress: bool = True, device: str | torch.device = "cpu"
) -> tuple[BradleyTerryReward, dict[str, float]]:
    """Fit the proxy of dimension ``dim`` to noisy comparisons of :func:`gold_utility` (on ``device``;
    the data and every random draw come from the CPU generator, so the pairs are the same on any
    device); returns it, on the CPU, and held-out metrics.

    Metrics (the keys of the 2-D task's proxy): held-out BT log-loss on noisy labels (and the gold
    utility's own log-loss on the same labels, its floor); the fraction of pairs ordered as gold
    orders them, on held-out comparison pairs, on those whose gold utilities differ by more than
    0.1 (in the flat tails of the bumps most differences are below any label's resolution), and
    on pretrained samples; the root-mean-square proxy error on pretrained samples, and
    (``rmse_box``, the 2-D task's uniform box) on fresh comparison inputs.

    Args:
        dim: the dimension D.
        config: the training configuration (default: ``ProxyConfig(dim=dim)``); its ``dim`` must be ``dim``.
        progress: show a progress bar.
        device: where the network is fitted.
    """
    config = ProxyConfig(dim=dim) if config is None else config
    if config.dim != dim:
        raise ValueError(f"config.dim is {config.dim}, not {dim}")
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # network initialisation
    gold = gold_utility(dim)
    model_pre = mixture(dim)
    n = config.n_pairs + config.n_heldout
    a = comparison_inputs(dim, n, gen, config.noise, config.reach)
    b = comparison_inputs(dim, n, gen, config.noise, config.reach)
    train, held = label_pairs(gold, a, b, gen, config.temperature).split(config.n_pairs)
    model = BradleyTerryReward(mlp(dim, config.hidden)).to(device)
    on_device = PreferencePairs(train.a.to(device), train.b.to(device), train.prefer_a.to(device))
    fit_bradley_terry(model, on_device, config.steps, gen, config.batch_size, config.lr, progress=progress)
    model = model.cpu().eval()
    anchor_offset(model, gold, model_pre.sample(100_000, gen))
    data_a, data_b = model_pre.sample(10_000, gen), model_pre.sample(10_000, gen)
    fresh = comparison_inputs(dim, 20_000, gen, config.noise, config.reach)
    metrics = heldout_metrics(model, gold, held, config.temperature, data_a, data_b)
    with torch.no_grad():
        metrics["rmse_box"] = (model(fresh) - gold(fresh)).square().mean().sqrt().item()
    return model, metrics


def save_proxy(model: BradleyTerryReward, config: ProxyConfig, metrics: dict[str, float], directory: Path) -> None:
    """Write ``<directory>/mixture_d{dim}_proxy.safetensors`` and its JSON config and metrics."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = weights_name(config.dim)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / f"{name}.safetensors")
    meta = {"config": asdict(config), "metrics": metrics}
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_proxy(dim: int, directory: Path | None = None) -> BradleyTerryReward:
    """The shipped proxy of dimension ``dim`` (or one saved by :func:`save_proxy` in ``directory``), in eval mode.

    Raises:
        ValueError: no proxy ships for ``dim`` (and no ``directory`` was given).
    """
    if directory is None and dim not in SHIPPED_DIMS:
        raise ValueError(
            f"no proxy ships for dim={dim!r}; shipped dims: {list(SHIPPED_DIMS)} (reward='gold' works for any "
            "dim >= 2, or train one with python -m diffusion_gym.tasks.mixture.train_proxy --dim D --out DIR)"
        )
    root = Path(directory) if directory is not None else WEIGHTS_DIR
    path = root / f"{weights_name(dim)}.safetensors"
    what = f"the mixture proxy of dim {dim}"
    meta = read_metadata(path, what, keys=["config"])
    if meta["config"].get("dim") != dim:
        raise ValueError(f"{path.with_suffix('.json')} is the proxy of dim {meta['config'].get('dim')}, not {dim}")
    model = load_weights_into(BradleyTerryReward(mlp(dim, tuple(meta["config"]["hidden"]))), path, what)
    return model.eval().requires_grad_(False)

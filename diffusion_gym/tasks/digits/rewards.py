"""Rewards of ``DiffusionSDE-Digits-v0``: gold utilities of 8x8 digits and their Bradley-Terry proxies.

Gold utilities (the hidden "true" preferences):

- ``alignment``: prompt alignment, ``log p_clf(c | x)`` of the conditioned class under the shipped
  classifier, floored at -10.
- ``thickness``: a style utility, 20 x the mean ink of the image (ink = pixel in [0, 1]); real
  digits score 6.1 +- 0.7.
- ``jpeg_compressibility`` / ``jpeg_incompressibility``: minus / plus the JPEG size (quality 95)
  of the 4x bilinear upsample, in units of 25 bytes (real digits: 735 +- 36 bytes).

The task's default utility is ``alignment + thickness``: a well-formed digit of the requested class
drawn with a thicker pen. Each learned proxy is a small CNN fitted to 200,000 noisy comparisons
(Bradley-Terry, temperature 1) of its gold on augmented digits and on clean digits and base-model
samples, by
:mod:`diffusion_gym.tasks.digits.train_proxies`; incompressibility's proxy is the negated
compressibility proxy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from diffusion_gym.checkpoints import load_weights_into
from diffusion_gym.rewards.bradley_terry import (
    BradleyTerryReward,
    PreferencePairs,
    anchor_offset,
    fit_bradley_terry,
    label_pairs,
    pairwise_agreement,
)
from diffusion_gym.rewards.composite import ClampedInput, NegatedReward, SumReward
from diffusion_gym.rewards.jpeg import JpegSize
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.tasks.digits import WEIGHTS_DIR
from diffusion_gym.tasks.digits.classifier import DigitsClassifier, load_classifier
from diffusion_gym.tasks.digits.data import NUM_CLASSES, digits

UTILITIES = ("alignment_thickness", "alignment", "thickness", "jpeg_compressibility", "jpeg_incompressibility")
PROXIES = ("alignment", "thickness", "jpeg_compressibility")  # the three trained models


class PromptAlignment(nn.Module):
    """``max(log p_clf(c | x), floor)``: how clearly x shows the conditioned digit."""

    def __init__(self, classifier: DigitsClassifier, floor: float = -10.0) -> None:
        super().__init__()
        self.classifier, self.floor = classifier, float(floor)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise ValueError("prompt alignment needs the condition (the digit class)")
        log_p = F.log_softmax(self.classifier(x), dim=1)
        return log_p.gather(1, cond.view(-1, 1)).squeeze(1).clamp(min=self.floor)


class StrokeThickness(nn.Module):
    """``scale * mean ink``, ink = pixel intensity mapped from [-1, 1] to [0, 1]."""

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.scale * ((x + 1) / 2).clamp(0, 1).flatten(1).mean(1)


def digits_jpeg(sign: int) -> JpegSize:
    """The digits' JPEG utility: sign x size of the 32x32 upsample, in units of 25 bytes."""
    return JpegSize(sign=sign, quality=95, upsample=4, bytes_per_unit=25.0)


def gold_utility(name: str) -> RewardModel:
    """The gold utility ``name`` (one of :data:`UTILITIES`), of images clamped to [-1, 1]."""
    return ClampedInput(_gold(name))


def _gold(name: str) -> RewardModel:
    if name == "alignment":
        return PromptAlignment(load_classifier())
    if name == "thickness":
        return StrokeThickness()
    if name == "alignment_thickness":
        return SumReward(PromptAlignment(load_classifier()), StrokeThickness())
    if name in ("jpeg_compressibility", "jpeg_incompressibility"):
        return digits_jpeg(-1 if name == "jpeg_compressibility" else 1)
    raise ValueError(f"unknown digits utility {name!r}; expected one of {UTILITIES}")


class DigitsRewardNet(nn.Module):
    """A small CNN scoring 8x8 digits; conditional: one output per class, the conditioned one read."""

    def __init__(self, conditional: bool, width: int = 32) -> None:
        super().__init__()
        self.conditional = conditional
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, 128),
            nn.SiLU(),
            nn.Linear(128, NUM_CLASSES if conditional else 1),
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        out = self.body(x)
        return out.gather(1, cond.view(-1, 1)).squeeze(1) if self.conditional else out.squeeze(1)


def proxy_path(name: str, directory: Path | None = None) -> Path:
    return (Path(directory) if directory is not None else WEIGHTS_DIR) / f"digits_proxy_{name}.safetensors"


def load_proxy(name: str, directory: Path | None = None) -> RewardModel:
    """The learned proxy of utility ``name`` (shipped, or saved in ``directory``), frozen, of images
    clamped to [-1, 1]."""
    return ClampedInput(_proxy(name, directory))


def _proxy(name: str, directory: Path | None) -> RewardModel:
    if name == "alignment_thickness":
        return SumReward(_proxy("alignment", directory), _proxy("thickness", directory))
    if name == "jpeg_incompressibility":
        return NegatedReward(_proxy("jpeg_compressibility", directory))
    if name not in PROXIES:
        raise ValueError(f"unknown digits utility {name!r}; expected one of {UTILITIES}")
    path = proxy_path(name, directory)
    model = BradleyTerryReward(DigitsRewardNet(conditional=name == "alignment"), conditional=name == "alignment")
    load_weights_into(model, path, f"the digits {name} proxy")
    return model.eval().requires_grad_(False)


def augmented_digits(n: int, generator: torch.Generator, split: str = "train") -> tuple[Tensor, Tensor]:
    """Images to compare: digits of ``split``, each left as is or shifted, thickened, thinned,
    noised, blended with another digit, or dimmed, so that the proxies also see the off-manifold
    images an over-optimising policy produces. Returns images in [-1, 1] and their source labels."""
    x_train, y_train = digits(split)
    idx = torch.randint(len(y_train), (n,), generator=generator)
    x, y = x_train[idx].clone(), y_train[idx]
    kind = torch.randint(7, (n,), generator=generator)
    w = torch.rand(n, 1, 1, 1, generator=generator)
    thick = F.max_pool2d(x, 3, 1, 1)
    thin = -F.max_pool2d(-x, 3, 1, 1)
    other = x_train[torch.randint(len(y_train), (n,), generator=generator)]
    noise = torch.randn(x.shape, generator=generator)
    shifted = torch.roll(x, shifts=(1, -1), dims=(2, 3))
    variants = {
        1: shifted,
        2: (1 - w) * x + w * thick,
        3: (1 - w) * x + w * thin,
        4: x + 0.6 * w * noise,
        5: (0.4 + 0.3 * w) * x + (0.6 - 0.3 * w) * other,
        6: -1 + (0.3 + 0.7 * w) * (x + 1),
    }
    for k, v in variants.items():
        mask = kind == k
        x[mask] = v[mask]
    return x.clamp(-1, 1), y


@dataclass
class ProxyConfig:
    """How a digits proxy is trained (saved next to its weights)."""

    seed: int = 0
    n_pairs: int = 200_000
    n_heldout: int = 10_000
    steps: int = 3_000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-3
    temperature: float = 1.0
    same_class_fraction: float = 0.3
    n_base_samples: int = 4_000


def comparison_pairs(
    name: str,
    n: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    split: str = "train",
    clean: tuple[Tensor, Tensor] | None = None,
    same_class_fraction: float = 0.3,
) -> PreferencePairs:
    """``n`` labelled pairs for utility ``name``; both images of a pair are judged for one condition.

    Most pairs are two augmented digits of ``split``, judged for the first one's class half the
    time and a random class otherwise. A ``same_class_fraction`` of them are two clean images of one
    class judged for that class: real digits of ``split`` and, if given, ``clean`` (images, labels),
    e.g. samples of the base model. Those on-manifold pairs are what the env's policies start
    from; without them a proxy of a utility that is flat there (alignment) is free to invent
    differences between good digits.
    """
    n_same = round(same_class_fraction * n)
    a, label_a = augmented_digits(n - n_same, generator, split)
    b, _ = augmented_digits(n - n_same, generator, split)
    random_class = torch.randint(NUM_CLASSES, (n - n_same,), generator=generator)
    cond = torch.where(torch.rand(n - n_same, generator=generator) < 0.5, label_a, random_class)

    pool_x, pool_y = digits(split)
    if clean is not None:
        pool_x, pool_y = torch.cat([pool_x, clean[0].clamp(-1, 1)]), torch.cat([pool_y, clean[1]])
    order = torch.argsort(pool_y, stable=True)
    counts = torch.bincount(pool_y, minlength=NUM_CLASSES)
    starts = torch.cumsum(counts, 0) - counts
    same_cond = torch.randint(NUM_CLASSES, (n_same,), generator=generator)

    def pick() -> Tensor:
        offset = (torch.rand(n_same, generator=generator) * counts[same_cond]).long()
        return pool_x[order[starts[same_cond] + offset]]

    a, b, cond = torch.cat([a, pick()]), torch.cat([b, pick()]), torch.cat([cond, same_cond])
    shuffle = torch.randperm(n, generator=generator)
    return label_pairs(gold_utility(name), a[shuffle], b[shuffle], generator, temperature, cond[shuffle])


def train_proxy(
    name: str,
    config: ProxyConfig,
    base_samples: tuple[Tensor, Tensor] | None = None,
    progress: bool = True,
) -> tuple[BradleyTerryReward, dict[str, float]]:
    """Fit the proxy of ``name`` (one of :data:`PROXIES`); returns it and held-out metrics.

    Training pairs come from the training split of the digits, held-out pairs from the held-out
    split; ``base_samples`` (images and classes of the base model) join the on-manifold pools,
    three quarters for training and one quarter held out. Metrics: agreement (the fraction of
    held-out pairs the proxy orders as the gold does) over all pairs and over those whose gold
    utilities differ by more than 0.1 (below that a comparison at temperature 1 is close to a
    coin flip); held-out log-losses, the gold's own being the floor; and on the held-out base
    samples, the correlation of proxy and gold and their standard deviations.
    """
    if name not in PROXIES:
        raise ValueError(f"no proxy is trained for {name!r}; trained ones: {PROXIES}")
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    gold = gold_utility(name)
    train_clean = held_clean = None
    if base_samples is not None:
        cut = 3 * len(base_samples[1]) // 4
        train_clean = (base_samples[0][:cut], base_samples[1][:cut])
        held_clean = (base_samples[0][cut:], base_samples[1][cut:])
    frac = config.same_class_fraction
    train = comparison_pairs(name, config.n_pairs, gen, config.temperature, "train", train_clean, frac)
    held = comparison_pairs(name, config.n_heldout, gen, config.temperature, "heldout", held_clean, frac)
    conditional = name == "alignment"
    model = BradleyTerryReward(DigitsRewardNet(conditional), conditional=conditional)
    fit_bradley_terry(
        model, train, config.steps, gen, config.batch_size, config.lr, config.weight_decay, progress=progress
    )
    model.eval()
    x_train, y_train = digits("train")
    anchor_offset(model, gold, x_train, y_train)
    with torch.no_grad():
        clear = (gold(held.a, held.cond) - gold(held.b, held.cond)).abs() > 0.1
        logits = model(held.a, held.cond) - model(held.b, held.cond)
        gold_logits = (gold(held.a, held.cond) - gold(held.b, held.cond)) / config.temperature
    metrics = {
        "agreement_heldout": pairwise_agreement(model, gold, held.a, held.b, held.cond),
        "agreement_heldout_gold_diff_gt_0.1": pairwise_agreement(
            model, gold, held.a[clear], held.b[clear], held.cond[clear]
        ),
        "fraction_gold_diff_gt_0.1": clear.float().mean().item(),
        "heldout_logloss": F.binary_cross_entropy_with_logits(logits, held.prefer_a).item(),
        "heldout_logloss_gold": F.binary_cross_entropy_with_logits(gold_logits, held.prefer_a).item(),
    }
    if held_clean is not None:
        metrics |= on_manifold_fit(model, gold, *held_clean)
    return model, metrics


@torch.no_grad()
def on_manifold_fit(proxy: RewardModel, gold: RewardModel, images: Tensor, cond: Tensor) -> dict[str, float]:
    """How a proxy tracks its gold on clean images: correlation and the two standard deviations."""
    p, g = proxy(images, cond).double(), gold(images, cond).double()
    return {
        "base_samples_correlation": torch.corrcoef(torch.stack([p, g]))[0, 1].item(),
        "base_samples_proxy_std": p.std().item(),
        "base_samples_gold_std": g.std().item(),
    }


def save_proxy(name: str, model: BradleyTerryReward, config: ProxyConfig, metrics: dict, directory: Path) -> None:
    path = proxy_path(name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    path.with_suffix(".json").write_text(json.dumps({"config": asdict(config), "metrics": metrics}, indent=2) + "\n")

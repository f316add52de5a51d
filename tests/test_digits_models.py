"""The digits task's shipped models: classifier accuracy, proxy agreement, utilities, training scripts."""

import json

import pytest
import torch
import torch.nn.functional as F

from diffusion_gym.metrics import class_accuracy
from diffusion_gym.rewards.bradley_terry import pairwise_agreement
from diffusion_gym.tasks.digits.classifier import load_classifier
from diffusion_gym.tasks.digits.data import digits
from diffusion_gym.tasks.digits.rewards import UTILITIES, comparison_pairs, gold_utility, load_proxy, on_manifold_fit
from diffusion_gym.tasks.digits.train_classifier import main as train_classifier
from diffusion_gym.tasks.digits.train_proxies import main as train_proxies
from diffusion_gym.tasks.digits.train_unet import main as train_unet
from diffusion_gym.tasks.digits.unet import WEIGHTS_NAMES, load_digits_unet


def test_classifier_heldout_accuracy():
    images, labels = digits("heldout")
    assert class_accuracy(load_classifier(), images, labels) >= 0.97  # shipped: 0.997


def test_splits_are_disjoint_and_fixed():
    train, _ = digits("train")
    held, _ = digits("heldout")
    assert len(train) + len(held) == 1797
    assert not (train[:, None] == held[None]).flatten(2).all(-1).any()  # no image in both
    torch.testing.assert_close(digits("heldout")[0], held)


@pytest.mark.parametrize("utility", UTILITIES)
def test_every_shipped_proxy_agrees_with_its_gold(utility, digits_base_samples):
    """On pairs the proxies never saw, built from the held-out digits, agreement with the gold is
    >= 0.85 on all pairs of augmented digits (measured 0.93 to 0.99), and >= 0.85 on the pairs the
    gold orders when same-class pairs of clean digits and base-model samples join them (gold
    utilities differing by more than 0.1: below that a temperature-1 comparison is nearly a coin
    flip, and such pairs of the flat alignment utility are mostly ties; all pairs: >= 0.8)."""
    gen = torch.Generator().manual_seed(12345)
    proxy, gold = load_proxy(utility), gold_utility(utility)
    augmented = comparison_pairs(utility, 3000, gen, split="heldout", same_class_fraction=0.0)
    assert pairwise_agreement(proxy, gold, augmented.a, augmented.b, augmented.cond) >= 0.85
    mixed = comparison_pairs(utility, 3000, gen, split="heldout", clean=digits_base_samples)
    with torch.no_grad():
        clear = (gold(mixed.a, mixed.cond) - gold(mixed.b, mixed.cond)).abs() > 0.1
    assert pairwise_agreement(proxy, gold, mixed.a[clear], mixed.b[clear], mixed.cond[clear]) >= 0.85
    assert pairwise_agreement(proxy, gold, mixed.a, mixed.b, mixed.cond) >= 0.8


def test_default_proxy_tracks_the_gold_on_base_samples(digits_base_samples):
    """On what the env's policies start from, the default task's proxy follows its gold (where the
    alignment gold is nearly flat, the proxy must not invent differences)."""
    fit = on_manifold_fit(load_proxy("alignment_thickness"), gold_utility("alignment_thickness"), *digits_base_samples)
    assert fit["base_samples_correlation"] > 0.8
    assert fit["base_samples_proxy_std"] < 1.5 * fit["base_samples_gold_std"]


def test_utilities_order_obvious_cases():
    images, labels = digits("heldout")
    x, y = images[:50], labels[:50]
    thick = F.max_pool2d(x, 3, 1, 1)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    alignment, thickness = gold_utility("alignment"), gold_utility("thickness")
    compress = gold_utility("jpeg_compressibility")
    assert (alignment(x, y) > alignment(x, (y + 1) % 10)).float().mean() > 0.95
    assert (thickness(thick) > thickness(x)).all()
    assert (compress(noisy) < compress(x)).float().mean() > 0.9
    torch.testing.assert_close(gold_utility("alignment_thickness")(x, y), alignment(x, y) + thickness(x))
    with pytest.raises(ValueError, match="needs the condition"):
        alignment(x)
    with pytest.raises(ValueError, match="unknown digits utility"):
        gold_utility("beauty")


def test_training_scripts_run_a_few_steps(tmp_path):
    metrics = train_classifier(["--out", str(tmp_path), "--steps", "5", "--quiet"])
    assert 0 <= metrics["heldout_accuracy"] <= 1
    assert load_classifier(tmp_path)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    results = train_proxies(
        ["--out", str(tmp_path), "--only", "thickness", "--pairs", "300", "--heldout", "100", "--steps", "5"]
        + ["--base-samples", "20", "--quiet"]
    )
    assert set(results) == {"thickness"}
    assert load_proxy("thickness", tmp_path)(torch.zeros(2, 1, 8, 8)).shape == (2,)


@pytest.mark.parametrize("model", ["ddpm", "flow"])
def test_unet_training_writes_both_checkpoints_and_resumes(tmp_path, model):
    """A run stopped after 7 of 20 steps and resumed ends with the weights of an uninterrupted run."""
    name = WEIGHTS_NAMES[model]
    args = ["--model", model, "--steps", "20", "--batch-size", "8", "--checkpoint-every", "5", "--quiet"]
    train_unet(["--out", str(tmp_path / "straight"), *args])
    train_unet(["--out", str(tmp_path / "resumed"), *args, "--stop-after", "7"])
    assert (tmp_path / "resumed" / f"{name}_checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / f"{name}.safetensors").exists()
    train_unet(["--out", str(tmp_path / "resumed"), *args])
    assert not (tmp_path / "resumed" / f"{name}_checkpoint.pt").exists()  # removed once finished
    straight = load_digits_unet(tmp_path / "straight" / f"{name}.safetensors").state_dict()
    resumed = load_digits_unet(tmp_path / "resumed" / f"{name}.safetensors").state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    early = json.loads((tmp_path / "straight" / f"{name}_10pct.json").read_text())
    assert early["steps_trained"] == 2 and early["unet_config"]["num_class_embeds"] == 11


def test_the_flow_model_is_its_unet_at_the_flow_timestep_guided():
    """DiffusersVelocity on the shipped flow UNet: ``predict`` is the UNet at timestep 1000 s mixed by
    classifier-free guidance, ``v_u + w (v_c - v_u)``, to float precision; its noise prediction is
    ``x + alpha v`` and its score ``-eps / sigma``."""
    from diffusion_gym.tasks.digits.unet import NULL_CLASS, digits_flow_model

    model = digits_flow_model(guidance_scale=2.0)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond, s = torch.arange(6), torch.tensor(0.3)
    with torch.no_grad():
        v_c = model.unet(x, torch.full((6,), 300.0), class_labels=cond).sample
        v_u = model.unet(x, torch.full((6,), 300.0), class_labels=torch.full((6,), NULL_CLASS)).sample
        v = model.predict(s, x, cond)
        torch.testing.assert_close(v, v_u + 2.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.predict_noise(s, x, cond), x + 0.7 * v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.score(s, x, cond), -(x + 0.7 * v) / 0.3, rtol=1e-5, atol=1e-5)

"""Image scorers: JPEG, and the local-weights scorers on a tiny random CLIP (real code paths, random weights)."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from diffusion_gym.rewards.jpeg import JpegSize
from diffusion_gym.tasks.stable_diffusion.scorers import (
    AestheticMLP,
    AestheticScorer,
    ImageRewardScorer,
    PickScoreScorer,
    image_reward,
)

from .tiny_models import build_tiny_clip

IMAGEREWARD_ERROR = (
    (FileNotFoundError, "ImageReward.pt")
    if importlib.util.find_spec("ImageReward")
    else (ImportError, "pip install image-reward")
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_jpeg_prefers_flat_images():
    gen = torch.Generator().manual_seed(0)
    flat = torch.zeros(2, 3, 32, 32)
    noisy = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    compress, incompress = JpegSize(-1), JpegSize(1)
    assert (compress(flat) > compress(noisy)).all()
    torch.testing.assert_close(incompress(noisy), -compress(noisy))
    assert JpegSize(-1, upsample=4)(torch.zeros(1, 1, 8, 8)).shape == (1,)
    with pytest.raises(ValueError, match="expected images"):
        compress(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="sign"):
        JpegSize(0)


def test_aesthetic_scorer_on_local_weights(clip_dir, tmp_path):
    head = tmp_path / "head.pth"
    torch.save(AestheticMLP(16).state_dict(), head)
    scorer = image_reward("aesthetic", clip_path=clip_dir, head_path=head)
    assert isinstance(scorer, AestheticScorer)
    images = (torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_()
    scores = scorer(images)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    (grad,) = torch.autograd.grad(scores.sum(), images)  # differentiable in the image
    assert grad.abs().sum() > 0


def test_pickscore_is_the_scaled_cosine_with_the_prompt(clip_dir):
    prompts = ["a cat", "a dog"]
    scorer = image_reward("pickscore", prompts, model_path=clip_dir)
    assert isinstance(scorer, PickScoreScorer)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cond = torch.tensor([1, 0])
    clip = scorer.clip
    with torch.no_grad():
        pixels = scorer.preprocess(images)
        img = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
        expected = clip.logit_scale.exp() * (img * scorer.text_embeds[cond]).sum(-1)
        torch.testing.assert_close(scorer(images, cond), expected)
    assert not torch.allclose(scorer(images, cond), scorer(images, 1 - cond))


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("aesthetic", {}, FileNotFoundError, "CLIP ViT-L/14 directory"),
        ("aesthetic", {"clip_path": "/nope", "head_path": "/nope.pth"}, FileNotFoundError, "nothing is downloaded"),
        ("pickscore", {"model_path": "/nope"}, FileNotFoundError, "PickScore"),
        # without the optional package: how to get it; with it: which local file is missing
        ("imagereward", {"model_path": "/nope"}, *IMAGEREWARD_ERROR),
        ("sharpness", {}, ValueError, "unknown image reward"),
    ],
)
def test_missing_weights_fail_clearly(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        image_reward(name, ["a cat"], **kwargs)


def test_text_scorers_need_prompts():
    with pytest.raises(ValueError, match="pass prompts"):
        image_reward("pickscore", None, model_path="/nope")
    assert ImageRewardScorer  # importable without the optional package

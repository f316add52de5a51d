"""Image rewards for ``DiffusionSDE-SD-v0``: JPEG (no weights) and learned scorers from local weights.

Every learned scorer loads from local paths only and fails with a message naming what it needs;
nothing is downloaded. They take images in [-1, 1] shaped (B, 3, H, W) and condition indices into
the env's prompt list. CLIP preprocessing (resize, centre crop, normalise) is done in torch, so the
scorers are differentiable in the image.

- ``aesthetic``: the LAION aesthetic predictor v2 (an MLP on normalised CLIP ViT-L/14 image
  embeddings; the head DDPO uses), ``clip_path`` (a transformers CLIP directory) and ``head_path``
  (the MLP's state dict, e.g. ``sac+logos+ava1-l14-linearMSE.pth``).
- ``pickscore``: PickScore (Kirstain et al. 2023), ``logit_scale * cos(text, image)`` of a CLIP
  model fine-tuned on Pick-a-Pic, ``model_path`` (a transformers CLIP directory with its tokenizer
  and ``preprocessor_config.json``).
- ``imagereward``: ImageReward (Xu et al. 2023) through its own package (``pip install
  image-reward``), ``model_path`` (the local ``ImageReward.pt``) and ``med_config`` (its
  ``med_config.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_gym.rewards.jpeg import JpegSize
from diffusion_gym.rewards.protocol import RewardModel
from diffusion_gym.tasks.stable_diffusion.directory import import_transformers

SCORERS = ("jpeg_compressibility", "jpeg_incompressibility", "aesthetic", "pickscore", "imagereward")


def image_reward(name: str, prompts: Sequence[str] | None = None, **kwargs: Any) -> RewardModel:
    """The image reward called ``name`` (one of :data:`SCORERS`), built from local weights."""
    if name == "jpeg_compressibility":
        return JpegSize(sign=-1, **kwargs)
    if name == "jpeg_incompressibility":
        return JpegSize(sign=1, **kwargs)
    if name == "aesthetic":
        return AestheticScorer(**kwargs)
    if name == "pickscore":
        return PickScoreScorer(prompts=_need_prompts(prompts, name), **kwargs)
    if name == "imagereward":
        return ImageRewardScorer(prompts=_need_prompts(prompts, name), **kwargs)
    raise ValueError(f"unknown image reward {name!r}; expected one of {SCORERS} or a RewardModel")


def _need_prompts(prompts: Sequence[str] | None, name: str) -> list[str]:
    if not prompts:
        raise ValueError(f"{name} scores an image against its prompt text: pass prompts=[...]")
    return list(prompts)


def _local(path: str | Path | None, what: str, scorer: str) -> Path:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(
            f"the {scorer} scorer needs {what} on local disk (got {path!r}); nothing is downloaded. "
            f"Pass reward_kwargs={{...}} with its local path."
        )
    return Path(path)


def _transformers() -> Any:
    return import_transformers("the CLIP-based scorers")


class ClipImagePreprocess(nn.Module):
    """CLIP's image preprocessing in torch: shortest side to ``size``, centre crop, normalise."""

    def __init__(self, model_path: Path) -> None:
        super().__init__()
        config = json.loads(
            _local(model_path / "preprocessor_config.json", "preprocessor_config.json", "CLIP").read_text()
        )
        crop = config.get("crop_size", 224)
        self.crop = int(crop["height"] if isinstance(crop, dict) else crop)
        size = config.get("size", self.crop)
        self.size = int(size.get("shortest_edge", self.crop) if isinstance(size, dict) else size)
        self.register_buffer("mean", torch.tensor(config["image_mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config["image_std"]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = (images.clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        return (x - self.mean) / self.std


def _clip_image_embeddings(clip: nn.Module, pixels: Tensor) -> Tensor:
    features = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    return F.normalize(features, dim=-1)


class AestheticMLP(nn.Module):
    """The LAION aesthetic predictor v2 head (key names as in its released state dict)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class AestheticScorer(nn.Module):
    """LAION aesthetic score of images (higher: prettier, about 1 to 10 on the real predictor)."""

    def __init__(self, clip_path: str | Path | None = None, head_path: str | Path | None = None) -> None:
        super().__init__()
        clip_dir = _local(clip_path, "a CLIP ViT-L/14 directory (clip_path)", "aesthetic")
        head_file = _local(head_path, "the aesthetic MLP weights (head_path)", "aesthetic")
        self.clip = _transformers().CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
        self.preprocess = ClipImagePreprocess(clip_dir)
        self.head = AestheticMLP(self.clip.config.projection_dim)
        self.head.load_state_dict(torch.load(head_file, map_location="cpu", weights_only=True))
        self.eval().requires_grad_(False)

    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.head(_clip_image_embeddings(self.clip, self.preprocess(images))).squeeze(1)


class PickScoreScorer(nn.Module):
    """PickScore of each image against its prompt (condition i is ``prompts[i]``)."""

    def __init__(self, model_path: str | Path | None = None, prompts: Sequence[str] = ()) -> None:
        super().__init__()
        model_dir = _local(model_path, "a PickScore CLIP directory (model_path)", "pickscore")
        transformers = _transformers()
        self.clip = transformers.CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
        tokenizer = transformers.CLIPTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.preprocess = ClipImagePreprocess(model_dir)
        tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            text = self.clip.text_projection(self.clip.text_model(**tokens).pooler_output)
        self.register_buffer("text_embeds", F.normalize(text, dim=-1))
        self.eval().requires_grad_(False)

    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise ValueError("pickscore needs the condition (the prompt index)")
        image = _clip_image_embeddings(self.clip, self.preprocess(images))
        return self.clip.logit_scale.exp() * (image * self.text_embeds[cond]).sum(-1)


class ImageRewardScorer(nn.Module):
    """ImageReward of each image against its prompt, through the ``image-reward`` package (not
    differentiable here: images go through PIL).

    The package pins its model to the device it was loaded on, in float32, so the model is kept
    out of this module's parameters: moving the env to another device or dtype leaves it where it
    is, and scores are moved to the images' device and dtype afterwards. Its BLIP loads the
    tokenizer ``bert-base-uncased`` by name, which must therefore be in the local Hugging Face cache.
    """

    differentiable = False  # its images go through PIL

    def __init__(
        self,
        model_path: str | Path | None = None,
        med_config: str | Path | None = None,
        prompts: Sequence[str] = (),
        device: str = "cpu",
    ) -> None:
        super().__init__()
        try:
            import ImageReward  # noqa: N813
        except ImportError as e:
            raise ImportError("the imagereward scorer needs its package: pip install image-reward") from e
        path = _local(model_path, "ImageReward.pt (model_path)", "imagereward")
        config = _local(med_config, "med_config.json (med_config)", "imagereward")
        try:
            _transformers().BertTokenizer.from_pretrained("bert-base-uncased", local_files_only=True)
        except OSError as e:
            raise FileNotFoundError(
                "the imagereward scorer's BLIP loads the tokenizer 'bert-base-uncased' by name: it must be in the "
                "local Hugging Face cache (HF_HOME); nothing is downloaded"
            ) from e
        self._model = [ImageReward.load(str(path), device=device, med_config=str(config))]  # not a submodule
        self.prompts = list(prompts)

    @torch.no_grad()
    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        from PIL import Image

        if cond is None:
            raise ValueError("imagereward needs the condition (the prompt index)")
        model = self._model[0]
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        pairs = zip(pixels, cond.tolist(), strict=True)
        scores = [float(model.score(self.prompts[int(c)], Image.fromarray(p))) for p, c in pairs]
        return torch.tensor(scores, dtype=images.dtype, device=images.device)

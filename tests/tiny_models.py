"""Tiny random diffusers / transformers models built from configs, saved locally: offline test fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHARS = "abcdefghijklmnopqrstuvwxyz"


def write_tiny_tokenizer(directory: Path, max_length: int = 16):
    """A character-level CLIPTokenizer from a hand-written vocabulary (no download)."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(directory)
    return tokenizer


TINY_TRANSFORMER = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
"""The width and depth of every tiny CLIP tower."""


def tiny_text_config() -> dict:
    return dict(
        **TINY_TRANSFORMER,
        vocab_size=64,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def build_tiny_stable_diffusion(directory: Path) -> Path:
    """A StableDiffusionPipeline of tiny random parts (latents 4x8x8, images 16x16), saved to ``directory``."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config()))
    tokenizer = write_tiny_tokenizer(directory / "_tokenizer")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_clip(directory: Path) -> Path:
    """A tiny random CLIP model with its tokenizer and preprocessor config (32x32 images)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    config = CLIPConfig(
        text_config=tiny_text_config(),
        vision_config=dict(**TINY_TRANSFORMER, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    write_tiny_tokenizer(directory)
    preprocessor = {
        "crop_size": {"height": 32, "width": 32},
        "size": {"shortest_edge": 32},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


def tiny_unet(**kwargs):
    """A tiny random UNet2DModel on 1x8x8 images (keyword arguments override the config)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return UNet2DModel(**(config | kwargs)).eval()


def write_tiny_t5_tokenizer(directory: Path):
    """A character-level T5 tokenizer (a Unigram vocabulary written here; no download)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + c, -1.0) for c in CHARS] + [(c, -2.0) for c in CHARS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(directory)
    return T5Tokenizer.from_pretrained(directory)


def tiny_t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=64, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4, relative_attention_num_buckets=8
    )
    return T5EncoderModel(config)


def tiny_flow_vae(latent_channels: int, shift_factor: float, scaling_factor: float):
    """A tiny AutoencoderKL with the shift and scale SD3's and FLUX's VAEs carry (x 2 downsampling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=16,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_sd3(directory: Path, shift: float = 3.0) -> Path:
    """A StableDiffusion3Pipeline of tiny random parts (latents 4x8x8, images 16x16; two CLIP towers
    with projections and a T5), ``FlowMatchEulerDiscreteScheduler`` with a static shift, saved to
    ``directory``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width; the CLIP towers' (32 + 32) are padded to it
        caption_projection_dim=32,
        pooled_projection_dim=64,  # the two CLIP towers' projections, concatenated
        pos_embed_max_size=16,
    )
    clip = [CLIPTextModelWithProjection(CLIPTextConfig(**tiny_text_config(), projection_dim=32)) for _ in range(2)]
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=tiny_flow_vae(4, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=clip[0],
        tokenizer=write_tiny_tokenizer(directory / "_tokenizer"),
        text_encoder_2=clip[1],
        tokenizer_2=write_tiny_tokenizer(directory / "_tokenizer_2"),
        text_encoder_3=tiny_t5(64),
        tokenizer_3=write_tiny_t5_tokenizer(directory / "_tokenizer_3"),
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_flux(directory: Path, schnell: bool = False) -> Path:
    """A FluxPipeline of tiny random parts (latents 4x8x8, packed into 16 tokens of 16 channels;
    images 16x16; a CLIP tower and a T5), saved to ``directory``: as FLUX.1-dev, with the guidance
    embedding and ``FlowMatchEulerDiscreteScheduler``'s dynamic shift, or (``schnell``) as
    FLUX.1-schnell, with neither (a static shift of 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=not schnell,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0 if schnell else 3.0,
        use_dynamic_shifting=not schnell,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=tiny_flow_vae(4, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_text_config())),
        tokenizer=write_tiny_tokenizer(directory / "_tokenizer"),
        text_encoder_2=tiny_t5(32),
        tokenizer_2=write_tiny_t5_tokenizer(directory / "_tokenizer_2"),
        transformer=transformer,
    )
    pipe.save_pretrained(directory)
    return directory

"""SD3's and FLUX's diffusion transformers as the network of a
:class:`~diffusion_gym.base_models.diffusers_unet.DiffusersVelocity`.

- :class:`PooledPromptEmbeddings`: how condition indices reach either transformer, as the pipelines
  pass a prompt: its token embeddings (``encoder_hidden_states``) and its pooled embedding
  (``pooled_projections``); the null condition (classifier-free guidance, SD3) is the negative
  prompt's pair.
- :class:`PackedFluxTransformer`: ``FluxTransformer2DModel`` on latents shaped like an image
  (B, C, H, W), as ``FluxPipeline`` calls it: 2x2 patches packed into tokens with their position
  ids, the timestep divided by 1000 and, on guidance-distilled models (FLUX.1-dev), the guidance
  scale as an input instead of classifier-free guidance.

``SD3Transformer2DModel`` takes image-shaped latents and diffusers' flow timestep itself and needs no
wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusion_gym.base_models.diffusers_unet import PromptEmbeddings


class PooledPromptEmbeddings(PromptEmbeddings):
    """Condition i is prompt i: row i of the token embeddings (P, L, D), as :class:`PromptEmbeddings`,
    and of the pooled ones (P, Dp) beside them.

    Args:
        prompt_embeds: (P, L, D), what the pipeline's ``encode_prompt`` returns as ``prompt_embeds``.
        pooled_embeds: (P, Dp), its ``pooled_prompt_embeds``.
        null_embeds: (L, D), the negative prompt's token embeddings (classifier-free guidance), or None
            for a model guided without a null condition (FLUX).
        null_pooled: (Dp,), the negative prompt's pooled embedding, given with ``null_embeds``.
    """

    def __init__(
        self,
        prompt_embeds: Tensor,
        pooled_embeds: Tensor,
        null_embeds: Tensor | None = None,
        null_pooled: Tensor | None = None,
    ) -> None:
        super().__init__(prompt_embeds, null_embeds)
        if pooled_embeds.shape[:1] != prompt_embeds.shape[:1] or pooled_embeds.ndim != 2:
            n, got = prompt_embeds.shape[0], tuple(pooled_embeds.shape)
            raise ValueError(f"expected pooled embeddings (P, Dp) for {n} prompts, got {got}")
        if (null_embeds is None) != (null_pooled is None):
            raise ValueError("give the negative prompt's token and pooled embeddings together")
        if null_pooled is not None and null_pooled.shape != pooled_embeds.shape[1:]:
            raise ValueError(
                f"expected a negative pooled embedding {tuple(pooled_embeds.shape[1:])}, got {tuple(null_pooled.shape)}"
            )
        self.register_buffer("pooled_embeds", pooled_embeds)
        self.register_buffer("null_pooled", null_pooled)

    def unet_kwargs(self, cond: Tensor) -> dict[str, Tensor]:
        return super().unet_kwargs(cond) | {"pooled_projections": self.pooled_embeds[cond]}

    def null_kwargs(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        pooled = {"pooled_projections": self.null_pooled.expand(batch, *self.null_pooled.shape)}
        return super().null_kwargs(batch, device) | pooled


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, H, W) latents as FLUX's tokens (B, H/2 * W/2, 4 C): each 2x2 patch one token, row-major."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`pack_latents`: tokens (B, H/2 * W/2, 4 C) back to (B, C, H, W)."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


class PackedFluxTransformer(nn.Module):
    """``FluxTransformer2DModel`` called as ``FluxPipeline`` calls it, on image-shaped latents.

    Args:
        transformer: the FLUX transformer (``in_channels`` = 4 x the latent channels).
        guidance_scale: the guidance a guidance-distilled model (``guidance_embeds``, FLUX.1-dev) is
            given as an input; ignored (None) by a model without the embedding (FLUX.1-schnell).
    """

    def __init__(self, transformer: nn.Module, guidance_scale: float | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        if embeds and guidance_scale is None:
            raise ValueError("this FLUX transformer embeds the guidance scale: pass guidance_scale")
        self.guidance_scale = float(guidance_scale) if embeds else None

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        pooled_projections: Tensor,
        return_dict: bool = False,
    ) -> tuple[Tensor]:
        b, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2x2 patches of the latent: its sides must be even, got {h}x{w}")
        ids = torch.zeros(h // 2, w // 2, 3, device=x.device, dtype=encoder_hidden_states.dtype)
        ids[..., 1] += torch.arange(h // 2, device=x.device)[:, None]
        ids[..., 2] += torch.arange(w // 2, device=x.device)[None, :]
        text_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=x.device, dtype=encoder_hidden_states.dtype)
        guidance = None
        if self.guidance_scale is not None:  # float32 first, as the pipeline makes it: the same value
            guidance = torch.full((b,), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(x),
            timestep=timestep / 1000,  # FluxPipeline's own literal: the transformer scales it back by 1000
            guidance=guidance,
            pooled_projections=pooled_projections,
            encoder_hidden_states=encoder_hidden_states,
            txt_ids=text_ids,
            img_ids=ids.reshape(-1, 3),
            return_dict=False,
        )[0]
        return (unpack_latents(out, h, w),)

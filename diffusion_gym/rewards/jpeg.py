"""JPEG compressibility and incompressibility (Black et al. 2023, DDPO): the size of the image's JPEG.

No weights and no gradient: each image is encoded with Pillow on the CPU.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn


class JpegSize(nn.Module):
    """``sign * (JPEG bytes) / bytes_per_unit`` of images in [-1, 1] shaped (B, C, H, W), C in {1, 3}.

    ``sign = -1`` is compressibility (DDPO's ``jpeg_compressibility``: smaller files score higher),
    ``sign = +1`` incompressibility. DDPO measures kilobytes of 512x512 images (the default units);
    tiny images are first upsampled (bilinear) so that the encoder sees more than one 8x8 block.

    Args:
        sign: -1 (compressibility) or +1 (incompressibility).
        quality: the JPEG quality (DDPO: 95).
        upsample: integer upsampling factor before encoding.
        bytes_per_unit: the reward's unit in bytes (1000: kilobytes).
    """

    differentiable = False  # Pillow's encoder: no gradient in the pixels

    def __init__(self, sign: int = -1, quality: int = 95, upsample: int = 1, bytes_per_unit: float = 1000.0) -> None:
        super().__init__()
        if sign not in (-1, 1):
            raise ValueError(f"sign must be -1 or +1, got {sign}")
        self.sign, self.quality, self.upsample, self.bytes_per_unit = (
            sign,
            int(quality),
            int(upsample),
            float(bytes_per_unit),
        )

    def sizes(self, x: Tensor) -> np.ndarray:
        """JPEG sizes in bytes, one per image."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(x.shape)}")
        pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy()
        out = np.empty(len(pixels), dtype=np.float64)
        for i, img in enumerate(pixels):
            image = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            if self.upsample > 1:
                image = image.resize((image.width * self.upsample, image.height * self.upsample), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.quality)
            out[i] = buffer.tell()
        return out

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        size = torch.from_numpy(self.sizes(x)).to(device=x.device, dtype=x.dtype)
        return self.sign * size / self.bytes_per_unit

"""Pictures of a batched env's current state, for ``render_mode="rgb_array"``.

2-D states are drawn as a scatter over the base model's density at the current diffusion time (when
the model has ``log_prob``), D-dimensional vectors as a scatter of their first two coordinates, with
matplotlib's Agg canvas (never pyplot: no global backend state changes); image states as a grid of up
to 64 images, built with numpy. Both return an (H, W, 3) uint8 array, the frame format of
Gymnasium's video recorders.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffusion_gym.envs.vector import DiffusionSDEVectorEnv

SCATTER_POINTS = 2_000
"""At most this many rows of the batch are drawn in a 2-D picture (the first ones)."""
VIEW_BOX = 5.0
"""2-D pictures show the fixed square [-VIEW_BOX, VIEW_BOX]^2, so that frames of an episode line up."""
FIGURE_PX = 480
"""Width and height of a 2-D picture in pixels."""
DENSITY_PX = 160
"""Resolution of the density grid behind a 2-D scatter."""
MAX_IMAGES = 64
"""At most this many images (the first rows) go into an image grid."""
MIN_GRID_PX = 256
"""Small images are upscaled (nearest neighbour) until the grid is at least this wide."""
MAX_TILE_PX = 256
"""Larger images are subsampled (by an integer stride) down to about this size per tile."""


def render_batch(env: DiffusionSDEVectorEnv) -> np.ndarray:
    """The env's current batch ``env._x`` as an (H, W, 3) uint8 picture.

    Args:
        env: a batched env after its first reset.

    Raises:
        ValueError: for event shapes other than ``(D,)`` with D >= 2 and ``(C, H, W)``.
    """
    shape = tuple(env.event_shape)
    x = env._x.detach()
    if len(shape) == 1 and shape[0] >= 2:
        return _render_points(env, x)
    if len(shape) == 3:
        return _render_images(x)
    raise ValueError(f"render supports (D,) vectors with D >= 2 and (C, H, W) images, got event shape {shape}")


def _render_points(env: DiffusionSDEVectorEnv, x: Tensor) -> np.ndarray:
    """A scatter of (up to :data:`SCATTER_POINTS`) samples' first two coordinates, in 2-D over the base
    density ``p_s`` at the current diffusion time ``s = T - t``, in a fixed view box; the title gives
    t, the step and how many samples fall outside the box."""
    # Imported here: the image path and envs that never render do not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = env._k
    t = float(env.grid[k])
    s = max(env.T - t, 0.0)
    dim = x.shape[1]
    points = x[:SCATTER_POINTS, :2].to("cpu", torch.float64).numpy()
    points = points[np.isfinite(points).all(axis=1)]
    outside = int((np.abs(points) > VIEW_BOX).any(axis=1).sum())

    fig = Figure(figsize=(FIGURE_PX / 100, FIGURE_PX / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.06, 0.9, 0.86))
    density = _density(env, s) if dim == 2 else None
    if density is not None:
        extent = (-VIEW_BOX, VIEW_BOX, -VIEW_BOX, VIEW_BOX)
        ax.imshow(density, extent=extent, origin="lower", cmap="Blues", interpolation="bilinear", aspect="auto")
    size = 12.0 if len(points) <= 256 else 4.0
    ax.scatter(points[:, 0], points[:, 1], s=size, c="tab:orange", edgecolors="none", alpha=0.8)
    ax.set_xlim(-VIEW_BOX, VIEW_BOX)
    ax.set_ylim(-VIEW_BOX, VIEW_BOX)
    title = f"t = {t:.3f}  (step {k}/{env.n_steps}, {x.shape[0]} samples" + (
        f", coordinates 1-2 of {dim})" if dim > 2 else ")"
    )
    if outside:
        title += f", {outside} outside"
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _density(env: DiffusionSDEVectorEnv, s: float) -> np.ndarray | None:
    """The base model's density ``p_s`` on a :data:`DENSITY_PX` square grid of the view box, scaled to
    a maximum of 1 (rows along y), or None when the score model has no ``log_prob(s, x)``."""
    log_prob = getattr(env.score_model, "log_prob", None)
    if not callable(log_prob):
        return None
    axis = torch.linspace(-VIEW_BOX, VIEW_BOX, DENSITY_PX, device=env.device, dtype=env.dtype)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        logp = log_prob(s, torch.stack([xx.flatten(), yy.flatten()], dim=1)).to("cpu", torch.float64)
    logp = logp.reshape(DENSITY_PX, DENSITY_PX).numpy()
    return np.exp(logp - logp.max())


def _render_images(x: Tensor) -> np.ndarray:
    """A grid of the first :data:`MAX_IMAGES` images of a (B, C, H, W) batch, values in [-1, 1].

    One channel is grayscale and three are RGB; other channel counts (latents) show their first three
    channels, each min-max scaled over the shown images. Small images are upscaled by nearest neighbour
    so the grid is at least :data:`MIN_GRID_PX` wide, large ones subsampled to about :data:`MAX_TILE_PX`.
    """
    imgs = torch.nan_to_num(x[:MAX_IMAGES].to("cpu", torch.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    n, c, h, w = imgs.shape
    if c in (1, 3):
        unit = (imgs.clamp(-1.0, 1.0) + 1.0) / 2.0
        if c == 1:
            unit = unit.expand(n, 3, h, w)
    else:
        chans = imgs[:, :3]
        lo = chans.amin(dim=(0, 2, 3), keepdim=True)
        hi = chans.amax(dim=(0, 2, 3), keepdim=True)
        unit = (chans - lo) / (hi - lo).clamp_min(1e-12)
        if unit.shape[1] < 3:
            unit = torch.cat([unit, unit.new_zeros(n, 3 - unit.shape[1], h, w)], dim=1)
    tiles = (unit.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)  # (n, h, w, 3)

    stride = math.ceil(max(h, w) / MAX_TILE_PX)
    tiles = tiles[:, ::stride, ::stride]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, math.ceil(MIN_GRID_PX / (cols * tiles.shape[2])))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = tiles.shape[1:3]
    pad = 2
    grid = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (th + pad), pad + q * (tw + pad)
        grid[top : top + th, left : left + tw] = tiles[i]
    return grid

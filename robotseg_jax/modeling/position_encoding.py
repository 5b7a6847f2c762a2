"""Fixed sine position encodings of sam2 (position_encoding.PositionEmbeddingSine, sam2_utils.get_1d_sine_pe).

The 2-D encoding depends only on the feature-map shape, so it is computed once in float32 NumPy with the same
operation order as PyTorch and enters the compiled graph as a constant.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _dim_t(num_feats: int, temperature: float) -> np.ndarray:
    dim_t = np.arange(num_feats, dtype=np.float32)
    return (np.float32(temperature) ** (2 * (dim_t // 2) / np.float32(num_feats))).astype(np.float32)


@functools.lru_cache(maxsize=32)
def sine_position_encoding(
    height: int,
    width: int,
    num_pos_feats: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float | None = None,
) -> np.ndarray:
    """PositionEmbeddingSine for a `[height, width]` map, channels-last: `[height, width, num_pos_feats]`.

    Channels are (y sin/cos interleaved, then x), as in sam2. Read-only: the result is cached.
    """
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    half = num_pos_feats // 2
    scale = 2 * math.pi if scale is None else scale
    y_embed = np.broadcast_to(np.arange(1, height + 1, dtype=np.float32)[:, None], (height, width))
    x_embed = np.broadcast_to(np.arange(1, width + 1, dtype=np.float32)[None, :], (height, width))
    if normalize:
        eps = np.float32(1e-6)
        y_embed = y_embed / (y_embed[-1:, :] + eps) * np.float32(scale)
        x_embed = x_embed / (x_embed[:, -1:] + eps) * np.float32(scale)
    dim_t = _dim_t(half, temperature)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = np.stack((np.sin(pos_x[..., 0::2]), np.cos(pos_x[..., 1::2])), axis=-1).reshape(height, width, half)
    pos_y = np.stack((np.sin(pos_y[..., 0::2]), np.cos(pos_y[..., 1::2])), axis=-1).reshape(height, width, half)
    out = np.concatenate((pos_y, pos_x), axis=-1).astype(np.float32)
    out.flags.writeable = False
    return out


def get_1d_sine_pe(pos_inds: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
    """1-D sine encoding `[..., dim]` (sin half then cos half) of float positions, as sam2_utils.get_1d_sine_pe."""
    dim_t = jnp.asarray(_dim_t(dim // 2, temperature))
    pos = pos_inds[..., None].astype(jnp.float32) / dim_t
    return jnp.concatenate([jnp.sin(pos), jnp.cos(pos)], axis=-1)

"""SAM 2.1's image encoder: the Hiera trunk and the FPN neck (sam2/modeling/backbones/image_encoder.py)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import PointwiseConv, resize_nearest
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.hiera import Hiera
from robotseg_jax.modeling.position_encoding import sine_position_encoding


class LateralConv(nn.Module):
    """A 1x1 convolution wrapped like sam2's `nn.Sequential(conv=Conv2d)`, so its checkpoint key is `convs.i.conv`."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return PointwiseConv(self.features, name="conv")(x)


class FpnNeck(nn.Module):
    """sam2's FPN variant: 1x1 lateral convs, no output convs, nearest x2 top-down fusion (by sum) on
    `fpn_top_down_levels` only, and a sine position encoding per level.

    Levels are indexed like the trunk outputs (0 = highest resolution); `convs_0` is the lowest-resolution
    lateral, as in sam2, whose `convs` follow `backbone_channel_list` (deepest first).
    """

    d_model: int
    fpn_top_down_levels: tuple[int, ...]

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        last = len(xs) - 1
        features, pos = [None] * len(xs), [None] * len(xs)
        prev = None
        for i in range(last, -1, -1):
            lateral = LateralConv(self.d_model, name=f"convs_{last - i}")(xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                prev = lateral + resize_nearest(prev, (2 * prev.shape[1], 2 * prev.shape[2]))
            else:
                prev = lateral
            batch, height, width, _ = prev.shape
            encoding = jnp.asarray(sine_position_encoding(height, width, self.d_model), dtype=prev.dtype)
            features[i] = prev
            pos[i] = jnp.broadcast_to(encoding, (batch, height, width, self.d_model))
        return features, pos


class ImageEncoder(nn.Module):
    """`[B, H, W, 3]` normalised images -> the dict of sam2's `ImageEncoder.forward`, channels-last:

    - `backbone_fpn`: neck outputs `[B, h_l, w_l, d_model]`, highest resolution first, lowest `scalp` dropped;
    - `vision_pos_enc`: their sine position encodings, same shapes and order;
    - `vision_features`: the last (lowest-resolution) `backbone_fpn` level, `[B, H/16, W/16, d_model]`.
    """

    config: SAM2Config

    @nn.compact
    def __call__(self, images: jax.Array, deterministic: bool = True) -> dict[str, object]:
        cfg = self.config
        trunk_outputs = Hiera(cfg.hiera, name="trunk")(images, deterministic)
        features, pos = FpnNeck(cfg.d_model, tuple(cfg.fpn_top_down_levels), name="neck")(trunk_outputs)
        if cfg.scalp > 0:
            features, pos = features[: -cfg.scalp], pos[: -cfg.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}

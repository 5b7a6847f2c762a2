"""SAM 2.1's memory encoder (sam2/modeling/memory_encoder.py): fuses a frame's features with its predicted mask.

Channels-last throughout: `pix_feat` is `[B, h, w, 256]` at stride 16 and `masks` is `[B, H, W, 1]` at stride 1.
Submodule names follow the PyTorch attributes (`encoder_3` is `encoder.3` of the nn.Sequential) so that
`checkpoints.torch_keys` converts the weights by rule.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import Dense, DepthwiseConv, PointwiseConv, drop_path, gelu, layer_norm
from robotseg_jax.modeling.position_encoding import sine_position_encoding


class MaskDownSampler(nn.Module):
    """(conv k3 s2 p1 -> LayerNorm2d -> GELU) until `total_stride`, then a 1x1 conv to `embed_dim`.

    Each stage multiplies the channels by `stride**2`, so no information is lost to the downsampling (1 -> 256
    channels over four stride-2 stages).
    """

    embed_dim: int = 256
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    total_stride: int = 16

    @nn.compact
    def __call__(self, masks: jax.Array) -> jax.Array:
        num_stages = int(math.log2(self.total_stride) // math.log2(self.stride))
        if self.stride**num_stages != self.total_stride:
            raise ValueError(f"total_stride {self.total_stride} is not a power of stride {self.stride}")
        x, channels, pad = masks, 1, self.padding
        # Indices of the torch nn.Sequential: conv, norm, activation (no params) per stage.
        for stage in range(num_stages):
            channels *= self.stride**2
            x = nn.Conv(
                channels,
                (self.kernel_size, self.kernel_size),
                strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                name=f"encoder_{3 * stage}",
            )(x)
            x = layer_norm(1e-6, name=f"encoder_{3 * stage + 1}")(x)
            x = gelu(x)
        return PointwiseConv(self.embed_dim, name=f"encoder_{3 * num_stages}")(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm2d, MLP (x4) with GELU, layer scale `gamma`, drop path."""

    dim: int = 256
    kernel_size: int = 7
    padding: int = 3
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        y = DepthwiseConv(self.kernel_size, self.padding, name="dwconv")(x)
        y = layer_norm(1e-6, name="norm")(y)
        y = Dense(4 * self.dim, name="pwconv1")(y)
        y = Dense(self.dim, name="pwconv2")(gelu(y))
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init_value), (self.dim,))
        y = gamma * y
        use_rng = not deterministic and self.drop_path_rate > 0.0
        rng = self.make_rng("drop_path") if use_rng else None
        return x + drop_path(y, self.drop_path_rate, deterministic, rng)


class Fuser(nn.Module):
    """`num_layers` CXBlocks (`layers_i`); sam2.1 uses no input projection and no drop path here."""

    dim: int = 256
    num_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = CXBlock(self.dim, name=f"layers_{i}")(x)
        return x


class MemoryEncoder(nn.Module):
    """Encodes one frame's memory: `pix_feat_proj(pix_feat) + mask_downsampler(mask)`, fused, projected to 64-d."""

    in_dim: int = 256
    out_dim: int = 64
    fuser_num_layers: int = 2

    @nn.compact
    def __call__(
        self, pix_feat: jax.Array, masks: jax.Array, skip_mask_sigmoid: bool = False
    ) -> dict[str, jax.Array | list[jax.Array]]:
        """`pix_feat` [B, h, w, in_dim], `masks` [B, 16h, 16w, 1] -> {vision_features, vision_pos_enc: [pos]}.

        SAM2Base passes already scaled-and-biased sigmoid probabilities with `skip_mask_sigmoid=True`; the
        sigmoid here only serves raw logits (less domain shift from boolean ground-truth masks).
        """
        if not skip_mask_sigmoid:
            masks = jax.nn.sigmoid(masks)
        masks = masks.astype(pix_feat.dtype)  # the compute dtype (bfloat16: as torch autocast runs the convolutions)
        mask_features = MaskDownSampler(self.in_dim, name="mask_downsampler")(masks)
        x = PointwiseConv(self.in_dim, name="pix_feat_proj")(pix_feat) + mask_features
        x = Fuser(self.in_dim, self.fuser_num_layers, name="fuser")(x)
        if self.out_dim != self.in_dim:  # torch uses nn.Identity otherwise
            x = PointwiseConv(self.out_dim, name="out_proj")(x)
        batch, height, width, _ = x.shape
        pos = jnp.asarray(sine_position_encoding(height, width, self.out_dim), dtype=x.dtype)
        pos = jnp.broadcast_to(pos, (batch, height, width, self.out_dim))
        return {"vision_features": x, "vision_pos_enc": [pos]}

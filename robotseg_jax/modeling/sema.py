"""SEMA, RobotSeg's Structure-Enhanced Memory Associator: SAM 2.1's memory attention with a structure branch in
every layer.

Each layer runs SAM 2.1's main branch unchanged, then: the post-cross-attention tokens t2, modulated by the edge
map, go through a multi-scale depthwise pyramid and a second RoPE cross-attention to the memory; a 3x3 head makes
a 1-channel structure map, upsampled x16 (the supervised logits), whose sigmoid, brought back to the token grid,
gates the layer output t3 by (1 + alpha * g).

Layout: tokens batch-first `[B, N, C]` on a square h x w grid; maps channels-last `[B, h, w, C]` (the reshape of
tokens `[B, h*w, C]` to `[B, h, w, C]` is row-major, as torch's `[B, C, h, w]` view of sam2's tokens); the
structure logits follow the mask-logit layout `[B, L, 16h, 16w]` (L = 4 layers on the channel axis, layer 0
first). Submodule names are the PyTorch attribute names, so checkpoints.torch_keys maps them by its generic rule.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import DepthwiseConv, PointwiseConv, gelu, resize_bilinear
from robotseg_jax.modeling.edges import NmsTies, edge_map
from robotseg_jax.modeling.memory_attention import (
    MemoryAttention,
    MemoryAttentionLayer,
    RoPEAttention,
)


class DepthwiseSeparableConv(nn.Module):
    """`DSConv_k(x) = GELU(GroupNorm(PW(GELU(DW_k(x)))))` on `[B, h, w, C]`, one branch of the original's
    MSPyramid: DW a depthwise k x k conv without bias, PW a 1x1 conv with bias, exact (erf) GELU."""

    kernel_size: int
    channels: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = (self.kernel_size - 1) // 2
        x = DepthwiseConv(self.kernel_size, pad, use_bias=False, name="dw")(x)  # zero padding
        x = PointwiseConv(self.channels, name="pw")(gelu(x))
        # channels // 8 groups (the original's 32 at 256 channels); PyTorch's eps and two-pass variance.
        x = nn.GroupNorm(num_groups=self.channels // 8, epsilon=1e-5, use_fast_variance=False, name="norm")(x)
        return gelu(x)


class MultiScalePyramid(nn.Module):
    """The original's MSPyramid: `GELU(Conv1x1_{3C -> C}(concat[DSConv_3, DSConv_5, DSConv_7]))` on
    `[B, h, w, C]`."""

    channels: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branches = [DepthwiseSeparableConv(k, self.channels, name=f"conv{k}")(x) for k in (3, 5, 7)]
        return gelu(PointwiseConv(self.channels, name="fuse")(jnp.concatenate(branches, axis=-1)))


def edges_on_token_grid(edges: jax.Array, grid_size: tuple[int, int]) -> jax.Array:
    """The edge map on the token grid, `e = clamp(bilinear(E -> h x w), 0, 1)`: `[B, H, W, 1]` -> `[B, h, w, 1]`,
    without antialias as torch (a 2x2 average of the pixels at rows/cols {16i+7, 16i+8} for a stride-16 grid)."""
    return jnp.clip(resize_bilinear(edges, grid_size), 0.0, 1.0)


class SEMAMemoryAttentionLayer(MemoryAttentionLayer):
    """SAM 2.1's MemoryAttentionLayer plus the structure branch. Returns (layer output `[B, N, C]`, structure
    logits `[B, 16h, 16w]`)."""

    upsample_factor: int = 16  # structure map: token grid -> input image (the backbone stride)
    structure_strength_init: float = 1.0  # alpha, a learnable 0-d parameter (1.0: the original's constructor default)

    def setup(self) -> None:
        super().setup()
        self.structure_strength = self.param(
            "structure_strength", nn.initializers.constant(self.structure_strength_init), ()
        )
        # configured like the main cross-attention, as in the original: 1 head, RoPE with repeated keys, kv from
        # the memory
        self.cross_attn_structure = RoPEAttention(
            self.d_model,
            num_heads=1,
            dropout=self.dropout,
            rope_theta=self.rope_theta,
            rope_k_repeat=True,
            kv_in_dim=self.kv_in_dim,
        )
        self.ms_pyramid = MultiScalePyramid(self.d_model)
        self.structure_head = nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)))

    def __call__(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        query_pos: jax.Array,
        memory_pos: jax.Array,
        num_k_exclude_rope: int = 0,
        memory_mask: jax.Array | None = None,
        deterministic: bool = True,
        *,
        edges: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Arguments as MemoryAttentionLayer's, plus `edges` `[B, h, w, 1]`: the edge map on the token grid."""
        batch, num_tokens, channels = tgt.shape
        height, width = edges.shape[1:3]
        if height * width != num_tokens:
            raise ValueError(f"edges grid {height}x{width} does not fit {num_tokens} tokens")
        t2, t3 = self.main_branch(tgt, memory, query_pos, memory_pos, num_k_exclude_rope, memory_mask, deterministic)
        # As in the original, the structure features come from t2 (post cross-attention), the gate acts on t3
        # (post MLP).
        features = t2.reshape(batch, height, width, channels) * (1.0 + edges)
        query = self.ms_pyramid(features).reshape(batch, num_tokens, channels)  # no positional encoding on q
        structure = self.cross_attn_structure(
            query,
            memory + memory_pos,
            memory,
            num_k_exclude_rope=num_k_exclude_rope,
            key_mask=memory_mask,
            deterministic=deterministic,
        )
        logits_grid = self.structure_head(structure.reshape(batch, height, width, channels))
        logits = resize_bilinear(logits_grid, (self.upsample_factor * height, self.upsample_factor * width))
        gate = resize_bilinear(jax.nn.sigmoid(logits), (height, width))  # [B, h, w, 1]
        out = t3.reshape(batch, height, width, channels) * (1.0 + self.structure_strength * gate)
        return out.reshape(batch, num_tokens, channels), logits[..., 0]


class SEMAMemoryAttention(MemoryAttention):
    """MemoryAttention with SEMA layers. Computes the edge map of the raw image once (the original computes it in
    each layer, identically) and returns (conditioned tokens `[B, N, C]`, structure logits `[B, L, 16h, 16w]`)."""

    upsample_factor: int = 16
    structure_strength_init: float = 1.0
    edge_nms_ties: NmsTies = "strict"  # see edges.canny_magnitude

    def make_layer(self) -> SEMAMemoryAttentionLayer:
        return SEMAMemoryAttentionLayer(
            self.d_model,
            self.dim_feedforward,
            dropout=self.dropout,
            kv_in_dim=self.kv_in_dim,
            rope_theta=self.rope_theta,
            upsample_factor=self.upsample_factor,
            structure_strength_init=self.structure_strength_init,
        )

    def __call__(
        self,
        curr: jax.Array,
        memory: jax.Array,
        curr_pos: jax.Array,
        memory_pos: jax.Array,
        num_obj_ptr_tokens: int,
        memory_mask: jax.Array | None = None,
        deterministic: bool = True,
        *,
        raw_image: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Arguments as MemoryAttention's, plus `raw_image` `[B, 16h, 16w, 3]`: the model input of the current
        frame (resized and ImageNet-normalised: the original passes this tensor, in its predictor and in training)."""
        side = math.isqrt(curr.shape[1])
        edges = edges_on_token_grid(edge_map(raw_image, self.edge_nms_ties), (side, side))
        output = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        structure_maps = []
        for layer in self.layers:
            output, logits = layer(
                output,
                memory,
                curr_pos,
                memory_pos,
                num_obj_ptr_tokens,
                memory_mask,
                deterministic,
                edges=edges,
            )
            structure_maps.append(logits)
        return self.norm(output), jnp.stack(structure_maps, axis=1)

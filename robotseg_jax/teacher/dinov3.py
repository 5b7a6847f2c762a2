"""The DINOv3 ViT (facebookresearch/dinov3 `DinoVisionTransformer`) in Flax Linen, inference only.

The teacher of RobotSeg's pseudo-label propagation (the original uses `dinov3_vith16plus`): patch 16, one class
token plus 4 storage ("register") tokens, axial RoPE on the patch tokens, LayerScale, an MLP or SwiGLU
feed-forward, and a final LayerNorm. Module and parameter names are the official PyTorch attribute names
(`patch_embed.proj`, `blocks_3.attn.qkv`, `blocks_3.ls1.gamma`, `rope_embed.periods`, ...), so
`checkpoints.torch_keys` maps an official `.pth` state dict by rule; `teacher.dinov3_checkpoint` adds the few
DINOv3 specifics (the qkv key-bias mask buffer, Hugging Face names).

Training-only behaviour is left out on purpose: the RoPE coordinate shift/jitter/rescale augmentations
(`pos_embed_rope_rescale_coords=2` in every released config) act only when the PyTorch module is in training mode,
stochastic depth is 0 in every released config, and `local_cls_norm` only normalises local crops during training.
At evaluation the official model computes exactly what this module computes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.common import IMAGENET_MEAN, IMAGENET_STD, gelu, layer_norm


@dataclasses.dataclass(frozen=True)
class DinoV3Config:
    """Architecture of one DINOv3 ViT; the defaults are shared by every released ViT-S/16 ... ViT-H+/16."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn_ratio: float
    ffn_layer: str = "mlp"  # "mlp" (fc1, GELU, fc2) or "swiglu" (w1, w2, w3)
    patch_size: int = 16
    n_storage_tokens: int = 4
    rope_base: float = 100.0
    layer_norm_eps: float = 1e-5  # norm_layer "layernormbf16" is nn.LayerNorm(eps=1e-5)
    layerscale_init: float = 1e-5

    def __post_init__(self):
        if self.ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {self.ffn_layer!r}")
        if self.embed_dim % (4 * self.num_heads):
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of 4 * num_heads ({self.num_heads})")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Width of the FFN hidden layer: int(dim * ratio), or for SwiGLU 2/3 of it rounded up to a multiple of 8
        (dinov3.layers.SwiGLUFFN with its default align_to=8)."""
        hidden = int(self.embed_dim * self.ffn_ratio)
        if self.ffn_layer == "mlp":
            return hidden
        swiglu = int(hidden * 2 / 3)
        return swiglu + (-swiglu % 8)


# The ViTs of dinov3/hub/backbones.py (LVD-1689M weights), ViT-S/16 to ViT-H+/16. ViT-7B/16 is left out: it has no
# qkv bias and a SwiGLU aligned to 64, and no RobotSeg setting uses it.
VARIANTS: dict[str, DinoV3Config] = {
    "vits16": DinoV3Config(embed_dim=384, depth=12, num_heads=6, ffn_ratio=4.0),
    "vits16plus": DinoV3Config(embed_dim=384, depth=12, num_heads=6, ffn_ratio=6.0, ffn_layer="swiglu"),
    "vitb16": DinoV3Config(embed_dim=768, depth=12, num_heads=12, ffn_ratio=4.0),
    "vitl16": DinoV3Config(embed_dim=1024, depth=24, num_heads=16, ffn_ratio=4.0),
    "vitl16plus": DinoV3Config(embed_dim=1024, depth=24, num_heads=16, ffn_ratio=6.0, ffn_layer="swiglu"),
    "vith16plus": DinoV3Config(embed_dim=1280, depth=32, num_heads=20, ffn_ratio=6.0, ffn_layer="swiglu"),
}


class DinoV3Output(NamedTuple):
    """Last-layer tokens after the final LayerNorm (what `get_intermediate_layers(n=1, norm=True)` returns)."""

    patch_tokens: jax.Array  # [B, h, w, C]
    cls_token: jax.Array  # [B, C]
    storage_tokens: jax.Array  # [B, n_storage_tokens, C]


def rope_periods(head_dim: int, base: float) -> jax.Array:
    """RopePositionEmbedding's `periods` buffer: base ** (2i / (head_dim/2)), i < head_dim/4."""
    return base ** (2 * jnp.arange(head_dim // 4, dtype=jnp.float32) / (head_dim // 2))


class RopePositionEmbedding(nn.Module):
    """Axial RoPE angles for an h x w patch grid, as sin and cos of shape [h*w, head_dim].

    Coordinates are patch centres normalised per axis ("separate": (i + 0.5) / h) to [-1, 1]; the first half of
    the angles rotate with the row coordinate, the second half with the column, and the pattern is tiled twice to
    fill head_dim (to pair with `rotate_half`). `periods` is a buffer in the checkpoint; it is loaded, not rebuilt.
    """

    head_dim: int
    base: float

    @nn.compact
    def __call__(self, h: int, w: int) -> tuple[jax.Array, jax.Array]:
        periods = self.param("periods", lambda _: rope_periods(self.head_dim, self.base))
        coords_h = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        coords_w = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        coords = jnp.stack(jnp.meshgrid(coords_h, coords_w, indexing="ij"), axis=-1).reshape(h * w, 2)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / periods  # [hw, 2, head_dim/4]
        angles = jnp.tile(angles.reshape(h * w, -1), 2)  # [hw, head_dim]
        return jnp.sin(angles), jnp.cos(angles)


def rope_apply(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin, with rotate_half([a, b]) = [-b, a] over the last axis."""
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


class LinearKMaskedBias(nn.Module):
    """The fused qkv projection (dinov3 `LinearKMaskedBias`, mask_k_bias=True in every released config): the key
    third of the bias is multiplied by 0, so only the query and value biases act. The checkpoint's `bias_mask`
    buffer holds exactly that pattern; `dinov3_checkpoint` checks it instead of storing it."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.truncated_normal(0.02), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        third = self.features // 3
        bias_mask = jnp.concatenate([jnp.ones(third), jnp.zeros(third), jnp.ones(third)]).astype(bias.dtype)
        return x @ kernel + bias * bias_mask


class SelfAttention(nn.Module):
    """Multi-head self-attention; RoPE rotates the queries and keys of the patch tokens, not the prefix tokens."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        qkv = LinearKMaskedBias(3 * dim, name="qkv")(x).reshape(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
        prefix = tokens - sin.shape[0]
        sin, cos = sin[:, None, :], cos[:, None, :]
        q = jnp.concatenate([q[:, :prefix], rope_apply(q[:, prefix:], sin, cos)], axis=1)
        k = jnp.concatenate([k[:, :prefix], rope_apply(k[:, prefix:], sin, cos)], axis=1)
        out = jax.nn.dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return nn.Dense(dim, name="proj")(out.reshape(batch, tokens, dim))


class LayerScale(nn.Module):
    init_value: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))


class Mlp(nn.Module):
    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(x.shape[-1], name="fc2")(gelu(nn.Dense(self.hidden_dim, name="fc1")(x)))


class SwiGLUFFN(nn.Module):
    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = nn.silu(nn.Dense(self.hidden_dim, name="w1")(x))
        return nn.Dense(x.shape[-1], name="w3")(gate * nn.Dense(self.hidden_dim, name="w2")(x))


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    config: DinoV3Config

    @nn.compact
    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
        cfg = self.config
        ffn = Mlp if cfg.ffn_layer == "mlp" else SwiGLUFFN
        attn = SelfAttention(cfg.num_heads, name="attn")(layer_norm(cfg.layer_norm_eps, name="norm1")(x), sin, cos)
        x = x + LayerScale(cfg.layerscale_init, name="ls1")(attn)
        mlp = ffn(cfg.ffn_hidden_dim, name="mlp")(layer_norm(cfg.layer_norm_eps, name="norm2")(x))
        return x + LayerScale(cfg.layerscale_init, name="ls2")(mlp)


class PatchEmbed(nn.Module):
    embed_dim: int
    patch_size: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", name="proj")(images)


class DinoVisionTransformer(nn.Module):
    """images [B, H, W, 3], ImageNet-normalised, H and W multiples of the patch size -> `DinoV3Output`.

    `masked_patches` ([B, h, w] bool, optional) replaces those patch embeddings by `mask_token`, as the PyTorch
    model's `masks` argument does (iBOT-style masking; the propagation never passes it).
    """

    config: DinoV3Config

    @nn.compact
    def __call__(self, images: jax.Array, masked_patches: jax.Array | None = None) -> DinoV3Output:
        cfg = self.config
        init = nn.initializers.normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, cfg.embed_dim))
        storage_tokens = self.param("storage_tokens", init, (1, cfg.n_storage_tokens, cfg.embed_dim))
        mask_token = self.param("mask_token", nn.initializers.zeros, (1, cfg.embed_dim))

        patches = PatchEmbed(cfg.embed_dim, cfg.patch_size, name="patch_embed")(images)
        batch, h, w, dim = patches.shape
        if masked_patches is not None:
            patches = jnp.where(masked_patches[..., None], mask_token, patches)
        prefix = jnp.concatenate([cls_token, storage_tokens], axis=1)  # [1, 1 + storage, C]
        prefix = jnp.broadcast_to(prefix, (batch, *prefix.shape[1:]))
        x = jnp.concatenate([prefix, patches.reshape(batch, h * w, dim)], axis=1)

        sin, cos = RopePositionEmbedding(cfg.head_dim, cfg.rope_base, name="rope_embed")(h, w)
        for i in range(cfg.depth):
            x = SelfAttentionBlock(cfg, name=f"blocks_{i}")(x, sin, cos)
        x = layer_norm(cfg.layer_norm_eps, name="norm")(x)

        num_prefix = 1 + cfg.n_storage_tokens
        return DinoV3Output(
            patch_tokens=x[:, num_prefix:].reshape(batch, h, w, dim),
            cls_token=x[:, 0],
            storage_tokens=x[:, 1:num_prefix],
        )


def param_shapes(config: DinoV3Config) -> dict:
    """The parameter tree as ShapeDtypeStructs (no memory, no compute): the template a checkpoint is loaded into."""
    images = jax.ShapeDtypeStruct((1, 2 * config.patch_size, 2 * config.patch_size, 3), jnp.float32)
    return jax.eval_shape(DinoVisionTransformer(config).init, jax.random.key(0), images)["params"]


def random_params(config: DinoV3Config, seed: int = 0, scale: float = 0.02) -> dict:
    """Random parameters for tests and benchmarks, drawn with NumPy (Flax's `init` compiles one RNG program per
    parameter shape, which takes tens of seconds on a CPU for ViT-S). Every leaf is N(0, scale), LayerNorm and
    LayerScale factors 1 + N(0, scale) so that every block contributes; `periods` is the real RoPE buffer."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        if name == "periods":
            return np.asarray(rope_periods(config.head_dim, config.rope_base))
        noise = (rng.standard_normal(shape.shape) * scale).astype(np.float32)
        return noise + 1.0 if name in ("scale", "gamma") else noise

    return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


def normalize_images(images_uint8: jax.Array) -> jax.Array:
    """torchvision ToTensor + Normalize(ImageNet mean, std) on channels-last uint8 images."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (images_uint8.astype(jnp.float32) / 255.0 - mean) / std

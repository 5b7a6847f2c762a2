"""The Hiera trunk of SAM 2.1 (sam2/modeling/backbones/hieradet.py and backbones/utils.py), channels-last.

Token maps stay `[B, H, W, C]` throughout; windowed attention folds the windows into the batch axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.attention import dot_product_attention
from robotseg_jax.modeling.common import MLP, Dense, drop_path, gelu, layer_norm, matmul
from robotseg_jax.modeling.config import HieraConfig

# PyTorch's bicubic kernel constant (Keys' a = -0.75, as in OpenCV), not the a = -0.5 of jax.image.resize.
_CUBIC_A = -0.75


def _cubic_kernel(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel for |distance| < 2, with a = -0.75."""
    d = np.abs(distance)
    a = _CUBIC_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out_size, in_size]` weights of 1-D bicubic resampling as PyTorch computes it (align_corners=False).

    Source coordinates are half-pixel centred and not clamped; the four taps are clamped to the border, so
    several taps may land on the same edge pixel and their weights add up.
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    first = np.floor(src).astype(np.int64) - 1
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for tap in range(4):
        index = first + tap
        np.add.at(matrix, (np.arange(out_size), np.clip(index, 0, in_size - 1)), _cubic_kernel(src - index))
    return matrix.astype(np.float32)


def resize_bicubic(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """`F.interpolate(mode="bicubic", align_corners=False, antialias=False)` on `[..., H, W, C]`.

    Bicubic is separable, so this is two small matmuls with constant weight matrices.
    """
    rows = jnp.asarray(_bicubic_matrix(x.shape[-3], int(size[0])))
    cols = jnp.asarray(_bicubic_matrix(x.shape[-2], int(size[1])))
    return jnp.einsum("oh,...hwc,pw->...opc", rows, x, cols, precision=jax.lax.Precision.HIGHEST).astype(x.dtype)


def _window_padding(size: int, window_size: int) -> int:
    return (window_size - size % window_size) % window_size


def window_partition(x: jax.Array, window_size: int) -> jax.Array:
    """`[B, H, W, C]` -> `[B * num_windows, window_size, window_size, C]`, zero-padding H and W at the end.

    As in sam2, the padded tokens are not masked: they take part in attention as keys.
    """
    batch, height, width, channels = x.shape
    pad_h, pad_w = _window_padding(height, window_size), _window_padding(width, window_size)
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    rows, cols = (height + pad_h) // window_size, (width + pad_w) // window_size
    x = x.reshape(batch, rows, window_size, cols, window_size, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)


def window_unpartition(windows: jax.Array, window_size: int, hw: tuple[int, int]) -> jax.Array:
    """Inverse of `window_partition` for an unpadded size `hw`: `[B * num_windows, ws, ws, C]` -> `[B, H, W, C]`."""
    height, width = hw
    rows = (height + _window_padding(height, window_size)) // window_size
    cols = (width + _window_padding(width, window_size)) // window_size
    batch = windows.shape[0] // (rows * cols)
    x = windows.reshape(batch, rows, cols, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows * window_size, cols * window_size, -1)
    return x[:, :height, :width]


def max_pool(x: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """`nn.MaxPool2d(kernel_size=stride, stride=stride)` (floor mode) on `[B, H, W, C]`."""
    batch, height, width, channels = x.shape
    sh, sw = stride
    x = x[:, : height // sh * sh, : width // sw * sw]
    return x.reshape(batch, height // sh, sh, width // sw, sw, channels).max(axis=(2, 4))


class PatchEmbed(nn.Module):
    """7x7 convolution with stride 4 and padding 3 (backbones/utils.PatchEmbed)."""

    embed_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(self.embed_dim, (7, 7), strides=(4, 4), padding=((3, 3), (3, 3)), name="proj")(x)


class QKVProjection(nn.Module):
    """sam2's fused `qkv` Linear (an nn.Dense's params: kernel `[C, 3 * features]`, bias), applied as three
    products with the kernel's q, k and v columns. The same values as one product split afterwards, but its
    gradient needs no concatenation of the three cotangents into one transposed `[3 * features, tokens]` buffer,
    which XLA:CPU copies at a fraction of memory speed (a 76 MB copy took 240 ms in a 256 px training step)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 3 * self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (3 * self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        columns = lambda i: slice(i * self.features, (i + 1) * self.features)
        return tuple(matmul(x, kernel[:, columns(i)]) + bias[columns(i)] for i in range(3))


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries are optionally max-pooled (the stage transitions)."""

    dim_out: int
    num_heads: int
    q_stride: tuple[int, int] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, _ = x.shape
        q, k, v = QKVProjection(self.dim_out, name="qkv")(x)
        if self.q_stride:
            # Pooling sees the heads merged into channels, as in sam2.
            q = max_pool(q, self.q_stride)
        head_dim = self.dim_out // self.num_heads
        heads_first = lambda t: t.reshape(batch, -1, self.num_heads, head_dim).transpose(0, 2, 1, 3)  # [B, H, N, D]
        x = dot_product_attention(heads_first(q), heads_first(k), heads_first(v)).transpose(0, 2, 1, 3)
        return Dense(self.dim_out, name="proj")(x.reshape(batch, *q.shape[1:3], self.dim_out))


class MultiScaleBlock(nn.Module):
    """A Hiera block: (windowed) attention with optional query pooling, then an MLP, both pre-norm and residual."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int = 0  # 0: global attention
    q_stride: tuple[int, int] | None = None
    drop_path_rate: float = 0.0
    mlp_ratio: float = 4.0

    def _drop_path(self, x: jax.Array, deterministic: bool) -> jax.Array:
        rng = None if deterministic or self.drop_path_rate == 0.0 else self.make_rng("dropout")
        return drop_path(x, self.drop_path_rate, deterministic, rng)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        shortcut = x
        x = layer_norm(1e-6, name="norm1")(x)
        if self.dim != self.dim_out:
            # The residual branch changes width (and resolution) too; sam2 projects the normalised input.
            shortcut = Dense(self.dim_out, name="proj")(x)
            if self.q_stride:
                shortcut = max_pool(shortcut, self.q_stride)
        out_hw = shortcut.shape[1:3]

        if self.window_size > 0:
            x = window_partition(x, self.window_size)
        x = MultiScaleAttention(self.dim_out, self.num_heads, self.q_stride, name="attn")(x)
        if self.window_size > 0:
            # Query pooling shrank every window by the stride.
            window_out = self.window_size // self.q_stride[0] if self.q_stride else self.window_size
            x = window_unpartition(x, window_out, out_hw)

        x = shortcut + self._drop_path(x, deterministic)
        mlp = MLP(int(self.dim_out * self.mlp_ratio), self.dim_out, num_layers=2, activation=gelu, name="mlp")
        return x + self._drop_path(mlp(layer_norm(1e-6, name="norm2")(x)), deterministic)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Constructor arguments of one MultiScaleBlock, as `Hiera.__init__` in sam2 derives them."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_stride: tuple[int, int] | None
    drop_path_rate: float


def stage_ends(config: HieraConfig) -> list[int]:
    """Index of the last block of every stage."""
    return [sum(config.stages[: i + 1]) - 1 for i in range(len(config.stages))]


def block_specs(config: HieraConfig) -> list[BlockSpec]:
    """Per-block widths, heads, window sizes, pooling and drop-path rates, following sam2's loop exactly.

    The window size lags by one block: the first block of a stage partitions its input with the previous stage's
    window size, and its pooled queries shrink those windows by the stride.
    """
    if len(config.stages) != len(config.window_spec):
        raise ValueError(f"stages {config.stages} and window_spec {config.window_spec} differ in length")
    ends = stage_ends(config)
    if not 0 <= config.q_pool <= len(ends) - 1:
        raise ValueError(f"q_pool must be in [0, {len(ends) - 1}], got {config.q_pool}")
    q_pool_blocks = [end + 1 for end in ends[:-1]][: config.q_pool]
    depth = sum(config.stages)
    rates = np.linspace(0.0, config.drop_path_rate, depth, dtype=np.float32).tolist()

    specs, dim, num_heads, stage = [], config.embed_dim, config.num_heads, 0
    for i in range(depth):
        window_size = 0 if i in config.global_att_blocks else config.window_spec[stage]
        dim_out = dim
        if i - 1 in ends:
            dim_out, num_heads, stage = int(dim * config.dim_mul), int(num_heads * config.head_mul), stage + 1
        q_stride = tuple(config.q_stride) if i in q_pool_blocks else None
        specs.append(BlockSpec(dim, dim_out, num_heads, window_size, q_stride, rates[i]))
        dim = dim_out
    return specs


def _pos_embed(background: jax.Array, window_embed: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """`[1, h, w, C]`: the background embedding resized bicubically to the grid plus the window embedding tiled
    over it (https://arxiv.org/abs/2311.05613). Inputs are PyTorch-layout `[1, C, h, w]` params."""
    window = window_embed.shape[-1]
    if hw[0] % window or hw[1] % window:
        raise ValueError(f"patch grid {tuple(hw)} must be a multiple of the first window size {window}")
    background = resize_bicubic(background.transpose(0, 2, 3, 1), hw)
    return background + jnp.tile(window_embed.transpose(0, 2, 3, 1), (1, hw[0] // window, hw[1] // window, 1))


class Hiera(nn.Module):
    """Hierarchical ViT trunk. Returns the output of every stage, highest resolution first, `[B, h, w, C]`."""

    config: HieraConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> list[jax.Array]:
        cfg = self.config
        window = cfg.window_spec[0]
        # Both embeddings keep PyTorch's [1, C, h, w] layout so that the checkpoint maps by name alone.
        background_hw = cfg.window_pos_embed_bkg_spatial_size
        background = self.param("pos_embed", nn.initializers.zeros, (1, cfg.embed_dim, *background_hw))
        window_embed = self.param("pos_embed_window", nn.initializers.zeros, (1, cfg.embed_dim, window, window))

        x = PatchEmbed(cfg.embed_dim, name="patch_embed")(x)
        x = x + _pos_embed(background, window_embed, x.shape[1:3]).astype(x.dtype)
        ends = stage_ends(cfg)
        outputs = []
        for i, spec in enumerate(block_specs(cfg)):
            x = MultiScaleBlock(**dataclasses.asdict(spec), name=f"blocks_{i}")(x, deterministic)
            if i in ends:
                outputs.append(x)
        return outputs

"""Layers and resampling shared by several SAM 2 components, written to match PyTorch numerics.

Layout convention for the whole `modeling` package: images and feature maps are channels-last `[B, H, W, C]`;
token sequences are batch-first `[B, N, C]`; mask logits keep SAM's `[B, M, H, W]` (M masks, no channel axis).
Submodule names equal the attribute names of the PyTorch reference, with list index `i` written `name_i`, so
that `checkpoints.torch_keys` maps state_dict keys to Flax params by rule instead of by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax import constants

# The normalisation of every model input, as float32 arrays that broadcast over channels-last images.
IMAGENET_MEAN = np.asarray(constants.IMAGENET_MEAN, np.float32)
IMAGENET_STD = np.asarray(constants.IMAGENET_STD, np.float32)

_SQRT_HALF = np.float32(np.sqrt(0.5))


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch's nn.GELU(): the exact erf form, x/2 (1 + erf(x / sqrt 2)), written as PyTorch's CPU kernel computes
    it (Flax's default is the tanh approximation). `flax.linen.gelu(approximate=False)` goes through erfc, which
    XLA:CPU evaluates about 25% slower (12.6 M elements: 25 ms against 19 ms on the 2-core Xeon)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF.astype(x.dtype)))


def layer_norm(epsilon: float = 1e-5, name: str | None = None) -> nn.LayerNorm:
    """A LayerNorm with PyTorch's default eps (Flax's default is 1e-6) and PyTorch's two-pass variance.

    sam2's LayerNorm2d (normalise over channels, eps 1e-6) on a channels-last map is `layer_norm(1e-6)`.
    `use_fast_variance=False` because E[x^2]-E[x]^2 loses the 1e-4 parity on large activations.
    """
    return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x [..., C] @ kernel [C, D]` as one 2-D product over the flattened leading axes.

    The weight gradient of a product over the last axis of an N-D input contracts all N-1 leading axes, which
    XLA:CPU computes on a transposed copy of the output's cotangent; fused into the backward of the elementwise ops
    before it, that copy ran at a fraction of memory speed (about 1 s of a 256 px training step). The weight
    gradient of the 2-D product contracts one axis and needs no copy. In bfloat16 the products (forward and
    backward) accumulate in float32 (`accumulating_dot`).
    """
    flat = x.reshape(-1, x.shape[-1])
    out = jnp.dot(flat, kernel) if x.dtype == jnp.float32 else accumulating_dot(flat, kernel)
    return out.reshape(*x.shape[:-1], kernel.shape[-1])


@jax.custom_vjp
def accumulating_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a [M, K] @ b [K, N]` of low-precision (bfloat16) operands, accumulated in float32 and rounded once to
    `a`'s dtype, as oneDNN computes a matmul under torch autocast; the two gradient products likewise.

    XLA:CPU runs a bfloat16 dot with a float32 result on AMX-BF16 where the CPU has it (1.4 TFLOP/s at 4096 x
    1024 x 1024 on a 2-core Xeon) and one with a bfloat16 result without (190 GFLOP/s), and JAX's own gradient of
    the float32-result dot would take float32 cotangents (a float32 product)."""
    return _rounded_dot(a, b, a.dtype)


def _rounded_dot(a, b, dtype):
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(dtype)


def _accumulating_dot_fwd(a, b):
    return _rounded_dot(a, b, a.dtype), (a, b)


def _accumulating_dot_bwd(residuals, grad):
    a, b = residuals
    grad = grad.astype(a.dtype)
    return _rounded_dot(grad, b.T, a.dtype), _rounded_dot(a.T, grad, b.dtype)


accumulating_dot.defvjp(_accumulating_dot_fwd, _accumulating_dot_bwd)


class Dense(nn.Module):
    """`nn.Dense(features)` (the same params and initialisers: kernel `[in, features]`, bias `[features]`) as a
    2-D product (`matmul`)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        return matmul(x, kernel) + bias


class MLP(nn.Module):
    """sam2.modeling.sam2_utils.MLP: `num_layers` Linear layers (`layers_i`), activation between, optional sigmoid."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    sigmoid_output: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = [self.hidden_dim] * (self.num_layers - 1) + [self.output_dim]
        for i, dim in enumerate(dims):
            x = Dense(dim, name=f"layers_{i}")(x)
            if i < self.num_layers - 1:
                x = self.activation(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


class PointwiseConv(nn.Module):
    """A 1x1 convolution (`nn.Conv(features, (1, 1))`'s params: kernel `[1, 1, in, out]`, bias `[out]`) computed
    as a 2-D product (`matmul`). XLA:CPU lowers the weight gradient of a 1x1 convolution through a transposed copy
    and a convolution kernel (175 ms for the FPN's 96 -> 256 conv on an 8-frame clip at 256 px) where the same
    product as a dot takes a few ms."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        return matmul(x, kernel[0, 0]) + bias


class DepthwiseConv(nn.Module):
    """A depthwise k x k convolution with zero padding (`nn.Conv(C, (k, k), feature_group_count=C)`'s params:
    kernel `[k, k, 1, C]`, bias `[C]`), computed as the sum of the k*k shifted inputs times their taps, accumulated
    in float32. XLA:CPU computes a grouped convolution's weight gradient as a dense C x C convolution whose
    diagonal it keeps (256 times the work for the memory encoder's 7x7 over 256 channels); as products and sums
    its gradient is k*k reductions."""

    kernel_size: int
    padding: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, pad, channels = self.kernel_size, self.padding, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, channels))
        bias = self.param("bias", nn.initializers.zeros_init(), (channels,)) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        padded = jnp.pad(x.astype(jnp.float32), [(0, 0)] * (x.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)])
        height, width = padded.shape[-3] - k + 1, padded.shape[-2] - k + 1
        taps = kernel[:, :, 0].astype(jnp.float32)
        out = sum(padded[..., i : i + height, j : j + width, :] * taps[i, j] for i in range(k) for j in range(k))
        out = out.astype(x.dtype)
        return out if bias is None else out + bias


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """`F.interpolate(mode="bilinear", align_corners=False, antialias=False)` on `[..., H, W, C]`.

    `jax.image.resize` with `antialias=False` uses the same half-pixel source coordinates and edge clamping as
    PyTorch, for up- and downsampling (tested against torch in tests/test_common.py).
    """
    out_shape = (*x.shape[:-3], int(size[0]), int(size[1]), x.shape[-1])
    return jax.image.resize(x, out_shape, method="linear", antialias=False)


def resize_bilinear_nchw(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of the last two axes (for mask logits laid out `[B, M, H, W]`)."""
    out_shape = (*x.shape[:-2], int(size[0]), int(size[1]))
    return jax.image.resize(x, out_shape, method="linear", antialias=False)


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """PyTorch's legacy `mode="nearest"` on `[..., H, W, C]`: source index = floor(dst * (in / out)).

    The scale is a float32 as in PyTorch's kernel; in float64 a few size pairs (e.g. 2 -> 82) round differently.
    """
    in_h, in_w = x.shape[-3], x.shape[-2]
    rows = _nearest_source_index(in_h, int(size[0]))
    cols = _nearest_source_index(in_w, int(size[1]))
    return x[..., rows, :, :][..., cols, :]


def _nearest_source_index(in_size: int, out_size: int) -> np.ndarray:
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
    return np.minimum(index, in_size - 1)


def drop_path(x: jax.Array, rate: float, deterministic: bool, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth (timm's DropPath): zero whole samples with probability `rate`, rescale the rest."""
    if deterministic or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0)


def cast_floating(tree, dtype):
    """Floating array leaves of `tree` cast to `dtype`; everything else (ints, keys, Python flags) unchanged."""
    is_float = lambda x: hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
    return jax.tree.map(lambda x: x.astype(dtype) if is_float(x) else x, tree)

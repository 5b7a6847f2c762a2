"""Dropout whose keep mask costs one fused elementwise pass on every backend.

`jax.random` lowers Threefry-2x32 on CPU as a rolled loop of its 5 round groups (to keep compile times short), so
each group is a separate pass over the whole counter array: 16 M draws take about 0.33 s on the project's 2-core
CPU, most of the memory attention's dropout cost in a training step. `threefry_bits` computes the same function
with the rounds unrolled in plain array ops, which XLA fuses with the comparison and the select into one loop
(0.06 s for the same draws). The bits equal `jax.random.bits` for a Threefry key, so `Dropout` keeps exactly the
elements `flax.linen.Dropout` keeps: switching changes no training run, only its speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Threefry-2x32 with 20 rounds (Salmon et al., 2011), the rotations of its two alternating groups of 4 rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _fast_path_applies(key: jax.Array, size: int) -> bool:
    # jax's counter layout (the 64-bit element index as two 32-bit words) is that of its "partitionable"
    # Threefry, the default since jax 0.5; a counter above 32 bits would need the high word.
    return (
        str(jax.random.key_impl(key)) == "threefry2x32"
        and bool(jax.config.jax_threefry_partitionable)
        and size < 2**32
    )


def threefry_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """uint32 random bits of `shape`, equal to `jax.random.bits(key, shape)` for a Threefry key (any other key,
    jax's non-partitionable Threefry or more than 2**32 elements: `jax.random.bits` itself)."""
    shape = tuple(shape)
    size = math.prod(shape)
    if not _fast_path_applies(key, size):
        return jax.random.bits(key, shape, jnp.uint32)
    k0, k1 = jax.random.key_data(key)
    schedule = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
    x0 = jnp.broadcast_to(schedule[0], shape)  # the index's high word (0) plus the first key word
    x1 = lax.iota(jnp.uint32, size).reshape(shape) + schedule[1]
    for group in range(5):
        for rotation in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation))) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0 ^ x1


def bernoulli(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
    """Booleans that are True with probability `p`: `jax.random.bernoulli(key, p, shape)`, element for element
    (a uniform float32 in [0, 1) from the top 23 bits, compared with `p`)."""
    if jnp.result_type(p) != jnp.float32:  # float64 under jax_enable_x64, where jax draws 64 bits per element
        return jax.random.bernoulli(key, p, shape)
    bits = threefry_bits(key, shape)
    uniform = lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - 1.0
    return uniform < p


class Dropout(nn.Module):
    """`flax.linen.Dropout` (same rng stream "dropout", same kept elements, same scaling) with the fused mask."""

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        keep = bernoulli(self.make_rng("dropout"), keep_prob, inputs.shape)
        return lax.select(keep, inputs / keep_prob, jnp.zeros_like(inputs))

"""Scaled dot-product attention, computed in blocks of queries when its logits would be large.

At 1024 px the image encoder's global blocks attend 4096 x 4096 tokens (4 heads) and memory attention 4096 x
28,736 (7 memories and 64 pointer tokens): materialised whole, the float32 logits and probabilities are 268 MB
and 470 MB per layer, and on a CPU every pass over them (max, exp, sum, normalise) runs at memory speed. Blocks of
queries keep each block's logits small, and each block's softmax is normalised after the value product (a
[queries, head_dim] division instead of a [queries, keys] one). Every query row still sees all of its keys in one
block, so the result is the plain softmax attention up to float round-off (<= 1e-6 measured on unit-normal
inputs); small attention (every training size on a CPU, the decoder) takes the plain path unchanged.

Logits and softmax are float32 for any input dtype (bfloat16 inputs: as torch autocast runs softmax in float32);
the probabilities are cast back to the values' dtype for the second product.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Logit elements per query block (4 Mi: 16 MiB in float32), and the size above which attention is blocked.
BLOCK_LOGITS = 1 << 22


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v on heads-first inputs `[B, H, T, D]`; returns `[B, H, T_q, D_v]`.

    key_mask: `[B, T_k]`, True for a valid key. A query without any valid key outputs zeros (not NaN).
    dropout: applied to the attention probabilities (training); such attention always takes the plain path, so
        its random draws have the probabilities' shape.
    """
    batch, heads, num_q, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    block = _query_block(num_q, heads * batch * k.shape[-2])
    if dropout is not None or block == num_q:
        return _plain(q, k, v, key_mask, scale, dropout)
    blocks = q.reshape(batch, heads, num_q // block, block, head_dim).transpose(2, 0, 1, 3, 4)
    out = jax.lax.map(lambda q_block: _normalised_after_values(q_block, k, v, key_mask, scale), blocks)
    return out.transpose(1, 2, 0, 3, 4).reshape(batch, heads, num_q, v.shape[-1])


def _query_block(num_q: int, keys_per_query: int) -> int:
    """The largest power-of-two divisor of `num_q` whose logits fit `BLOCK_LOGITS` (`num_q`: not blocked)."""
    if num_q * keys_per_query <= BLOCK_LOGITS:
        return num_q
    block = num_q & -num_q  # largest power of two dividing num_q
    while block > 1 and block * keys_per_query > BLOCK_LOGITS:
        block //= 2
    return block


def _plain(q, k, v, key_mask, scale, dropout):
    probs = jax.nn.softmax(_masked_logits(q, k, key_mask, scale), axis=-1)
    if key_mask is not None:
        probs = jnp.where(key_mask[:, None, None, :], probs, 0.0)  # drops an all-invalid row's uniform weights
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)


def _masked_logits(q, k, key_mask, scale):
    """float32 `[B, H, T_q, T_k]` logits, invalid keys at the lowest finite value (finite: an all-invalid row
    stays NaN-free; the callers zero its weights after the exponential)."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if key_mask is None:
        return logits
    return jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)


def _normalised_after_values(q, k, v, key_mask, scale):
    """One query block: exp(logits - row max) times v, divided by the row sums afterwards."""
    logits = _masked_logits(q, k, key_mask, scale)
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    if key_mask is not None:
        weights = jnp.where(key_mask[:, None, None, :], weights, 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.where(total > 0, total, 1.0)).astype(v.dtype)

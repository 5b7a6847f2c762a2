"""Scaled dot-product attention, computed in blocks (of batch items or of queries) when its logits would be large.

At 1024 px the image encoder's global blocks attend 4096 x 4096 tokens (4 heads) and memory attention 4096 x
28,736 (7 memories and 64 pointer tokens): materialised whole, the float32 logits and probabilities are 268 MB
and 470 MB per layer, and on a CPU every pass over them (max, exp, sum, normalise) runs at memory speed. Blocks of
queries keep each block's logits small, and each block's softmax is normalised after the value product (a
[queries, head_dim] division instead of a [queries, keys] one). Many small attentions batched together (the
windows of every frame of a training clip) are blocked by whole batch items instead. Every query row still sees
all of its keys in one block, so the result is the plain softmax attention up to float round-off (<= 1e-6
measured on unit-normal inputs); small attention (the decoder, most training sizes) takes the plain path.

Logits and softmax are float32 for any input dtype (bfloat16 inputs: as torch autocast runs softmax in float32);
the probabilities are cast back to the values' dtype for the second product.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Logit elements per block (4 Mi: 16 MiB in float32), and the size above which attention is blocked.
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
    plan = block_plan(batch, heads, num_q, k.shape[-2])
    if dropout is not None or plan is None:
        return _plain(q, k, v, key_mask, scale, dropout)
    axis, block = plan
    attend = lambda q, k, v, key_mask: _normalised_after_values(q, k, v, key_mask, scale)
    if axis == 0:  # many small attentions (windows x frames): blocks of whole batch items
        return _map_blocks(attend, (q, k, v, key_mask), axis, block)
    return _map_blocks(lambda q: attend(q, k, v, key_mask), (q,), axis, block)  # one large one: query blocks


def block_plan(batch: int, heads: int, num_q: int, num_k: int) -> tuple[int, int] | None:
    """How attention of these sizes is blocked: None (plain), or (axis, block size) of the `[B, H, T_q, D]`
    query, such that a block's logits fit `BLOCK_LOGITS`.

    Whole batch items are blocked when one item fits (the batch split into equal blocks); otherwise blocks of a
    power-of-two number of queries, each seeing every key. Either axis is zero-padded to a multiple of the block
    (padded batch items have no valid key and output zeros; padded query rows are dropped), so a block is never
    degenerate: at 256 px, 196-token windows in a batch of 32 made blocks of 4 queries before (49 blocks, four
    times the time of one plain attention in training)."""
    item_logits = heads * num_q * num_k
    if batch * item_logits <= BLOCK_LOGITS:
        return None
    if item_logits <= BLOCK_LOGITS:
        num_blocks = -(-batch // (BLOCK_LOGITS // item_logits))
        return 0, -(-batch // num_blocks)
    block = 1 << max(0, (BLOCK_LOGITS // (batch * heads * num_k)).bit_length() - 1)
    return 2, min(block, num_q)


def _map_blocks(fn: Callable, xs: tuple, axis: int, block: int) -> jax.Array:
    """`fn(*xs)` over blocks of `block` entries along `axis` of every array in `xs` (None passes through), one block at
    a time (`lax.map`), the results joined again along that axis; the padding to a multiple of `block` is dropped."""
    size = jax.tree.leaves(xs)[0].shape[axis]
    num_blocks = -(-size // block)

    def split(x):
        padding = [(0, 0)] * x.ndim
        padding[axis] = (0, num_blocks * block - size)
        x = jnp.pad(x, padding)
        return jnp.moveaxis(x.reshape(*x.shape[:axis], num_blocks, block, *x.shape[axis + 1 :]), axis, 0)

    out = jax.lax.map(lambda blocks: fn(*blocks), jax.tree.map(split, xs))
    out = jnp.moveaxis(out, 0, axis)
    return jax.lax.slice_in_dim(out.reshape(*out.shape[:axis], -1, *out.shape[axis + 2 :]), 0, size, axis=axis)


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

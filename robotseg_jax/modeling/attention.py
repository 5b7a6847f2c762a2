"""Scaled dot-product attention, computed in blocks (of batch items, of queries, of keys) when its logits would be large.

At 1024 px the image encoder's global blocks attend 4096 x 4096 tokens (4 heads) and memory attention 4096 x
28,736 (7 memories and 64 pointer tokens): materialised whole, the float32 logits and probabilities are 268 MB
and 470 MB per layer, and on a CPU every pass over them (max, exp, sum, normalise) runs at memory speed. Blocks of
queries keep each block's logits small, and each block's softmax is normalised after the value product (a
[queries, head_dim] division instead of a [queries, keys] one). Many small attentions batched together (the
windows of every frame of a training clip) are blocked by whole batch items instead. Rows of more than
`LONG_ROW` keys are also split into blocks of about `KEY_BLOCK` keys, combined by an online softmax (a running
row max and sum, as in flash attention): a 128 x 28,736 block of logits (15 MB) falls out of a CPU's caches, and
its two products ran at 150-180 GFLOP/s on a 2-core Xeon against 210 GFLOP/s with 1024-key blocks. Every path
is the plain softmax attention up to float round-off (<= 1e-6 measured on unit-normal inputs); small attention
(the decoder, most training sizes) takes the plain path.

Logits and softmax are float32 for any input dtype (bfloat16 inputs: as torch autocast runs softmax in float32);
the probabilities are cast back to the values' dtype for the second product, which accumulates in float32 (a
bfloat16 product with a float32 result runs on AMX-BF16 in XLA:CPU, one with a bfloat16 result does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Logit elements per block (4 Mi: 16 MiB in float32), and the size above which attention is blocked.
BLOCK_LOGITS = 1 << 22
# Rows of more than LONG_ROW keys are split into blocks of at most KEY_BLOCK keys. Measured on a 2-core Xeon with
# 4096 queries: 8,256 keys (2 memories) run as fast either way, 16,448 keys 15% faster split, 28,736 keys 30%.
LONG_ROW = 8192
KEY_BLOCK = 1024


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
    num_k = k.shape[-2]
    key_block = -(-num_k // -(-num_k // KEY_BLOCK)) if num_k > LONG_ROW else None  # near-equal blocks
    plan = block_plan(batch, heads, num_q, key_block or num_k)
    if dropout is not None or (plan is None and key_block is None):
        return _plain(q, k, v, key_mask, scale, dropout)
    if key_block is None:
        attend = lambda q, k, v, key_mask: _normalised_after_values(q, k, v, key_mask, scale)
    else:
        attend = lambda q, k, v, key_mask: _online_softmax(q, k, v, key_mask, scale, key_block)
    if plan is None:
        return attend(q, k, v, key_mask)
    axis, block = plan
    if axis == 0:  # many small attentions (windows x frames): blocks of whole batch items
        return _map_blocks(attend, (q, k, v, key_mask), axis, block)
    return _map_blocks(lambda q: attend(q, k, v, key_mask), (q,), axis, block)  # one large one: query blocks


def block_plan(batch: int, heads: int, num_q: int, num_k: int) -> tuple[int, int] | None:
    """How attention of these sizes (`num_k`: the keys one block of a row sees) is blocked: None (plain), or
    (axis, block size) of the `[B, H, T_q, D]` query, such that a block's logits fit `BLOCK_LOGITS`.

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
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype)


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


def _online_softmax(q, k, v, key_mask, scale, key_block):
    """Attention over the keys in blocks of `key_block`, one block at a time (a `fori_loop` over slices of k and v):
    each block's logits update the running row max, rescale the running sum and value product, and add their own.
    When the keys do not divide into blocks, the last block ends at the last key and overlaps the one before it;
    its keys already seen count as invalid there. (Zero-padding k and v to whole blocks instead copied both, 59 MB
    per memory-attention layer at 28,736 keys.) Queries without any valid key output zeros."""
    batch, _, num_k, _ = k.shape
    valid = jnp.ones((batch, num_k), bool) if key_mask is None else key_mask
    offsets = jnp.arange(key_block)

    def step(block, carry):
        row_max, row_sum, out = carry
        start = jnp.minimum(block * key_block, num_k - key_block)
        block_k, block_v = (jax.lax.dynamic_slice_in_dim(x, start, key_block, axis=2) for x in (k, v))
        block_valid = jax.lax.dynamic_slice_in_dim(valid, start, key_block, axis=1)
        block_valid &= start + offsets >= block * key_block  # the overlap of a last block was seen before
        # invalid keys at the lowest finite logit: exp(logit - row max) is 0 once the row has seen a valid key
        logits = _masked_logits(q, block_k, block_valid, scale)
        new_max = jax.lax.stop_gradient(jnp.maximum(row_max, logits.max(axis=-1, keepdims=True)))
        weights = jnp.exp(logits - new_max)
        rescale = jnp.exp(row_max - new_max)
        out = out * rescale + jnp.einsum(
            "bhqk,bhkd->bhqd", weights.astype(v.dtype), block_v, preferred_element_type=jnp.float32
        )
        return new_max, row_sum * rescale + weights.sum(axis=-1, keepdims=True), out

    rows = q.shape[:-1] + (1,)
    init = (
        jnp.full(rows, jnp.finfo(jnp.float32).min),
        jnp.zeros(rows, jnp.float32),
        jnp.zeros(q.shape[:-1] + v.shape[-1:], jnp.float32),
    )
    _, row_sum, out = jax.lax.fori_loop(0, -(-num_k // key_block), step, init)
    out = jnp.where(valid.any(axis=-1)[:, None, None, None], out / row_sum, 0.0)
    return out.astype(v.dtype)

"""The blocked attention paths (batch blocks, query blocks, key blocks, padded or not) equal plain softmax
attention (and jax.nn's), with and without a key mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robotseg_jax.modeling import attention
from robotseg_jax.modeling.attention import dot_product_attention


def _inputs(batch, heads, num_q, num_k, dim, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, heads, n, dim)), jnp.float32) for n in (num_q, num_k, num_k))
    return q, k, v


def _reference(q, k, v, key_mask=None):
    """jax.nn's attention (tokens-first layout) as the independent reference."""
    tokens_first = lambda t: t.transpose(0, 2, 1, 3)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(tokens_first(q), tokens_first(k), tokens_first(v), mask=mask)
    return tokens_first(out)


@pytest.mark.parametrize(
    "batch,num_q,num_k,heads,plan",
    [
        (2, 256, 96, 2, (2, 8)),  # query blocks
        (2, 100, 96, 2, (2, 8)),  # query blocks, the last one padded
        (2, 64, 1000, 3, (2, 1)),
        (6, 20, 30, 2, (0, 3)),  # blocks of whole batch items
        (7, 20, 30, 2, (0, 3)),  # batch blocks, the last one padded
    ],
)
def test_blocked_equals_plain(monkeypatch, batch, num_q, num_k, heads, plan):
    q, k, v = _inputs(batch, heads, num_q, num_k, 16)
    key_mask = jnp.asarray(np.random.default_rng(1).random((batch, num_k)) > 0.3)
    plain = [(m, dot_product_attention(q, k, v, m)) for m in (None, key_mask)]
    monkeypatch.setattr(attention, "BLOCK_LOGITS", 4096)  # forces blocks of at most 4096 logits
    assert attention.block_plan(batch, heads, num_q, num_k) == plan
    for mask, expected in plain:
        blocked = dot_product_attention(q, k, v, mask)
        np.testing.assert_allclose(blocked, expected, atol=2e-6)
        np.testing.assert_allclose(blocked, _reference(q, k, v, mask), atol=2e-6)


@pytest.mark.parametrize(
    "batch,num_q,num_k,budget",
    [
        (1, 64, 100, 1 << 22),  # key blocks of 34, 34 and 34 (the last overlapping by 2), all queries at once
        (2, 64, 96, 512),  # key blocks of 32 and query blocks of 4
        (6, 8, 40, 512),  # key blocks of 20 in blocks of whole batch items
    ],
)
def test_key_blocks_equal_plain(monkeypatch, batch, num_q, num_k, budget):
    q, k, v = _inputs(batch, 2, num_q, num_k, 16)
    key_mask = jnp.asarray(np.random.default_rng(1).random((batch, num_k)) > 0.3)
    key_mask = key_mask.at[0, : num_k // 2].set(False)  # whole key blocks without a valid key, the first ones
    plain = [(m, dot_product_attention(q, k, v, m)) for m in (None, key_mask)]
    monkeypatch.setattr(attention, "LONG_ROW", 32)
    monkeypatch.setattr(attention, "KEY_BLOCK", 34)
    monkeypatch.setattr(attention, "BLOCK_LOGITS", budget)
    for mask, expected in plain:
        blocked = dot_product_attention(q, k, v, mask)
        np.testing.assert_allclose(blocked, expected, atol=2e-6)
        np.testing.assert_allclose(blocked, _reference(q, k, v, mask), atol=2e-6)


def test_query_without_valid_keys_outputs_zeros(monkeypatch):
    q, k, v = _inputs(2, 1, 128, 64, 8)
    key_mask = jnp.zeros((2, 64), bool).at[1, :10].set(True)  # batch 0 has no valid key
    monkeypatch.setattr(attention, "BLOCK_LOGITS", 1024)
    for long_row in (attention.LONG_ROW, 16):  # query blocks, then key blocks of 16 keys
        monkeypatch.setattr(attention, "LONG_ROW", long_row)
        monkeypatch.setattr(attention, "KEY_BLOCK", 16)
        out = dot_product_attention(q, k, v, key_mask)
        assert np.all(np.asarray(out[0]) == 0)
        np.testing.assert_allclose(out[1:], _reference(q[1:], k[1:], v[1:], key_mask[1:]), atol=2e-6)


def test_block_plan_at_the_model_sizes():
    assert attention.block_plan(1, 4, 4096, 4096) == (2, 256)  # a 1024 px global Hiera block: 4 heads x 4096 keys
    # memory attention, 7 memories and 64 pointer tokens: 29 key blocks of 991 keys, all 4096 queries at once
    assert 28736 > attention.LONG_ROW and attention.block_plan(1, 1, 4096, 991) is None
    assert attention.block_plan(1, 1, 4096, 4160) == (2, 512)  # memory attention, 1 memory: query blocks
    assert attention.block_plan(32, 4, 196, 196) == (0, 16)  # 256 px, stage 3: 4 windows of 14 x 14 x 8 frames
    assert attention.block_plan(512, 1, 64, 64) is None  # 256 px, stage 1: 8 x 8 windows, plain


def test_blocked_gradients_equal_plain(monkeypatch):
    q, k, v = _inputs(5, 2, 20, 30, 8)
    loss = lambda q, k, v: (dot_product_attention(q, k, v) ** 2).sum()
    expected = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for budget, long_row in ((4096, 1000), (256, 1000), (1 << 22, 8)):  # batch, query, then key blocks
        monkeypatch.setattr(attention, "BLOCK_LOGITS", budget)
        monkeypatch.setattr(attention, "LONG_ROW", long_row)
        monkeypatch.setattr(attention, "KEY_BLOCK", 8)
        for got, want in zip(jax.grad(loss, argnums=(0, 1, 2))(q, k, v), expected):
            np.testing.assert_allclose(got, want, atol=1e-5)

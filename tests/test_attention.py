"""The blocked attention path equals plain softmax attention (and jax.nn's), with and without a key mask."""

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


@pytest.mark.parametrize("num_q,num_k,heads", [(256, 96, 2), (96, 300, 1), (64, 1000, 3)])
def test_blocked_equals_plain(monkeypatch, num_q, num_k, heads):
    q, k, v = _inputs(2, heads, num_q, num_k, 16)
    key_mask = jnp.asarray(np.random.default_rng(1).random((2, num_k)) > 0.3)
    plain = [(m, dot_product_attention(q, k, v, m)) for m in (None, key_mask)]
    monkeypatch.setattr(attention, "BLOCK_LOGITS", 4096)  # forces blocks of at most 4096 / (heads * keys) queries
    assert attention._query_block(num_q, 2 * heads * num_k) < num_q
    for mask, expected in plain:
        blocked = dot_product_attention(q, k, v, mask)
        np.testing.assert_allclose(blocked, expected, atol=2e-6)
        np.testing.assert_allclose(blocked, _reference(q, k, v, mask), atol=2e-6)


def test_query_without_valid_keys_outputs_zeros(monkeypatch):
    q, k, v = _inputs(2, 1, 128, 64, 8)
    key_mask = jnp.zeros((2, 64), bool).at[1, :10].set(True)  # batch 0 has no valid key
    monkeypatch.setattr(attention, "BLOCK_LOGITS", 1024)
    out = dot_product_attention(q, k, v, key_mask)
    assert np.all(np.asarray(out[0]) == 0)
    np.testing.assert_allclose(out[1:], _reference(q[1:], k[1:], v[1:], key_mask[1:]), atol=2e-6)


def test_query_block_is_a_dividing_power_of_two():
    assert attention._query_block(4096, 4 * 4096) == 256  # a 1024 px global Hiera block: 4 heads x 4096 keys
    assert attention._query_block(4096, 28736) == 128  # memory attention with 7 memories and 64 pointer tokens
    assert attention._query_block(96, 1 << 20) == 4  # 96 = 32 x 3: blocks of 4 fit 4 Mi logits
    assert attention._query_block(64, 64) == 64  # small: not blocked

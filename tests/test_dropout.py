"""The fused dropout mask draws jax's own Threefry bits: same kept elements as `flax.linen.Dropout`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robotseg_jax.modeling.dropout import Dropout, bernoulli, threefry_bits

SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4, 9), (0, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5])
def test_threefry_bits_equal_jax_random_bits(shape, seed):
    key = jax.random.fold_in(jax.random.key(seed), 17)
    np.testing.assert_array_equal(threefry_bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
    jitted = jax.jit(threefry_bits, static_argnums=1)(key, shape)
    np.testing.assert_array_equal(jitted, jax.random.bits(key, shape, jnp.uint32))


def test_threefry_bits_of_raw_and_batched_keys():
    raw = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(threefry_bits(raw, (4, 6)), jax.random.bits(raw, (4, 6), jnp.uint32))
    keys = jax.random.split(jax.random.key(4), 3)
    batched = jax.vmap(lambda k: threefry_bits(k, (5, 2)))(keys)
    np.testing.assert_array_equal(batched, jax.vmap(lambda k: jax.random.bits(k, (5, 2), jnp.uint32))(keys))


def test_other_generators_fall_back_to_jax_random():
    key = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(threefry_bits(key, (8, 3)), jax.random.bits(key, (8, 3), jnp.uint32))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_bernoulli_equals_jax_random_bernoulli(p):
    key = jax.random.key(6)
    ours = bernoulli(key, p, (64, 33))
    np.testing.assert_array_equal(ours, jax.random.bernoulli(key, p, (64, 33)))
    assert ours.dtype == jnp.bool_


class _Twice(nn.Module):
    """Two dropouts in one module: each draws from its own path in the "dropout" stream."""

    module: type
    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        return self.module(self.rate)(x, deterministic) + 2 * self.module(self.rate)(x, deterministic)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_the_elements_flax_keeps(dtype, rate):
    x = jax.random.normal(jax.random.key(7), (2, 16, 40)).astype(dtype)
    rngs = {"dropout": jax.random.key(8)}
    ours = _Twice(Dropout, rate).apply({}, x, False, rngs=rngs)
    flax_ = _Twice(nn.Dropout, rate).apply({}, x, False, rngs=rngs)
    assert ours.dtype == flax_.dtype == dtype
    np.testing.assert_array_equal(ours, flax_)
    kept = np.mean(np.asarray(Dropout(rate).apply({}, jnp.ones((100_000,)), False, rngs=rngs)) != 0)
    assert abs(kept - (1 - rate)) < 0.01


def test_dropout_deterministic_and_edge_rates():
    x = jnp.arange(12.0).reshape(3, 4)
    rngs = {"dropout": jax.random.key(9)}
    np.testing.assert_array_equal(Dropout(0.3).apply({}, x, True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, False, rngs=rngs), x)
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, False, rngs=rngs), jnp.zeros_like(x))
    with pytest.raises(ValueError, match="deterministic"):
        Dropout(0.3).apply({}, x, rngs=rngs)

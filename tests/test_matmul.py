"""`common.matmul`: the 2-D product every Dense layer uses. float32 is `jnp.dot`; bfloat16 accumulates in float32
and rounds once, forward and backward, as PyTorch's CPU matmul does on bfloat16 tensors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from robotseg_jax.modeling.common import matmul


def _operands(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 24, 300)).astype(np.float32)
    kernel = rng.normal(size=(300, 48)).astype(np.float32)
    return jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)


def test_float32_is_the_plain_product():
    x, kernel = _operands(jnp.float32)
    np.testing.assert_array_equal(matmul(x, kernel), jnp.dot(x, kernel))


def test_bfloat16_accumulates_in_float32_like_torch():
    x, kernel = _operands(jnp.bfloat16)
    out = matmul(x, kernel)
    assert out.dtype == jnp.bfloat16
    to_torch = lambda a: torch.from_numpy(np.asarray(a.astype(jnp.float32))).to(torch.bfloat16)
    expected = (to_torch(x) @ to_torch(kernel)).float().numpy()
    exact = np.asarray(x, np.float32) @ np.asarray(kernel, np.float32)
    got = np.asarray(out, np.float32)
    ulp = np.abs(exact) * 2.0**-8  # one bfloat16 rounding of the float32 sum (8 bits of mantissa)
    assert np.all(np.abs(got - exact) <= ulp + 1e-6)
    assert np.mean(got == expected) > 0.99  # the same roundings as torch's (summation order may flip a few)


def test_bfloat16_gradients_accumulate_in_float32():
    x, kernel = _operands(jnp.bfloat16)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 24, 48)), jnp.float32)
    loss = lambda x, kernel: (matmul(x, kernel).astype(jnp.float32) * weights).sum()
    grads = jax.grad(loss, argnums=(0, 1))(x, kernel)
    exact = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.float32), kernel.astype(jnp.float32))
    for got, want in zip(grads, exact):
        assert got.dtype == jnp.bfloat16
        want = np.asarray(want)
        # the cotangent is rounded to bfloat16 once, each gradient product once
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-7, atol=2**-7 * np.abs(want).mean())

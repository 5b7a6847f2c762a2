"""The shared resampling helpers against PyTorch's F.interpolate."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robotseg_jax.modeling.common import (
    resize_bilinear,
    resize_bilinear_nchw,
    resize_nearest,
)
from tests.reference import max_abs_diff, nchw_to_nhwc

pytestmark = pytest.mark.reference

SIZES = [((7, 9), (64, 48)), ((64, 64), (16, 16)), ((1024, 1024), (64, 64)), ((5, 3), (13, 2)), ((2, 2), (82, 3))]


@pytest.mark.parametrize("in_hw, out_hw", SIZES)
def test_bilinear_matches_torch(in_hw, out_hw):
    x = torch.randn(1, 2, *in_hw, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    assert max_abs_diff(resize_bilinear(jnp.asarray(nchw_to_nhwc(x)), out_hw), nchw_to_nhwc(expected)) <= 1e-5
    assert max_abs_diff(resize_bilinear_nchw(jnp.asarray(x.numpy()), out_hw), expected) <= 1e-5


@pytest.mark.parametrize("in_size", range(1, 12))
def test_nearest_matches_torch_on_every_small_size_pair(in_size):
    x = torch.arange(in_size, dtype=torch.float32).reshape(1, 1, in_size, 1).expand(1, 1, in_size, in_size)
    for out_size in range(1, 100):
        expected = F.interpolate(x, size=(out_size, out_size), mode="nearest")
        got = resize_nearest(nchw_to_nhwc(x), (out_size, out_size))  # NumPy in, NumPy out: no compilation
        assert np.array_equal(np.asarray(got), nchw_to_nhwc(expected)), (in_size, out_size)

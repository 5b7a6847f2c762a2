"""PyTorch's default initialisation of Linear, Conv2d, norm and Embedding parameters, on Flax param leaves.

RobotSeg's new modules start from these when training begins from a SAM 2.1 checkpoint, as in the original: conv and
linear weights kaiming-uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)), biases U(+-1/sqrt(fan_in)), norm weights 1
and biases 0, embeddings N(0, 1). Flax's own initialisers differ (lecun-normal kernels, zero biases).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np

Path = tuple[str, ...]


def torch_default_init(
    leaves: Mapping[Path, jax.ShapeDtypeStruct], rng: np.random.Generator
) -> dict[Path, np.ndarray]:
    """Fresh float32 values for flattened Flax param leaves, chosen by leaf name and its siblings:

    - `kernel` (Dense `[in, out]`, Conv `[kh, kw, in/groups, out]`) and the `bias` beside it:
      U(+-1/sqrt(fan_in)) with fan_in = the product of all kernel axes but the last (torch's fan_in);
    - `scale` and the `bias` beside it (LayerNorm, GroupNorm): ones and zeros;
    - `embedding` (nn.Embedding): N(0, 1).
    Any other leaf is an error: it has no PyTorch default and needs its module's own value. Draws are made in the
    order of `leaves` (NumPy rather than jax.random: eager jax.random compiles once per shape, seconds here).
    """
    out = {}
    for path, leaf in leaves.items():
        module, name = path[:-1], path[-1]
        shape = tuple(leaf.shape)
        kernel = leaves.get((*module, "kernel"))
        if name == "embedding":
            value = rng.standard_normal(shape)
        elif name == "scale" or (name == "bias" and (*module, "scale") in leaves):
            value = np.full(shape, 1.0 if name == "scale" else 0.0)
        elif name == "kernel" or (name == "bias" and kernel is not None):
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            value = rng.uniform(-bound, bound, shape)
        else:
            raise ValueError(f"no PyTorch default initialisation for {'/'.join(path)}")
        out[path] = np.asarray(value, np.float32)
    return out

"""Device mesh and shardings for training: `jax.jit` over a `Mesh` with `NamedSharding`s, no `pmap`.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose devices also split the
parameters and optimizer state). The batch is split over both axes. Parameters are replicated unless a regex rule
on their PyTorch name (`torch_keys.flax_path_to_torch_key`) asks for FSDP: then their largest dimension that the
`fsdp` axis divides is split over it, and XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robotseg_jax.checkpoints.torch_keys import flax_path_to_torch_key
from robotseg_jax.errors import ConfigValueError

DATA_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated under FSDP: splitting them saves nothing and costs a collective.
MIN_FSDP_SIZE = 2**14


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all). -1 for `data` takes the devices that fsdp leaves."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ConfigValueError(f"mesh.fsdp={fsdp} must divide the {len(devices)} devices")
    if data == -1:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ConfigValueError(f"mesh.data={data} x mesh.fsdp={fsdp} does not cover the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: Sequence[int], fsdp_size: int) -> PartitionSpec:
    """Splits the largest dimension that `fsdp_size` divides; replicated when none does or the array is small."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            return PartitionSpec(*([None] * axis), "fsdp")
    return PartitionSpec()


def param_shardings(params, mesh: Mesh, fsdp_rules: Sequence[str] = (".*",)):
    """A tree like `params` of NamedShardings: FSDP for the parameters whose PyTorch name matches a rule."""
    patterns = [re.compile(rule) for rule in fsdp_rules]
    fsdp_size = mesh.shape["fsdp"]

    def sharding(path, leaf) -> NamedSharding:
        key = flax_path_to_torch_key(path)
        if any(p.fullmatch(key) for p in patterns):
            return NamedSharding(mesh, fsdp_spec(np.shape(leaf), fsdp_size))
        return replicated(mesh)

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: sharding(path, leaf) for path, leaf in flat.items()})


def shard_params(params, mesh: Mesh, fsdp_rules: Sequence[str] = (".*",)):
    """Places host params on the mesh (see `param_shardings`)."""
    return jax.device_put(params, param_shardings(params, mesh, fsdp_rules))


def with_shardings(abstract, shardings_of):
    """ShapeDtypeStructs like `abstract` with the shardings `shardings_of(abstract)` gives them."""
    return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract,
                        shardings_of(abstract))


def init_sharded(init_fn, params, mesh: Mesh):
    """`init_fn(params)` (e.g. an optax `init`) on the mesh: leaves derived from a parameter (Adam's moments) keep
    its sharding by propagation; the rest (step counts, constants) are replicated instead of left on one device.

    Abstract params (ShapeDtypeStructs with shardings, see `with_shardings`) give the abstract result with the
    shardings it would have, from compiling `init_fn` without running it: a restore target."""
    on_mesh = lambda s: s if isinstance(s, NamedSharding) else replicated(mesh)
    if all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(params)):
        out = jax.jit(init_fn).lower(params).compile().out_info  # ShapeDtypeStructs with the compiled shardings
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_mesh(s.sharding)), out)
    state = jax.jit(init_fn)(params)
    return jax.tree.map(lambda leaf: jax.device_put(leaf, on_mesh(leaf.sharding)), state)

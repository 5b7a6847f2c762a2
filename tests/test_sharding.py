"""The training mesh and shardings, on 4 CPU devices in a subprocess (the test process has one device)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec

from robotseg_jax.training import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fsdp_spec_splits_the_largest_divisible_axis():
    assert sharding.fsdp_spec((256, 1024), 4) == PartitionSpec(None, "fsdp")
    assert sharding.fsdp_spec((4096, 6), 4) == PartitionSpec("fsdp")
    assert sharding.fsdp_spec((255, 257), 4) == PartitionSpec()  # nothing divisible: replicated
    assert sharding.fsdp_spec((64,), 4) == PartitionSpec()  # too small to be worth a collective
    assert sharding.fsdp_spec((256, 1024), 1) == PartitionSpec()


def test_mesh_rejects_shapes_that_do_not_cover_the_devices():
    with pytest.raises(ValueError, match="must divide"):
        sharding.make_mesh(fsdp=3, devices=[object()] * 4)
    with pytest.raises(ValueError, match="does not cover"):
        sharding.make_mesh(data=3, fsdp=2, devices=[object()] * 4)


def test_sharded_adamw_step_equals_the_single_device_step():
    """A jitted AdamW step of the SAM 2.1 params on a 2x2 (data, fsdp) mesh, with donation, equals the same step
    on one device; FSDP really splits the large parameters and the batch."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from robotseg_jax.checkpoints import convert
        from robotseg_jax.modeling.config import get_model_config
        from robotseg_jax.training import optimizer as opt, sharding

        template = convert.params_template(get_model_config("sam2.1_hiera_t", image_size=64))
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), template)
        batch = rng.normal(size=(8, 16)).astype(np.float32)
        tx = opt.make_optimizer(params, opt.OptimizerConfig(total_steps=10))

        def loss(p, x):  # touches every parameter, and the batch
            return sum(jnp.sum(jnp.tanh(l) ** 2) for l in jax.tree.leaves(p)) * jnp.mean(x ** 2)

        def step(p, s, x):
            grads = jax.grad(loss)(p, x)
            updates, s = tx.update(grads, s, p)
            return jax.tree.map(lambda a, b: a + b, p, updates), s

        single_p, single_s = jax.jit(step)(params, tx.init(params), batch)

        mesh = sharding.make_mesh(data=2, fsdp=2)
        p = sharding.shard_params(params, mesh)
        s = sharding.init_sharded(tx.init, p, mesh)
        x = jax.device_put(batch, sharding.batch_sharding(mesh))
        p_shard = jax.tree.map(lambda a: a.sharding, p)
        s_shard = jax.tree.map(lambda a: a.sharding, s)
        sharded = jax.jit(step, in_shardings=(p_shard, s_shard, x.sharding), out_shardings=(p_shard, s_shard),
                          donate_argnums=(0, 1))
        new_p, _ = sharded(p, s, x)

        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(new_p), jax.tree.leaves(single_p)))
        kernel = new_p["memory_attention"]["layers_0"]["linear1"]["kernel"]
        print("DIFF", diff)
        print("KERNEL_SHARDS", len({tuple(s.data.shape) for s in kernel.addressable_shards}),
              kernel.addressable_shards[0].data.shape)
        print("BATCH_SHARD", x.addressable_shards[0].data.shape)
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert float(lines["DIFF"]) <= 1e-6
    assert "(256, 1024)" in lines["KERNEL_SHARDS"]  # linear1 [256, 2048] split in two over fsdp
    assert lines["BATCH_SHARD"] == "(2, 16)"  # batch 8 over 4 devices

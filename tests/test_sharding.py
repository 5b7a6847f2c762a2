"""The training mesh and shardings, on 4 CPU devices in a subprocess (the test process has one device)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
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


@pytest.mark.xdist_group("training")
def test_train_step_on_a_2x2_mesh_equals_the_single_device_step():
    """The jitted RobotSeg train step (LET, clip forward with its scan, AdamW) on a 2x2 (data, fsdp) mesh of 4
    simulated devices, with donation, gives the single-device step's loss and updated params; FSDP really splits
    the large parameters and the batch; a random init on the mesh gives the unsharded init's params. (RobotSeg
    with configs/quickstart.py:tiny's slim trunk: the sharding does not depend on the depth, and it compiles in
    half the time.)"""
    script = textwrap.dedent(
        """
        import functools
        import jax, jax.numpy as jnp, numpy as np
        from robotseg_jax.checkpoints.convert import initial_params
        from robotseg_jax.modeling.config import get_model_config
        from robotseg_jax.modeling.robotseg import build_model
        from robotseg_jax.training import optimizer as opt, sharding
        from robotseg_jax.training.prompts import ROBOTSEG, draw_prompts
        from robotseg_jax.training.train_step import StepConfig, init_train_state, train_step

        from configs import quickstart

        size, batch_size, frames = 64, 4, 3
        config = get_model_config("robotseg_hiera_t", image_size=size,
                                  **quickstart.get_config("tiny").model_overrides.to_dict())
        model = build_model(config)
        params = jax.device_get(initial_params(config, None, seed=0))
        tx = opt.make_optimizer(params, opt.OptimizerConfig(total_steps=10))
        plan, from_gt = draw_prompts(np.random.default_rng(3), ROBOTSEG, frames)
        rng = np.random.default_rng(0)
        masks = np.zeros((batch_size, frames, size, size), bool)
        for b in range(batch_size):
            masks[b, :, 8 + b : 40 + b, 10 : 30 + 2 * b] = True
        batch = {"images": rng.normal(size=(batch_size, frames, size, size, 3)).astype(np.float32),
                 "masks": masks, "category": (np.arange(batch_size) % 3).astype(np.int32)}
        step = functools.partial(train_step, model=model, optimizer=tx, config=StepConfig(), plan=plan)

        single_state, single_metrics = jax.jit(step)(init_train_state(params, tx, 0), batch, jnp.asarray(from_gt))

        mesh = sharding.make_mesh(data=2, fsdp=2)
        # A random init on the mesh (as train.py starts): each device computes its shards, the same values.
        on_mesh = initial_params(config, None, seed=0, shardings=lambda a: sharding.param_shardings(a, mesh))
        print("INIT_ON_MESH", all(np.array_equal(np.asarray(a), b)
                                  for a, b in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(params))),
              on_mesh["memory_attention"]["layers_0"]["linear1"]["kernel"].addressable_shards[0].data.shape)
        p = sharding.shard_params(params, mesh)
        state = sharding.init_sharded(lambda q: init_train_state(q, tx, 0), p, mesh)
        state_shardings = jax.tree.map(lambda a: a.sharding, state)
        data = sharding.batch_sharding(mesh)
        sharded = jax.jit(step, in_shardings=(state_shardings, data, sharding.replicated(mesh)),
                          out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
        x = jax.device_put(batch, data)
        new_state, metrics = sharded(state, x, jnp.asarray(from_gt))

        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(single_state.params)))
        kernel = new_state.params["memory_attention"]["layers_0"]["linear1"]["kernel"]
        print("LOSSES", float(single_metrics["core_loss"]), float(metrics["core_loss"]))
        print("DIFF", diff)
        print("KERNEL_SHARDS", len({tuple(s.data.shape) for s in kernel.addressable_shards}),
              kernel.addressable_shards[0].data.shape)
        print("BATCH_SHARD", x["images"].addressable_shards[0].data.shape)
        print("PARAMS", sum(a.size for a in jax.tree.leaves(params)))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=False,
                            timeout=900)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    single, sharded = map(float, lines["LOSSES"].split())
    assert np.isfinite(single) and abs(single - sharded) <= 1e-4 * abs(single)
    # Adam normalises the update, so params agree to float32 round-off of the reduction orders.
    assert float(lines["DIFF"]) <= 1e-5
    assert lines["KERNEL_SHARDS"] == "1 (128, 256)"  # linear1 [256, 256] split in two over fsdp
    assert lines["INIT_ON_MESH"] == "True (128, 256)"
    assert lines["BATCH_SHARD"] == "(1, 3, 64, 64, 3)"  # batch 4 over the 4 devices
    assert int(lines["PARAMS"]) > 15_000_000  # still a real model: the decoder, SEMA, RPG, memory modules

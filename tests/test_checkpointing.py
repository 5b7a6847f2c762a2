"""Training checkpoints (`training/checkpointing.py`): a save restores the state and the input position, and a
checkpoint in the format of earlier versions (the state item written by orbax's `StandardSave`) still resumes."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from robotseg_jax.training.checkpointing import DATA_ITEM, STATE_ITEM, TrainCheckpoints
from robotseg_jax.training.train_step import init_train_state


def _state(seed: int):
    params = {"dense": {"kernel": jax.random.normal(jax.random.key(seed), (3, 5)), "bias": jnp.arange(5.0) + seed}}
    return init_train_state(params, optax.adamw(1e-3), seed=seed).replace(step=jnp.asarray(7, jnp.int32))


def _iterator(consumed: int) -> grain.DatasetIterator:
    iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
    for _ in range(consumed):
        next(iterator)
    return iterator


def _assert_same_state(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_save_restores_the_state_and_the_input_position(tmp_path):
    checkpoints = TrainCheckpoints(str(tmp_path), keep=2)
    checkpoints.save(7, _state(1), _iterator(3))
    checkpoints.wait()
    assert checkpoints.latest_step() == 7

    iterator = _iterator(0)
    restored = checkpoints.restore_latest(_state(2), iterator)
    checkpoints.close()
    _assert_same_state(restored, _state(1))
    assert next(iterator) == 3


def test_a_checkpoint_of_the_earlier_format_resumes(tmp_path):
    with ocp.CheckpointManager(str(tmp_path)) as manager:
        args = {STATE_ITEM: ocp.args.StandardSave(_state(1)), DATA_ITEM: grain.checkpoint.CheckpointSave(_iterator(5))}
        manager.save(7, args=ocp.args.Composite(**args))
        manager.wait_until_finished()

    checkpoints = TrainCheckpoints(str(tmp_path))
    iterator = _iterator(0)
    restored = checkpoints.restore_latest(jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(2)), iterator)
    checkpoints.close()
    _assert_same_state(restored, _state(1))
    assert next(iterator) == 5

"""Training checkpoints with orbax: the `TrainState` (params, optimizer state, step, PRNG key, skip counter) and
the grain iterator state, saved asynchronously together under `<workdir>/checkpoints/<step>`.

Kept: the last `keep` checkpoints plus the one with the best validation J&F (`BEST_METRIC`). A restart restores
the latest, so a resumed run continues with exactly the state and batches it would have seen.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from robotseg_jax.training.train_step import TrainState

BEST_METRIC = "val_jf"


class TrainCheckpoints:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        preservation = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=keep),
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def save(
        self, step: int, state: TrainState, iterator: grain.DatasetIterator, val_jf: float | None = None, force=False
    ) -> None:
        """Starts saving (asynchronously); `val_jf` makes the checkpoint a candidate for the best one."""
        metrics = None if val_jf is None else {BEST_METRIC: float(val_jf)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator))
        self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore_latest(self, state: TrainState, iterator: grain.DatasetIterator) -> TrainState | None:
        """The latest checkpoint into `state`'s structure and shardings (and `iterator`, in place); None if none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(iterator)
            ),
        )
        return restored["state"]

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

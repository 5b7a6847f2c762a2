"""Training input from a config: the TFDS datasets (built from VRS-Sim on the fly for the quickstart), the grain
iterator of data/pipeline.py, and host batches -> global device arrays on the mesh.

Batch sizes in the config are global; each process loads its `batch_size // process_count` clips of every global
batch, and `jax.make_array_from_process_local_data` assembles the global array, split over the mesh's data axes.
"""

from __future__ import annotations

import grain
import jax
import numpy as np
from ml_collections import config_dict

from robotseg_jax import distributed
from robotseg_jax.data import pipeline, samplers, tfds_builders, vrs_tfds
from robotseg_jax.data.sim import dataset as sim_dataset
from robotseg_jax.errors import ConfigValueError, UserError
from robotseg_jax.training.sharding import batch_sharding

# What the train step consumes of a pipeline batch.
STEP_KEYS = ("images", "masks", "category")


class MissingDatasetError(UserError, FileNotFoundError):
    """The training dataset is not built, and the config does not say how to render it."""


def ensure_dataset(data: config_dict.ConfigDict, log=print) -> None:
    """Makes sure TFDS dataset `data.name` is built under `data.data_dir`. With `data.sim` set (VRS-Sim), renders
    the videos into `data.sim.out` and builds them if absent; otherwise a missing dataset is an error that says
    how to build it. Only process 0 builds; every process waits for it (also when it finds the dataset built,
    which process 0 may just have finished)."""
    built = _is_built(data.name, data.data_dir)
    if not built and data.get("sim") is None:
        raise MissingDatasetError(
            f"no TFDS dataset {data.name!r} in {data.data_dir or 'the default TFDS dir'}: build it with "
            f"python -m robotseg_jax.data.tfds_builders {data.name} --manual_dir <VRS layout> --data_dir <dir>"
        )
    if not built and jax.process_index() == 0:
        sim = data.sim
        generation = sim_dataset.GenerationConfig(
            num_frames=sim.frames, size=sim.size, seed=sim.seed, holdout_embodiment=sim.holdout_embodiment
        )
        log(f"rendering {sim.videos} VRS-Sim videos into {sim.out}")
        sim_dataset.generate(sim.out, sim.videos, generation, workers=sim.workers, log=log)
        tfds_builders.build(data.name, sim.out, data.data_dir)
    distributed.barrier("training dataset ready")


def _is_built(name: str, data_dir: str | None) -> bool:
    try:
        vrs_tfds.open_split(name, "train", data_dir)
    except Exception:  # noqa: BLE001 -- TFDS raises several types for "not there"; any failure means build it
        return False
    return True


def clip_sources(data: config_dict.ConfigDict) -> tuple[pipeline.ClipSource, pipeline.ClipSource | None]:
    """The video source (and the optional 1-frame image source) of the config, with its global batch sizes."""
    sampler = {"bidirectional": samplers.BidirectionalSampler, "uniform": samplers.UniformSampler}[data.sampler]
    video = pipeline.ClipSource(
        vrs_tfds.open_split(data.name, data.split, data.data_dir),
        sampler(data.num_frames),
        _global_batch(data.batch_size, "data.batch_size"),
        data.mask_dir,
    )
    image = None
    if data.get("images") is not None:
        images = data.images
        image = pipeline.ClipSource(
            vrs_tfds.open_split(images.name, images.split, images.data_dir),
            samplers.UniformSampler(1),
            _global_batch(images.batch_size, "data.images.batch_size"),
            images.mask_dir,
        )
    return video, image


def steps_per_epoch(video: pipeline.ClipSource, image: pipeline.ClipSource | None) -> int:
    """Batches in one pass over every source's (video, category) samples, as sam2's mixed loader counts them."""
    sources = [video] if image is None else [video, image]
    total = 0
    for source in sources:
        total += len(source.pairs) // source.batch_size
    return max(total, 1)


def make_iterator(data: config_dict.ConfigDict, image_size: int, seed: int) -> tuple[grain.DatasetIterator, int]:
    """The endless training iterator (checkpointable) and the number of steps per epoch."""
    video, image = clip_sources(data)
    iterator = pipeline.make_train_iterator(
        video, image, image_size=image_size, augment=data.augment, seed=seed, num_workers=data.num_workers
    )
    return iterator, steps_per_epoch(video, image)


def to_global(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """This process's slice of a batch -> global arrays split over the mesh's data axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in STEP_KEYS}


def _global_batch(global_batch: int, field: str) -> int:
    """`global_batch`, checked to split evenly over the processes (each loads an equal part)."""
    count = jax.process_count()
    if global_batch % count or global_batch < count:
        raise ConfigValueError(f"{field}={global_batch} must be a positive multiple of the {count} processes")
    return global_batch

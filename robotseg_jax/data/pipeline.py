"""The grain training input pipeline of RobotSeg's training recipe: TFDS videos -> (video, category) samples ->
clips -> augmentation -> batches, optionally mixed with a 1-frame image source (RoboEngine-style images).

Per source:
    MapDataset.source(pairs).seed(seed).shuffle()      every (video, category) pair with a label is one sample
    -> random clip (ClipSampler; a pair whose first frame is empty is replaced by a random other pair, as sam2's
       VOSDataset does)
    -> augmentation (augment.py)
    -> this process's part of every global batch       global batch k is samples [k*B, (k+1)*B) of the epoch; process
                                                        i of n holds its positions [i*B/n, (i+1)*B/n)
    -> batch of B/n (drop_remainder) -> repeat
Randomness is drawn per sample from its position in the epoch, before the split into processes, so a global batch
is the same whatever the number of processes: a run on a pod trains on exactly the batches of a 1-process run.
With two sources, each epoch interleaves all batches of both in the order of sam2's MixedDataLoader: draw a source
with probability proportional to floor(len/batch_size), drop it once exhausted; the draw is re-seeded with the same
seed every epoch, as the original re-seeds to 42. A batch comes from one source, so its shapes depend on the source:

    images          float32 [B,T,S,S,3]   ImageNet-normalised
    masks           bool    [B,T,S,S]
    has_label       bool    [B,T]         False where the frame has no mask PNG (its mask is all False)
    category        int32   [B]           0 arm, 1 gripper, 2 robot (constants.ROBOT_CATEGORIES)
    frame_indices   int32   [B,T]         positions in the video's frame list
    video_index     int32   [B]           record index in the source split

Everything random derives from `seed` through grain's per-element generators, so batch k is a pure function of
(seed, k, shard) and an iterator restored with `set_state(get_state())` continues with the same batches.

Typical use (LET training on VRS with RoboEngine-style images):

    videos = ClipSource(vrs_tfds.open_split("vrs", "train", data_dir), BidirectionalSampler(7), 1, PSEUDO_MASK_DIR)
    images = ClipSource(vrs_tfds.open_split(name, "train", data_dir), UniformSampler(1), 10, GT_MASK_DIR)
    it = make_train_iterator(videos, images, image_size=1024, seed=2026, num_workers=8)
    batch = next(it); state = it.get_state(); ...; it.set_state(state)
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from robotseg_jax.constants import GT_MASK_DIR, ROBOT_CATEGORIES
from robotseg_jax.data import augment as augment_lib
from robotseg_jax.data import samplers, vrs_tfds

# sam2's VOSDataset: how many random replacement samples to try before giving up.
MAX_SAMPLE_RETRIES = samplers.MAX_RETRIES


@dataclasses.dataclass(frozen=True)
class ClipSource:
    """One split of video examples (vrs_tfds features, frames and masks encoded, e.g. `vrs_tfds.open_split`),
    how clips are drawn from it, its global batch size (over all processes) and the masks it trains on
    (`constants.PSEUDO_MASK_DIR` for LET)."""

    videos: Sequence[Mapping[str, Any]]
    sampler: samplers.ClipSampler
    batch_size: int
    mask_dir: str = GT_MASK_DIR

    @functools.cached_property
    def pairs(self) -> np.ndarray:
        """`video_category_pairs` of the source, read once (it reads every record)."""
        return video_category_pairs(self.videos, self.mask_dir)


def make_train_iterator(
    video: ClipSource,
    image: ClipSource | None = None,
    *,
    image_size: int = 1024,
    augment: bool = True,
    seed: int = 0,
    mixing_seed: int = 42,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int = 0,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.DatasetIterator:
    """An endless iterator of training batches with `get_state()` / `set_state()` for checkpointing.

    Args:
      video: the main source; `image` an optional 1-frame source mixed in per batch (RobotSeg mixes VRS clips,
        batch 1 per GPU, with RoboEngine images, batch 10 per GPU).
      image_size: side S of the square model input.
      augment: SAM 2.1's MOSE fine-tuning transforms (augment.py); False only resizes and normalises.
      seed: drives shuffling, clip sampling and augmentation; the image source uses seed + 1.
      mixing_seed: seed of the per-epoch source schedule (the original uses 42).
      shard_index, shard_count: this process's shard; default jax.process_index() / jax.process_count().
      num_workers: grain `mp_prefetch` worker processes (0: none, batches are made in this process).
      num_threads, prefetch_buffer_size: grain ReadOptions for the threads that prepare elements.
    """
    dataset = make_train_dataset(
        video,
        image,
        image_size=image_size,
        augment=augment,
        seed=seed,
        mixing_seed=mixing_seed,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    batches = dataset.to_iter_dataset(read_options)
    if num_workers > 0:
        _use_default_flags_if_unparsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(batches)


def make_train_dataset(
    video: ClipSource,
    image: ClipSource | None = None,
    *,
    image_size: int = 1024,
    augment: bool = True,
    seed: int = 0,
    mixing_seed: int = 42,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
    """The endless MapDataset of batches behind `make_train_iterator` (same arguments)."""
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    sources = [video] if image is None else [video, image]
    per_source = [
        _source_batches(
            source,
            seed=seed + i,
            image_size=image_size,
            augment=augment,
            shard_index=shard_index,
            shard_count=shard_count,
        )
        for i, source in enumerate(sources)
    ]
    if len(per_source) == 1:
        return per_source[0][0].repeat()
    # sam2's mixing weights: the number of global batches of each source; the epoch ends when all are exhausted.
    weights = [num_pairs // s.batch_size for (_, num_pairs), s in zip(per_source, sources)]
    schedule = _MixingSchedule(weights, [len(batches) for batches, _ in per_source], mixing_seed)
    return grain.MapDataset.select_from_datasets([batches.repeat() for batches, _ in per_source], schedule)


def video_category_pairs(videos: Sequence[Mapping[str, Any]], mask_dir: str) -> np.ndarray:
    """int64 [N,2] (video index, category id) for every category with at least one labelled frame in `mask_dir`:
    sam2 makes one sample per existing object folder. Reads every record once."""
    pairs = []
    for video_index in range(len(videos)):
        tracks = videos[video_index][mask_dir]
        pairs += [(video_index, c) for c, name in enumerate(ROBOT_CATEGORIES) if np.any(tracks[name]["has_label"])]
    return np.array(pairs, np.int64).reshape(-1, 2)


def _source_batches(
    source: ClipSource, *, seed: int, image_size: int, augment: bool, shard_index: int, shard_count: int
) -> tuple[grain.MapDataset, int]:
    """One epoch of this process's part of `source`'s global batches, and the source's number of samples."""
    pairs = source.pairs
    if source.batch_size % shard_count:
        raise ValueError(f"the batch size {source.batch_size} must be a multiple of the {shard_count} processes")
    num_batches = len(pairs) // source.batch_size
    if num_batches == 0:
        raise ValueError(
            f"{len(pairs)} labelled (video, category) samples in {source.mask_dir} are fewer than the batch size "
            f"{source.batch_size}"
        )
    samples = grain.MapDataset.source(pairs).seed(seed).shuffle()
    clips = samples.random_map(_SampleClip(source.videos, pairs, source.sampler, source.mask_dir))
    clips = clips.random_map(_AugmentClip(augment_lib.AugmentConfig(image_size=image_size), augment))
    local = _ProcessPart(clips[: num_batches * source.batch_size], source.batch_size, shard_index, shard_count)
    return local.batch(source.batch_size // shard_count, drop_remainder=True), len(pairs)


class _ProcessPart(grain.MapDataset):
    """Process `index` of `count`'s elements of a dataset cut into global batches of `global_batch`: positions
    [index*b, (index+1)*b) of each, b = global_batch // count, in order. Indices past the end continue into the
    parent's next epoch, as grain's slices do (so `repeat` reshuffles every epoch)."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._global_batch, self._local_batch = global_batch, global_batch // count
        self._offset = index * self._local_batch
        self._length = len(parent) // global_batch * self._local_batch

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, self._length)
        batch, within = divmod(position, self._local_batch)
        return self._parent[epoch * len(self._parent) + batch * self._global_batch + self._offset + within]

    def __str__(self) -> str:
        return f"_ProcessPart(global_batch={self._global_batch}, offset={self._offset})"


def _use_default_flags_if_unparsed() -> None:
    """grain 0.2.18's mp_prefetch reads one of its absl flags, which raises in a program that has not parsed absl
    flags once JAX is imported (google/grain#1355, fixed in later grain): use the defaults in that case."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only here: the pipeline itself (and grain's worker processes) does not need JAX

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} outside [0, {shard_count})")
    return shard_index, shard_count


class _SampleClip(grain.transforms.RandomMap):
    """(video index, category id) -> the decoded frames and masks of one clip."""

    def __init__(self, videos, pairs: np.ndarray, sampler: samplers.ClipSampler, mask_dir: str):
        self._videos, self._pairs, self._sampler, self._mask_dir = videos, pairs, sampler, mask_dir

    def random_map(self, pair: np.ndarray, rng: np.random.Generator) -> dict:
        for _ in range(MAX_SAMPLE_RETRIES):
            video_index, category = int(pair[0]), int(pair[1])
            example = self._videos[video_index]
            track = _MaskTrack(example[self._mask_dir][ROBOT_CATEGORIES[category]])
            frame_indices = samplers.sample_clip(self._sampler, len(example["frames"]), track.visible, rng)
            if frame_indices is not None:
                return _load_clip(example, track, frame_indices, category, video_index)
            pair = self._pairs[rng.integers(len(self._pairs))]
        raise RuntimeError(
            f"no clip with the object visible in its first frame after {MAX_SAMPLE_RETRIES} random samples of "
            f"{self._mask_dir} (last: video {_text(example['name'])}, {ROBOT_CATEGORIES[category]})"
        )


class _MaskTrack:
    """A category's encoded masks, decoded on demand and at most once."""

    def __init__(self, track: Mapping[str, Any]):
        self._encoded, self._has_label = track["masks"], np.asarray(track["has_label"], bool)
        self._decoded: dict[int, np.ndarray] = {}

    def has_label(self, i: int) -> bool:
        return bool(self._has_label[i])

    def mask(self, i: int) -> np.ndarray:
        if i not in self._decoded:
            self._decoded[i] = vrs_tfds.decode_mask(self._encoded[i])
        return self._decoded[i]

    def visible(self, i: int) -> bool:
        return self.has_label(i) and bool(self.mask(i).any())


def _load_clip(example: Mapping, track: _MaskTrack, frame_indices: list[int], category: int, video_index: int) -> dict:
    # A position sampled twice maps to the same arrays, which augment_clip transforms once.
    frames = {i: vrs_tfds.decode_frame(example["frames"][i]) for i in set(frame_indices)}
    return {
        "frames": [frames[i] for i in frame_indices],
        "masks": [track.mask(i) for i in frame_indices],
        "has_label": np.array([track.has_label(i) for i in frame_indices]),
        "category": np.int32(category),
        "frame_indices": np.array(frame_indices, np.int32),
        "video_index": np.int32(video_index),
    }


class _AugmentClip(grain.transforms.RandomMap):
    def __init__(self, config: augment_lib.AugmentConfig, augment: bool):
        self._config, self._augment = config, augment

    def random_map(self, clip: dict, rng: np.random.Generator) -> dict:
        if self._augment:
            images, masks = augment_lib.augment_clip(clip["frames"], clip["masks"], rng, self._config)
        else:
            images, masks = augment_lib.resize_clip(clip["frames"], clip["masks"], self._config.image_size)
        rest = {k: v for k, v in clip.items() if k not in ("frames", "masks")}
        return {"images": images, "masks": masks, **rest}


class _MixingSchedule(grain.transforms.DatasetSelectionMap):
    """Batch k of the mixture -> (source, batch index in that source), for sam2's MixedDataLoader order: each
    step draws a source with probability proportional to its weight among those not yet exhausted this epoch."""

    def __init__(self, weights: Sequence[int], batches_per_epoch: Sequence[int], seed: int):
        rng = np.random.default_rng(seed)
        probs = np.array(weights, np.float64)
        remaining = list(batches_per_epoch)
        order: list[tuple[int, int]] = []
        while probs.any():
            source = int(rng.choice(len(probs), p=probs / probs.sum()))
            if remaining[source] == 0:
                probs[source] = 0.0
                continue
            order.append((source, batches_per_epoch[source] - remaining[source]))
            remaining[source] -= 1
        self._order, self._batches_per_epoch = order, list(batches_per_epoch)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> tuple[int, int]:
        epoch, position = divmod(index, len(self._order))
        source, batch = self._order[position]
        return source, epoch * self._batches_per_epoch[source] + batch


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

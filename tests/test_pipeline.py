"""Clip samplers (RobotSeg's bidirectional one and the uniform one), augmentation (SAM 2.1's MOSE fine-tune
transforms) and the grain training pipeline (the mixed image/video loader)."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.data import (
    augment,
    pipeline,
    samplers,
    tfds_builders,
    vrs_layout,
    vrs_tfds,
)
from robotseg_jax.data.samplers import BidirectionalSampler, UniformSampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZE = 64
TRAIN_FRAMES, TEST_FRAMES = 7, 4


# ---------------------------------------------------------------------------------------------------------------
# samplers


@pytest.mark.parametrize(
    "num_video_frames, num_frames, step, expected",
    [
        (10, 7, 3, [0, 3, 6, 9, 6, 3, 0]),
        (10, 7, 1, [0, 1, 2, 3, 2, 1, 0]),
        (5, 7, 3, [0, 3, 4, 3, 0]),  # n = 5, half = 3, 6 is clamped to T-1 = 4
        (10, 6, 2, [0, 2, 4, 4, 2, 0]),  # even n: the turning frame twice
        (4, 7, 2, [0, 2, 2, 0]),  # n = min(7, 4) = 4
        (3, 7, 2, [0, 2, 0]),
        (2, 7, 1, [0, 0]),
        (1, 7, 1, [0]),
    ],
)
def test_bidirectional_index_patterns(num_video_frames, num_frames, step, expected):
    rng = np.random.default_rng(0)
    assert samplers.bidirectional_clip(num_video_frames, rng, num_frames, step=step) == expected


@pytest.mark.parametrize("num_video_frames, max_step", [(10, 3), (100, 33), (7, 2), (6, 2), (4, 3), (2, 1), (1, 1)])
def test_bidirectional_max_step(num_video_frames, max_step):
    assert samplers.bidirectional_max_step(num_video_frames, 7) == max_step


@pytest.mark.parametrize("num_video_frames", [10, 100, 6, 4])
def test_bidirectional_step_is_uniform_on_1_to_max_step_inclusive(num_video_frames):
    rng = np.random.default_rng(0)
    clips = [BidirectionalSampler(7).draw(num_video_frames, rng) for _ in range(1000)]
    max_step = samplers.bidirectional_max_step(num_video_frames, 7)
    assert {clip[1] for clip in clips} == set(range(1, max_step + 1))
    assert all(clip[0] == clip[-1] == 0 for clip in clips)


def test_uniform_sampler():
    rng = np.random.default_rng(0)
    clips = [UniformSampler(8).draw(12, rng) for _ in range(300)]
    assert {c[0] for c in clips} == set(range(5))
    assert all(c == list(range(c[0], c[0] + 8)) for c in clips)
    assert UniformSampler(8).draw(7, rng) is None
    assert {UniformSampler(1).draw(3, rng)[0] for _ in range(100)} == {0, 1, 2}


def test_sample_clip_retries_until_the_first_frame_is_visible():
    rng = np.random.default_rng(0)
    assert samplers.sample_clip(UniformSampler(1), 10, lambda i: i == 7, rng) == [7]
    # The bidirectional clip always starts at frame 0: an object absent there never gives a clip.
    assert samplers.sample_clip(BidirectionalSampler(7), 10, lambda i: i != 0, rng) is None
    assert samplers.sample_clip(UniformSampler(8), 5, lambda i: True, rng) is None


# ---------------------------------------------------------------------------------------------------------------
# augmentation

NO_COLOUR = augment.AugmentConfig(
    image_size=96,
    clip_jitter=augment.ColorJitter(0, 0, 0),
    grayscale_prob=0.0,
    frame_jitter=augment.ColorJitter(0, 0, 0),
)


def blob_clip(num_frames=3, height=48, width=80, seed=0):
    """Frames with a red ellipse painted exactly where the mask is, on a dark green background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    frames, masks = [], []
    for _ in range(num_frames):
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
        mask = ((yy - cy) / (0.25 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 < 1
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 1] = 60
        frame[mask] = (255, 0, 0)
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def denormalize(images):
    return images * augment.IMAGENET_STD + augment.IMAGENET_MEAN


def dilate(mask, r=2):
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_augmented_masks_stay_on_the_painted_pixels(seed):
    frames, masks = blob_clip(seed=seed)
    images, out_masks = augment.augment_clip(frames, masks, np.random.default_rng(seed), NO_COLOUR)
    assert images.shape == (3, 96, 96, 3) and images.dtype == np.float32
    assert out_masks.shape == (3, 96, 96) and out_masks.dtype == bool
    red = denormalize(images)[..., 0] > 0.75  # the affine fill has red 123/255, the background 0
    for t in range(3):
        assert out_masks[t].any()
        border = dilate(out_masks[t]) & dilate(~out_masks[t])  # pixels within 2 px of the mask's edge
        mismatch = (red[t] != out_masks[t]) & ~border
        assert not mismatch.any(), f"frame {t}: {mismatch.sum()} misaligned pixels"


def test_augmentation_is_reproducible_and_seed_dependent():
    frames, masks = blob_clip()
    a = augment.augment_clip(frames, masks, np.random.default_rng(1))
    b = augment.augment_clip(frames, masks, np.random.default_rng(1))
    c = augment.augment_clip(frames, masks, np.random.default_rng(2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_affine_is_skipped_when_it_would_empty_the_first_mask():
    frames, masks = blob_clip(num_frames=2, height=SIZE, width=SIZE)
    config = dataclasses.replace(NO_COLOUR, image_size=SIZE)
    # An empty first mask stays empty under any affine, so the affine is always skipped: the second frame's
    # mask is only flipped (or not).
    empty_first = [np.zeros((SIZE, SIZE), bool), masks[1]]
    flips = set()
    for seed in range(6):
        _, out_masks = augment.augment_clip(frames, empty_first, np.random.default_rng(seed), config)
        flip = np.array_equal(out_masks[1], masks[1][:, ::-1])
        flips.add(flip)
        np.testing.assert_array_equal(out_masks[1], masks[1][:, ::-1] if flip else masks[1])
    assert flips == {False, True}
    # A lone corner pixel leaves the image under most rotations, yet the first mask is never emptied.
    corner = np.zeros((SIZE, SIZE), bool)
    corner[0, 0] = True
    for seed in range(20):
        _, out_masks = augment.augment_clip(frames, [corner, masks[1]], np.random.default_rng(seed), config)
        assert out_masks[0].any()


def test_repeated_frames_differ_only_by_the_per_frame_jitter():
    frames, masks = blob_clip(num_frames=2)
    clip_frames, clip_masks = [frames[0], frames[1], frames[0]], [masks[0], masks[1], masks[0]]
    plain = augment.augment_clip(clip_frames, clip_masks, np.random.default_rng(0), NO_COLOUR)
    np.testing.assert_array_equal(plain[0][0], plain[0][2])
    jittered = augment.augment_clip(clip_frames, clip_masks, np.random.default_rng(0))
    np.testing.assert_array_equal(jittered[1][0], jittered[1][2])
    assert not np.array_equal(jittered[0][0], jittered[0][2])


def test_resize_clip_normalises_with_imagenet_statistics():
    frame = np.full((SIZE, SIZE, 3), 255, np.uint8)
    images, masks = augment.resize_clip([frame], [np.ones((SIZE, SIZE), bool)], 32)
    np.testing.assert_allclose(images[0, 0, 0], (1 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD, rtol=1e-6)
    assert masks.shape == (1, 32, 32) and masks.all()


def test_augment_rejects_mask_and_frame_size_mismatch():
    frames, masks = blob_clip(num_frames=2)
    with pytest.raises(ValueError, match="mask 1 has shape"):
        augment.augment_clip(frames, [masks[0], masks[1][:-1]], np.random.default_rng(0))
    with pytest.raises(ValueError, match="one mask per frame"):
        augment.augment_clip(frames, masks[:1], np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------------
# pipeline


def rectangles(rng, num_frames, empty_first=False):
    masks = np.zeros((num_frames, SIZE, SIZE), bool)
    for t in range(num_frames):
        y, x = rng.integers(0, SIZE // 2, 2)
        masks[t, y : y + SIZE // 3, x : x + SIZE // 3] = True
    if empty_first:
        masks[0] = False
    return masks


@pytest.fixture(scope="module")
def tiny_vrs(tmp_path_factory):
    """train: 4 videos with dense pseudo masks (video 0's gripper is absent on frame 0, video 1 has no gripper);
    test: 3 videos with dense GT."""
    root = str(tmp_path_factory.mktemp("layout"))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)
    for v in range(4):
        frames = rng.integers(0, 256, (TRAIN_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
        categories = ("arm", "robot") if v == 1 else ROBOT_CATEGORIES
        masks = {c: rectangles(rng, TRAIN_FRAMES, empty_first=(v == 0 and c == "gripper")) for c in categories}
        vrs_layout.write_video(root, "train", f"train_{v}", frames, masks, "mask_gt", label_frames=[0])
        vrs_layout.write_video(root, "train", f"train_{v}", frames, masks, "mask_gt_dinov3")
    for v in range(3):
        frames = rng.integers(0, 256, (TEST_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
        masks = {c: rectangles(rng, TEST_FRAMES) for c in ROBOT_CATEGORIES}
        vrs_layout.write_video(root, "test", f"test_{v}", frames, masks, "mask_gt")
    tfds_builders.build("vrs", manual_dir=root, data_dir=data_dir)
    return vrs_tfds.open_split("vrs", "train", data_dir), vrs_tfds.open_split("vrs", "test", data_dir), data_dir


def let_source(tiny_vrs, batch_size=2):
    return pipeline.ClipSource(tiny_vrs[0], BidirectionalSampler(7), batch_size, "mask_gt_dinov3")


def image_source(tiny_vrs, batch_size=3):
    return pipeline.ClipSource(tiny_vrs[1], UniformSampler(1), batch_size, "mask_gt")


def names(videos):
    return [videos[i]["name"].decode() for i in range(len(videos))]


def test_samples_are_the_labelled_video_category_pairs(tiny_vrs):
    train = tiny_vrs[0]
    pairs = pipeline.video_category_pairs(train, "mask_gt_dinov3")
    no_gripper = names(train).index("train_1")
    assert len(pairs) == 4 * 3 - 1
    assert (no_gripper, 1) not in set(map(tuple, pairs.tolist()))


def test_let_batches(tiny_vrs):
    train = tiny_vrs[0]
    it = pipeline.make_train_iterator(let_source(tiny_vrs), image_size=32, seed=3, shard_index=0, shard_count=1)
    hidden_gripper = names(train).index("train_0")
    for _ in range(8):
        batch = next(it)
        assert batch["images"].shape == (2, 7, 32, 32, 3) and batch["images"].dtype == np.float32
        assert batch["masks"].shape == (2, 7, 32, 32) and batch["masks"].dtype == bool
        assert batch["has_label"].shape == (2, 7) and batch["has_label"].all()
        assert batch["category"].dtype == np.int32 and set(batch["category"]) <= {0, 1, 2}
        for indices in batch["frame_indices"].tolist():  # T = 7: max_step 2
            s = indices[1]
            assert s in (1, 2) and indices == [0, s, 2 * s, 3 * s, 2 * s, s, 0]
        assert batch["masks"][:, 0].any(axis=(1, 2)).all()  # the first frame always shows the object
        # The gripper of train_0 is absent from frame 0, so that sample is always replaced by another one.
        assert not any(v == hidden_gripper and c == 1 for v, c in zip(batch["video_index"], batch["category"]))


def test_reading_and_the_pipeline_never_import_tensorflow(tiny_vrs):
    """TensorFlow is installed (clu's TensorBoard writer needs it), but reading TFDS and making batches, in the
    trainer and in grain's worker processes, must not pay for importing it."""
    script = textwrap.dedent(
        f"""
        import sys
        import tensorflow_datasets as tfds
        from robotseg_jax.data import pipeline, vrs_tfds
        from robotseg_jax.data.samplers import BidirectionalSampler
        example = tfds.data_source("vrs", split="test", data_dir={tiny_vrs[2]!r})[0]  # TFDS's own decoding
        assert example["frames"][0].ndim == 3
        source = pipeline.ClipSource(vrs_tfds.open_split("vrs", "train", {tiny_vrs[2]!r}), BidirectionalSampler(7),
                                     2, "mask_gt_dinov3")
        next(pipeline.make_train_iterator(source, image_size=32, seed=0, shard_index=0, shard_count=1))
        print("TF_IMPORTED", "tensorflow" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TF_IMPORTED False" in result.stdout


def test_unaugmented_batches_match_the_stored_frames_and_masks(tiny_vrs):
    test = tiny_vrs[1]
    source = pipeline.ClipSource(test, UniformSampler(2), 2, "mask_gt")
    it = pipeline.make_train_iterator(source, image_size=SIZE, augment=False, seed=0, shard_index=0, shard_count=1)
    for _ in range(3):
        batch = next(it)
        for b in range(2):
            example = test[int(batch["video_index"][b])]
            category = ROBOT_CATEGORIES[batch["category"][b]]
            for t, i in enumerate(batch["frame_indices"][b]):
                frame = vrs_tfds.decode_frame(example["frames"][i])
                mask = vrs_tfds.decode_mask(example["mask_gt"][category]["masks"][i])
                np.testing.assert_allclose(batch["images"][b, t], augment.normalize(frame), atol=1e-6)
                np.testing.assert_array_equal(batch["masks"][b, t], mask)


def test_restored_iterator_continues_with_the_same_batches(tiny_vrs):
    def make():
        return pipeline.make_train_iterator(
            let_source(tiny_vrs), image_source(tiny_vrs), image_size=32, seed=7, shard_index=0, shard_count=1
        )

    it = make()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    restored = make()
    restored.set_state(state)
    for want, got in zip(expected, [next(restored) for _ in range(6)]):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def test_mixing_interleaves_whole_epochs_in_the_same_order(tiny_vrs):
    dataset = pipeline.make_train_dataset(
        let_source(tiny_vrs), image_source(tiny_vrs), image_size=16, augment=False, seed=0, shard_index=0, shard_count=1
    )
    video_batches, image_batches = 11 // 2, 9 // 3
    epoch = video_batches + image_batches
    kinds = [dataset[k]["frame_indices"].shape[1] for k in range(2 * epoch)]
    assert kinds[:epoch].count(7) == video_batches and kinds[:epoch].count(1) == image_batches
    assert kinds[:epoch] == kinds[epoch:]  # the schedule is re-seeded identically every epoch (sam2 re-seeds to 42)


def test_shards_split_each_epoch_disjointly_and_reshuffle_per_epoch(tiny_vrs):
    source = pipeline.ClipSource(tiny_vrs[1], UniformSampler(1), 2, "mask_gt")  # every frame labelled: no retries

    def epochs(shard_index):
        dataset = pipeline.make_train_dataset(
            source, image_size=16, augment=False, seed=0, shard_index=shard_index, shard_count=2
        )
        samples = [(int(dataset[k]["video_index"][0]), int(dataset[k]["category"][0])) for k in range(8)]
        return samples[:4], samples[4:]

    (first0, second0), (first1, _) = epochs(0), epochs(1)
    assert len(set(first0)) == 4 and len(set(first1)) == 4 and not set(first0) & set(first1)
    assert first0 != second0


def test_a_global_batch_is_the_same_for_any_number_of_processes(tiny_vrs):
    """Each of 2 processes holds its half of every global batch: together they are the 1-process batches, clip
    sampling and augmentation included, over two epochs (the reshuffle) with the image source mixed in."""

    def batches(shard_index, shard_count):
        dataset = pipeline.make_train_dataset(
            let_source(tiny_vrs, batch_size=4), image_source(tiny_vrs, batch_size=4), image_size=16, seed=3,
            shard_index=shard_index, shard_count=shard_count,
        )
        return [dataset[k] for k in range(8)]

    single, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    assert {b["images"].shape[1] for b in single} == {1, 7}  # both sources appear
    for whole, half0, half1 in zip(single, first, second):
        assert half0["images"].shape[0] == 2
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([half0[key], half1[key]]), whole[key], err_msg=key)


def test_too_few_samples_for_a_batch_is_an_error(tiny_vrs):
    with pytest.raises(ValueError, match="fewer than the batch size 12"):
        pipeline.make_train_dataset(let_source(tiny_vrs, batch_size=12), shard_index=0, shard_count=2)


def test_a_batch_the_processes_do_not_split_evenly_is_an_error(tiny_vrs):
    with pytest.raises(ValueError, match="batch size 3 must be a multiple of the 2 processes"):
        pipeline.make_train_dataset(let_source(tiny_vrs, batch_size=3), shard_index=0, shard_count=2)


def test_videos_too_short_for_the_sampler_are_an_error(tiny_vrs):
    source = pipeline.ClipSource(tiny_vrs[1], UniformSampler(8), 1, "mask_gt")  # the test videos have 4 frames
    dataset = pipeline.make_train_dataset(source, image_size=16, shard_index=0, shard_count=1)
    with pytest.raises(RuntimeError, match="no clip with the object visible in its first frame after 100"):
        dataset[0]


def test_multiprocess_prefetch_gives_the_same_batches(tiny_vrs):
    kwargs = dict(image_size=32, seed=5, shard_index=0, shard_count=1)
    local = pipeline.make_train_iterator(let_source(tiny_vrs), **kwargs)
    expected = [next(local) for _ in range(4)]
    workers = pipeline.make_train_iterator(let_source(tiny_vrs), num_workers=2, **kwargs)
    try:
        got = [next(workers) for _ in range(3)]
        state = workers.get_state()
        got.append(next(workers))
        workers.set_state(state)  # rewinding restarts the workers at the saved position
        got.append(next(workers))
    finally:
        workers.close()
    for want, have in zip(expected + expected[3:], got):
        for key in want:
            np.testing.assert_array_equal(want[key], have[key], err_msg=key)

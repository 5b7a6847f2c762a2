"""The TFDS builders `vrs` and `vrs_sim`: build tiny datasets from a VRS layout and read them back without
TensorFlow."""

import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.data import tfds_builders, vrs_layout, vrs_tfds
from robotseg_jax.data.vrs_layout import VRSLayoutError

NUM_FRAMES, HEIGHT, WIDTH = 4, 48, 64
TRAIN_VIDEOS = ("train_video_0000___01_franka___a_clip_00001", "train_video_0001___02_ur5e___b_clip_00002")
TEST_VIDEOS = ("test_video_0000", "test_video_0001")


def random_video(seed: int, categories=ROBOT_CATEGORIES):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (NUM_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    masks = {c: rng.random((NUM_FRAMES, HEIGHT, WIDTH)) > 0.6 for c in categories}
    return frames, masks


def write_real_vrs(root: str) -> None:
    """Real VRS shape: train has first-frame GT plus dense pseudo masks (the second video has no gripper folder),
    test has dense GT."""
    for i, video in enumerate(TRAIN_VIDEOS):
        frames, masks = random_video(i, ROBOT_CATEGORIES if i == 0 else ("arm", "robot"))
        vrs_layout.write_video(root, "train", video, frames, masks, "mask_gt", label_frames=[0])
        vrs_layout.write_video(root, "train", video, frames, masks, "mask_gt_dinov3")
    for i, video in enumerate(TEST_VIDEOS):
        vrs_layout.write_video(root, "test", video, *random_video(10 + i), "mask_gt")


@pytest.fixture(scope="module")
def real_vrs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vrs_layout"))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    write_real_vrs(root)
    builder = tfds_builders.build("vrs", manual_dir=root, data_dir=data_dir)
    return root, data_dir, builder


def by_name(source) -> dict:
    return {source[i]["name"].decode(): source[i] for i in range(len(source))}


def test_vrs_builds_every_split_and_reads_back_the_layout(real_vrs):
    root, data_dir, builder = real_vrs
    assert set(builder.info.splits) == {"train", "test"}
    assert builder.info.splits["train"].num_examples == 2 and builder.info.splits["test"].num_examples == 2
    assert os.path.exists(os.path.join(data_dir, "vrs", "1.0.0", "vrs-train.array_record-00000-of-00001"))

    for split, videos in (("train", TRAIN_VIDEOS), ("test", TEST_VIDEOS)):
        examples = by_name(vrs_tfds.open_split("vrs", split, data_dir))
        assert sorted(examples) == sorted(videos)
        for video, example in examples.items():
            assert list(example["frame_ids"]) == list(range(NUM_FRAMES))
            for t, data in enumerate(example["frames"]):
                with open(vrs_layout.frame_path(root, split, video, t), "rb") as f:
                    assert data == f.read()  # the JPEG is stored as it is on disk
            for mask_dir in vrs_tfds.MASK_DIRS:
                for category in ROBOT_CATEGORIES:
                    track = example[mask_dir][category]
                    for t in range(NUM_FRAMES):
                        expected = vrs_layout.read_mask(root, split, video, category, t, mask_dir)
                        assert bool(track["has_label"][t]) == (expected is not None)
                        decoded = vrs_tfds.decode_mask(track["masks"][t])
                        np.testing.assert_array_equal(decoded, np.zeros((HEIGHT, WIDTH), bool) if expected is None else expected)


def test_vrs_label_pattern_and_embodiment(real_vrs):
    _, data_dir, _ = real_vrs
    train = by_name(vrs_tfds.open_split("vrs", "train", data_dir))
    first = train[TRAIN_VIDEOS[0]]
    assert list(first["mask_gt"]["arm"]["has_label"]) == [True, False, False, False]
    assert all(first["mask_gt_dinov3"]["arm"]["has_label"])
    assert not any(train[TRAIN_VIDEOS[1]]["mask_gt_dinov3"]["gripper"]["has_label"])  # no gripper folder
    assert first["embodiment"] == b"franka" and train[TRAIN_VIDEOS[1]]["embodiment"] == b"ur5e"
    test = by_name(vrs_tfds.open_split("vrs", "test", data_dir))
    assert all(test[TEST_VIDEOS[0]]["mask_gt"]["robot"]["has_label"])
    assert not any(test[TEST_VIDEOS[0]]["mask_gt_dinov3"]["robot"]["has_label"])
    assert test[TEST_VIDEOS[0]]["embodiment"] == b"unknown"


def test_default_tfds_decoding_works(real_vrs):
    """tfds.data_source's own decoding (test_pipeline checks that it never imports TensorFlow)."""
    root, data_dir, _ = real_vrs
    source = tfds.data_source("vrs", split="test", data_dir=data_dir)
    example = source[0]
    video = example["name"].decode()
    frame = example["frames"][1]
    assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, vrs_layout.read_frame(root, "test", video, 1))
    mask = example["mask_gt"]["arm"]["masks"][2]
    np.testing.assert_array_equal(mask[..., 0] > 0, vrs_layout.read_mask(root, "test", video, "arm", 2))


def test_vrs_sim_stores_the_metadata_embodiment(tmp_path):
    root, data_dir = str(tmp_path / "sim"), str(tmp_path / "tfds")
    for i, embodiment in enumerate(("panda", "kuka_iiwa")):
        frames, masks = random_video(i)
        meta = {"embodiment": embodiment}
        vrs_layout.write_video(root, "train", f"sim_{i:05d}", frames, masks, "mask_gt", label_frames=[0])
        vrs_layout.write_video(root, "train", f"sim_{i:05d}", frames, masks, "mask_gt_dinov3", metadata=meta)
        vrs_layout.write_video(root, "val", f"sim_{i + 2:05d}", frames, masks, "mask_gt", metadata=meta)
    builder = tfds_builders.build("vrs_sim", manual_dir=root, data_dir=data_dir)
    assert set(builder.info.splits) == {"train", "val"}
    train = by_name(vrs_tfds.open_split("vrs_sim", "train", data_dir))
    assert {k: v["embodiment"] for k, v in train.items()} == {"sim_00000": b"panda", "sim_00001": b"kuka_iiwa"}


def test_vrs_sim_rejects_an_incomplete_video(tmp_path):
    root = str(tmp_path / "sim")
    vrs_layout.write_video(root, "val", "sim_00000", *random_video(0), "mask_gt")  # no metadata written yet
    with pytest.raises(VRSLayoutError, match=re.escape(vrs_layout.metadata_path(root, "val", "sim_00000"))):
        tfds_builders.build("vrs_sim", manual_dir=root, data_dir=str(tmp_path / "tfds"))


def test_missing_pseudo_mask_is_named(tmp_path):
    root = str(tmp_path)
    write_real_vrs(root)
    missing = vrs_layout.mask_path(root, "train", TRAIN_VIDEOS[0], "gripper", 2, "mask_gt_dinov3")
    os.remove(missing)
    with pytest.raises(VRSLayoutError, match=re.escape(missing)):
        tfds_builders.build("vrs", manual_dir=root, data_dir=str(tmp_path / "tfds"))


def test_mask_of_the_wrong_size_is_named(tmp_path):
    root = str(tmp_path)
    write_real_vrs(root)
    bad = vrs_layout.mask_path(root, "test", TEST_VIDEOS[1], "robot", 1)
    Image.fromarray(np.zeros((HEIGHT // 2, WIDTH), np.uint8)).save(bad)
    with pytest.raises(VRSLayoutError, match=re.escape(bad)):
        vrs_tfds.encode_video(root, "test", TEST_VIDEOS[1])


def test_frame_of_another_size_is_named(tmp_path):
    root = str(tmp_path)
    write_real_vrs(root)
    bad = vrs_layout.frame_path(root, "test", TEST_VIDEOS[0], 3)
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 8, 3), np.uint8)).save(bad)
    with pytest.raises(VRSLayoutError, match=re.escape(bad)):
        vrs_tfds.encode_video(root, "test", TEST_VIDEOS[0])


def test_grey_jpeg_is_stored_as_rgb(tmp_path):
    root = str(tmp_path)
    vrs_layout.write_video(root, "test", "v", *random_video(0), "mask_gt")
    Image.fromarray(np.full((HEIGHT, WIDTH), 77, np.uint8)).save(vrs_layout.frame_path(root, "test", "v", 0))
    frame = vrs_tfds.decode_frame(vrs_tfds.encode_video(root, "test", "v")["frames"][0])
    assert frame.shape == (HEIGHT, WIDTH, 3) and abs(int(frame.mean()) - 77) <= 1


def test_empty_manual_dir_and_unknown_builder_are_errors(tmp_path):
    with pytest.raises(VRSLayoutError, match="no split under"):
        vrs_tfds.available_splits(str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        tfds_builders.builder_class("vrs_typo")


def test_embodiment_rules():
    assert vrs_tfds.embodiment("train_video_0000___01_franka___training_x_clip_00130_00697", {}) == "franka"
    assert vrs_tfds.embodiment("x___07_kinova_gen3___y", {}) == "kinova_gen3"
    assert vrs_tfds.embodiment("franka_video", {}) == "unknown"
    assert vrs_tfds.embodiment("x___01_franka___y", {"embodiment": "panda"}) == "panda"


def test_builders_do_not_claim_the_datasets_package():
    # Loading twice reuses the module: TFDS rejects a second registration of the same name.
    assert tfds_builders.builder_class("vrs") is tfds_builders.builder_class("vrs")
    assert tfds_builders.builder_class("vrs").__module__ == "vrs_dataset_builder"
    assert tfds_builders.builder_class("vrs").name == "vrs"
    # No __init__.py: the folder must never shadow Hugging Face's `datasets` package.
    assert not os.path.exists(os.path.join(tfds_builders.DATASETS_DIR, "__init__.py"))

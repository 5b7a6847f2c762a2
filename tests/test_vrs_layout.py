"""VRS folder layout: round trip, missing labels, and errors that name the offending file."""

import os

import numpy as np
import pytest
from PIL import Image

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.data import vrs_layout


def _toy_video(num_frames=4, height=24, width=32, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth frames keep JPEG error small; a pure noise image would not be a fair tolerance test.
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    frames = np.stack([np.broadcast_to(ramp + 10 * t, (height, width, 3)) for t in range(num_frames)]).astype(np.uint8)
    arm = rng.random((num_frames, height, width)) < 0.3
    gripper = ~arm & (rng.random((num_frames, height, width)) < 0.2)
    return frames, {"arm": arm, "gripper": gripper, "robot": arm | gripper}


def test_round_trip(tmp_path):
    frames, masks = _toy_video()
    root = str(tmp_path)
    vrs_layout.write_video(root, "val", "vid_b", frames, masks, metadata={"embodiment": "panda", "seed": 3})
    vrs_layout.write_video(root, "val", "vid_a", frames[:2], {k: v[:2] for k, v in masks.items()})

    assert vrs_layout.list_videos(root, "val") == ["vid_a", "vid_b"]
    assert vrs_layout.list_frames(root, "val", "vid_b") == [0, 1, 2, 3]
    assert os.path.exists(os.path.join(root, "val", "mask_gt", "vid_b", "001", "00002.png"))

    record = vrs_layout.read_video(root, "val", "vid_b")
    assert record.frames.dtype == np.uint8 and record.frames.shape == frames.shape
    assert np.abs(record.frames.astype(int) - frames).max() <= 3
    assert record.frame_ids == [0, 1, 2, 3]
    for category in ROBOT_CATEGORIES:
        np.testing.assert_array_equal(record.masks["mask_gt"][category], masks[category])
        assert record.has_label["mask_gt"][category].all()
    assert record.metadata == {"embodiment": "panda", "seed": 3}
    assert vrs_layout.read_metadata(root, "val", "vid_a") == {}

    png = Image.open(vrs_layout.mask_path(root, "val", "vid_b", "arm", 0))
    assert png.mode == "L" and set(np.unique(np.asarray(png))) <= {0, 255}


def test_missing_png_is_none_and_unlabelled(tmp_path):
    frames, masks = _toy_video()
    root = str(tmp_path)
    vrs_layout.write_video(root, "train", "v", frames, masks, label_frames=[0])
    vrs_layout.write_video(root, "train", "v", frames, masks, mask_dir="mask_gt_dinov3")

    assert vrs_layout.read_mask(root, "train", "v", "robot", 1) is None
    np.testing.assert_array_equal(vrs_layout.read_mask(root, "train", "v", "robot", 0), masks["robot"][0])

    record = vrs_layout.read_video(root, "train", "v", mask_dirs=("mask_gt", "mask_gt_dinov3"))
    np.testing.assert_array_equal(record.has_label["mask_gt"]["arm"], [True, False, False, False])
    assert not record.masks["mask_gt"]["arm"][1:].any()  # unlabelled frames are empty, never all-ones
    assert record.has_label["mask_gt_dinov3"]["gripper"].all()
    np.testing.assert_array_equal(record.masks["mask_gt_dinov3"]["gripper"], masks["gripper"])


def test_missing_category_folder_is_unlabelled(tmp_path):
    frames, masks = _toy_video()
    root = str(tmp_path)
    vrs_layout.write_video(root, "test", "v", frames, {"robot": masks["robot"]})
    record = vrs_layout.read_video(root, "test", "v")
    assert record.has_label["mask_gt"]["robot"].all()
    assert not record.has_label["mask_gt"]["arm"].any()


def test_corrupt_jpeg_error_names_file(tmp_path):
    frames, masks = _toy_video()
    root = str(tmp_path)
    vrs_layout.write_video(root, "val", "v", frames, masks)
    path = vrs_layout.frame_path(root, "val", "v", 2)
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(vrs_layout.VRSLayoutError, match="00002.jpg"):
        vrs_layout.read_frame(root, "val", "v", 2)
    with pytest.raises(vrs_layout.VRSLayoutError, match="00002.jpg"):
        vrs_layout.read_video(root, "val", "v")


def test_corrupt_png_error_names_file(tmp_path):
    frames, masks = _toy_video()
    root = str(tmp_path)
    vrs_layout.write_video(root, "val", "v", frames, masks)
    path = vrs_layout.mask_path(root, "val", "v", "gripper", 1)
    with open(path, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(vrs_layout.VRSLayoutError, match=r"001[/\\]00001.png"):
        vrs_layout.read_mask(root, "val", "v", "gripper", 1)


def test_mask_size_mismatch(tmp_path):
    frames, masks = _toy_video()
    root = str(tmp_path)
    vrs_layout.write_video(root, "val", "v", frames, masks)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(vrs_layout.mask_path(root, "val", "v", "arm", 3))
    with pytest.raises(vrs_layout.VRSLayoutError, match="00003.png.*size"):
        vrs_layout.read_video(root, "val", "v")


def test_empty_video(tmp_path):
    root = str(tmp_path)
    os.makedirs(vrs_layout.video_image_dir(root, "val", "empty"))
    with pytest.raises(vrs_layout.VRSLayoutError, match="no frames"):
        vrs_layout.read_video(root, "val", "empty")
    with pytest.raises(vrs_layout.VRSLayoutError, match="no frames"):
        vrs_layout.write_video(root, "val", "empty", np.zeros((0, 8, 8, 3), np.uint8), {})


def test_write_rejects_bad_masks(tmp_path):
    frames, masks = _toy_video()
    with pytest.raises(vrs_layout.VRSLayoutError, match="shape"):
        vrs_layout.write_video(str(tmp_path), "val", "v", frames, {"arm": masks["arm"][:, :5]})
    with pytest.raises(vrs_layout.VRSLayoutError, match="unknown category"):
        vrs_layout.write_video(str(tmp_path), "val", "v", frames, {"hand": masks["arm"]})

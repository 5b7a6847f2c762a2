"""VRS-Sim generator: mask consistency, determinism, resuming, splits and the train layout (tiny renders)."""

import hashlib
import os
import shutil

import numpy as np
import pytest

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.data import vrs_layout
from robotseg_jax.data.sim import dataset as sim

NUM_VIDEOS = 3  # one per embodiment: panda, kuka_iiwa, xarm6
CONFIG = sim.GenerationConfig(num_frames=3, size=96, seed=0, holdout_embodiment="xarm6")


def _file_hashes(root):
    hashes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vrs_sim"))
    rendered = sim.generate(root, NUM_VIDEOS, CONFIG, workers=1, log=lambda _: None)
    assert len(rendered) == NUM_VIDEOS
    return root


def _videos(root):
    return [
        (split, video)
        for split in vrs_layout.SPLITS
        if os.path.isdir(os.path.join(root, split))
        for video in vrs_layout.list_videos(root, split)
    ]


def test_masks_are_consistent_and_every_embodiment_renders(dataset):
    embodiments = set()
    for split, video in _videos(dataset):
        mask_dir = "mask_gt_dinov3" if split == "train" else "mask_gt"
        record = vrs_layout.read_video(dataset, split, video, mask_dirs=(mask_dir,))
        masks = record.masks[mask_dir]
        assert record.frames.shape == (CONFIG.num_frames, CONFIG.size, CONFIG.size, 3)
        assert not (masks["arm"] & masks["gripper"]).any()
        np.testing.assert_array_equal(masks["arm"] | masks["gripper"], masks["robot"])
        assert masks["robot"].any(axis=(1, 2)).all(), f"{video}: robot out of view in some frame"
        assert masks["gripper"].any(), f"{video}: gripper never visible"
        embodiments.add(record.metadata["embodiment"])
        assert video == f"sim_{record.metadata['index']:05d}_{record.metadata['embodiment']}"
    assert embodiments == set(sim.EMBODIMENT_ORDER)


def test_train_split_mimics_real_vrs(dataset):
    all_frames = np.ones(CONFIG.num_frames, bool)
    first_frame_only = np.arange(CONFIG.num_frames) == 0
    for split, video in _videos(dataset):
        record = vrs_layout.read_video(dataset, split, video, mask_dirs=("mask_gt", "mask_gt_dinov3"))
        for category in ROBOT_CATEGORIES:
            gt, pseudo = record.has_label["mask_gt"][category], record.has_label["mask_gt_dinov3"][category]
            if split == "train":
                np.testing.assert_array_equal(gt, first_frame_only)
                np.testing.assert_array_equal(pseudo, all_frames)
                np.testing.assert_array_equal(
                    record.masks["mask_gt"][category][0], record.masks["mask_gt_dinov3"][category][0]
                )
            else:
                np.testing.assert_array_equal(gt, all_frames)
                assert not pseudo.any()


def test_same_seed_same_bytes_with_any_number_of_workers(dataset, tmp_path):
    sim.generate(str(tmp_path), NUM_VIDEOS, CONFIG, workers=2, log=lambda _: None)
    assert _file_hashes(str(tmp_path)) == _file_hashes(dataset)


def test_different_seed_differs(dataset, tmp_path):
    other = sim.GenerationConfig(**{**CONFIG.__dict__, "seed": 1})
    sim.generate(str(tmp_path), 1, other, log=lambda _: None)
    frame = os.path.join("train", "image", "sim_00000_panda", "00000.jpg")
    assert _file_hashes(str(tmp_path))[frame] != _file_hashes(dataset)[frame]


def test_resume_skips_finished_videos(dataset, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(dataset, root)
    # Simulate an interrupted video: metadata (the completion mark) missing and a frame gone.
    os.remove(vrs_layout.metadata_path(root, "train", "sim_00001_kuka_iiwa"))
    os.remove(vrs_layout.frame_path(root, "train", "sim_00001_kuka_iiwa", 2))
    kept = vrs_layout.frame_path(root, "train", "sim_00000_panda", 0)
    kept_mtime = os.stat(kept).st_mtime_ns

    assert sim.generate(root, NUM_VIDEOS, CONFIG, log=lambda _: None) == ["sim_00001_kuka_iiwa"]
    assert os.stat(kept).st_mtime_ns == kept_mtime
    assert _file_hashes(root) == _file_hashes(dataset)
    assert sim.generate(root, NUM_VIDEOS, CONFIG, log=lambda _: None) == []


def test_resume_with_other_settings_is_refused(dataset):
    other = sim.GenerationConfig(**{**CONFIG.__dict__, "size": 128})
    with pytest.raises(ValueError, match="same settings"):
        sim.generate(dataset, NUM_VIDEOS, other, log=lambda _: None)


def test_holdout_sends_every_held_out_video_to_test():
    plans = sim.plan_videos(60, CONFIG)
    assert {p.split for p in plans if p.embodiment == "xarm6"} == {"test"}
    for embodiment in ("panda", "kuka_iiwa"):
        splits = [p.split for p in plans if p.embodiment == embodiment]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (16, 2, 2)

    no_holdout = sim.plan_videos(60, sim.GenerationConfig(**{**CONFIG.__dict__, "holdout_embodiment": None}))
    assert "train" in {p.split for p in no_holdout if p.embodiment == "xarm6"}


def test_plan_is_stable_when_growing_and_seeds_are_per_video():
    small, large = sim.plan_videos(10, CONFIG), sim.plan_videos(40, CONFIG)
    assert large[:10] == small
    assert len({p.seeds for p in large}) == len(large)


def test_cli_writes_a_dataset(tmp_path):
    from robotseg_jax.data.sim.__main__ import main

    args = ["--out", str(tmp_path), "--videos", "1", "--frames", "2", "--size", "32", "--workers", "1"]
    main(args + ["--splits", "train=1", "--holdout-embodiment", "none"])
    assert vrs_layout.list_videos(str(tmp_path), "train") == ["sim_00000_panda"]
    assert vrs_layout.list_frames(str(tmp_path), "train", "sim_00000_panda") == [0, 1]

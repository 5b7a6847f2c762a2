"""DINOv3 pseudo-label propagation: the compiled, chunked, masked implementation against a direct NumPy
transcription of the original's rule; recovery of VRS-Sim masks from oracle features; the CLI end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.data import vrs_layout
from robotseg_jax.teacher import dinov3, label_propagation, propagate
from robotseg_jax.teacher.dinov3_checkpoint import flax_to_official
from robotseg_jax.teacher.features import l2_normalize, resized_size

# ---------------------------------------------------------------------------------------------------------------
# The reference: the original's rule written out with loops, a Python list as the FIFO, torch's interpolate for
# "nearest", M = max label + 1 label channels.


def reference_propagation(feats: np.ndarray, first_mask: np.ndarray, start: int, radius=12, topk=5, temp=0.2):
    """feats [T, h, w, C] unit-norm; first_mask bool [H, W] of frame `start`. Returns {t: (probs [h,w,M], mask)}
    for t > start."""
    _, h, w, _ = feats.shape
    labels = first_mask.astype(np.int64)
    num_labels = labels.max() + 1  # M = max label + 1 (1 when the first mask is empty)
    one_hot = np.eye(num_labels, dtype=np.float32)[labels]  # [H, W, M]
    first_probs = F.interpolate(torch.from_numpy(one_hot).permute(2, 0, 1)[None], size=(h, w), mode="nearest")
    first_probs = first_probs[0].permute(1, 2, 0).numpy().reshape(h * w, num_labels)
    allowed = np.zeros((h * w, h * w), bool)
    for i in range(h):
        for j in range(w):
            for u in range(h):
                for v in range(w):
                    allowed[i * w + j, u * w + v] = np.sqrt((i - u) ** 2 + (j - v) ** 2) <= radius
    first_feats = feats[start].reshape(h * w, -1)
    queue, results = [], {}
    for t in range(start + 1, len(feats)):
        ctx_feats = [first_feats] + [f for f, _ in queue]
        ctx_probs = [first_probs] + [p for _, p in queue]
        current = feats[t].reshape(h * w, -1)
        dot = np.concatenate([np.where(allowed, current @ f.T, -np.inf) for f in ctx_feats], axis=1)
        probs = np.zeros((h * w, num_labels), np.float64)
        flat_probs = np.concatenate(ctx_probs, axis=0)
        for row in range(h * w):
            threshold = np.sort(dot[row])[-topk]
            kept = np.where(dot[row] >= threshold, dot[row], -np.inf) / temp
            weights = np.exp(kept - kept.max())
            weights /= weights.sum()
            probs[row] = weights @ flat_probs
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
        queue.append((current, probs))
        if len(queue) > 7:
            queue.pop(0)
        up = F.interpolate(torch.from_numpy(probs.reshape(h, w, -1)).permute(2, 0, 1)[None], size=first_mask.shape,
                           mode="nearest")[0].numpy()
        low, high = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            normalised = np.nan_to_num((up - low) / (high - low), nan=0.0)
        results[t] = (probs.reshape(h, w, -1), np.argmax(normalised, axis=0) == 1)
    return results


def unit_features(rng, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def run_chunked(feats: np.ndarray, first_masks: list[np.ndarray], starts: list[int], batch: int):
    """The library path: chunks of `batch` frames (last one padded), all categories at once."""
    num_frames, h, w, channels = feats.shape
    mask_size = first_masks[0].shape
    first_probs = np.stack([label_propagation.first_frame_probs(m, (h, w)) for m in first_masks])
    contexts = label_propagation.empty_context(h * w, channels)
    contexts = type(contexts)(*[np.stack([np.asarray(x)] * len(starts)) for x in contexts])
    probs, masks = [], []
    for offset in range(0, num_frames, batch):
        ids = list(range(offset, min(offset + batch, num_frames)))
        chunk = np.concatenate([feats[ids], np.zeros((batch - len(ids), h, w, channels), np.float32)])
        ids += [propagate.PADDING_FRAME] * (batch - len(ids))
        kinds = np.array([[label_propagation.frame_kind(i, s) for i in ids] for s in starts], np.int32)
        contexts, p, m = label_propagation.propagate_chunk(contexts, chunk, kinds, first_probs, mask_size=mask_size)
        probs.append(np.asarray(p)), masks.append(np.asarray(m))
    return np.concatenate(probs, axis=1)[:, :num_frames], np.concatenate(masks, axis=1)[:, :num_frames]


@pytest.mark.reference
def test_legacy_nearest_indices_match_torch():
    for in_size, out_size in [(128, 30), (720, 46), (1080, 60), (60, 1080), (30, 128), (7, 14), (46, 720), (97, 29)]:
        probe = torch.arange(in_size, dtype=torch.float32)[None, None, :, None]
        expected = F.interpolate(probe, size=(out_size, 1), mode="nearest")[0, 0, :, 0].long().numpy()
        np.testing.assert_array_equal(label_propagation.legacy_nearest_indices(in_size, out_size), expected)


@pytest.mark.reference
def test_chunked_propagation_equals_numpy_reference():
    """Random unit features, 11 frames in chunks of 4 (context filling up, a full FIFO, padding), three categories
    with different first frames; one first mask is empty (the reference uses M=1 there, the library M=2)."""
    rng = np.random.default_rng(0)
    num_frames, h, w, channels, mask_size = 11, 9, 27, 16, (40, 97)  # 27 columns > radius 12: the disc matters
    feats = unit_features(rng, (num_frames, h, w, channels))
    yy, xx = np.mgrid[: mask_size[0], : mask_size[1]]
    first_masks = [(yy - 20) ** 2 + (xx - 30) ** 2 < 150, xx > 60, np.zeros(mask_size, bool)]
    starts = [0, 3, 1]
    probs, masks = run_chunked(feats, first_masks, starts, batch=4)
    for k, (first_mask, start) in enumerate(zip(first_masks, starts)):
        reference = reference_propagation(feats, first_mask, start)
        for t, (ref_probs, ref_mask) in reference.items():
            if ref_probs.shape[-1] == probs.shape[-1]:
                np.testing.assert_allclose(probs[k, t], ref_probs, atol=2e-6, err_msg=f"category {k} frame {t}")
            np.testing.assert_array_equal(masks[k, t], ref_mask, err_msg=f"category {k} frame {t}")
        assert masks[k, start + 1 :].any() == first_mask.any()


def test_resized_size_rule():
    assert resized_size(1080, 1920) == (960, 1712)  # ceil(1920 * 960 / 1080 / 16) * 16 = 107 * 16
    assert resized_size(720, 1280) == (960, 1712)
    assert resized_size(480, 640) == (960, 1280)  # an exact multiple stays exact
    assert resized_size(128, 128, short_side=480) == (480, 480)
    assert resized_size(100, 150, short_side=40) == (48, 64)  # both sides rounded up


# ---------------------------------------------------------------------------------------------------------------
# A tiny VRS-Sim folder.


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> str:
    """2 videos x 6 frames at 128 px, all in val, which has dense ground truth for scoring."""
    root = str(tmp_path_factory.mktemp("vrs_sim"))
    command = [sys.executable, "-m", "robotseg_jax.data.sim", "--out", root, "--videos", "2", "--frames", "6",
               "--size", "128", "--seed", "3", "--workers", "1", "--holdout-embodiment", "none", "--splits", "val=1.0"]
    subprocess.run(command, check=True, capture_output=True)
    return root


def patch_grid_indices(mask_size, grid_size):
    """Legacy-nearest rows and columns that take a mask to the feature grid, the way the first-frame label is."""
    return [label_propagation.legacy_nearest_indices(n, g) for n, g in zip(mask_size, grid_size)]


def oracle_feature_fn(root: str, split: str, video: str, noise: float, channels: int = 32, seed: int = 0):
    """Features from the true masks, standing in for the ViT: each patch gets the random unit embedding of its
    (arm, gripper, robot) membership, sampled like the first-frame label, plus Gaussian noise whose expected norm
    is `noise`, unit-normalised."""
    codes = unit_features(np.random.default_rng(seed), (8, channels))
    rng = np.random.default_rng(seed + 1)

    def features(frames: np.ndarray, frame_ids) -> np.ndarray:
        grid = (frames.shape[1] // 16, frames.shape[2] // 16)
        out = np.zeros((len(frame_ids), *grid, channels), np.float32)
        for b, frame_id in enumerate(frame_ids):
            if frame_id == propagate.PADDING_FRAME:
                continue
            members = [vrs_layout.read_mask(root, split, video, c, frame_id) for c in ROBOT_CATEGORIES]
            rows, cols = patch_grid_indices(members[0].shape, grid)
            code = sum(m[rows][:, cols].astype(int) << k for k, m in enumerate(members))
            out[b] = codes[code] + noise / np.sqrt(channels) * rng.standard_normal((*grid, channels))
        return np.asarray(l2_normalize(out))

    return features


def on_patch_grid(mask: np.ndarray, grid) -> np.ndarray:
    """The mask as the feature grid can represent it: down to the grid and back up, both legacy nearest."""
    rows, cols = patch_grid_indices(mask.shape, grid)
    up_rows, up_cols = patch_grid_indices(grid, mask.shape)
    return mask[rows][:, cols][up_rows][:, up_cols]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_oracle_features_recover_the_true_masks(sim_root, capsys):
    """With features that identify the parts, propagation must reproduce the true masks up to what its 30x30 patch
    grid can represent (the sim robots are thin at 128 px, so the grid itself costs IoU; both are reported)."""
    split, short_side = "val", 480
    plans = propagate.plan_split(sim_root, split, overwrite=False)
    assert all(p.starts == {c: 0 for c in ROBOT_CATEGORIES} for p in plans)
    grid = (short_side // 16, short_side // 16)
    vs_grid, vs_truth, grid_vs_truth = ({c: [] for c in ROBOT_CATEGORIES} for _ in range(3))
    for plan in plans:
        fn = oracle_feature_fn(sim_root, split, plan.video, noise=0.3)
        propagate.propagate_video(sim_root, split, plan, fn, short_side=short_side, batch_size=4)
        for category in ROBOT_CATEGORIES:
            for frame_id in plan.frame_ids[1:]:
                truth = vrs_layout.read_mask(sim_root, split, plan.video, category, frame_id)
                pseudo = vrs_layout.read_mask(sim_root, split, plan.video, category, frame_id, "mask_gt_dinov3")
                vs_grid[category].append(iou(pseudo, on_patch_grid(truth, grid)))
                vs_truth[category].append(iou(pseudo, truth))
                grid_vs_truth[category].append(iou(on_patch_grid(truth, grid), truth))
            first = vrs_layout.read_mask(sim_root, split, plan.video, category, 0, "mask_gt_dinov3")
            np.testing.assert_array_equal(first, vrs_layout.read_mask(sim_root, split, plan.video, category, 0))
    mean_grid = {c: round(float(np.mean(v)), 3) for c, v in vs_grid.items()}
    mean_truth = {c: round(float(np.mean(v)), 3) for c, v in vs_truth.items()}
    bound = {c: round(float(np.mean(v)), 3) for c, v in grid_vs_truth.items()}
    with capsys.disabled():
        print(f"\noracle propagation, 2 videos x 5 frames at 128 px, 30x30 patches, mean IoU: vs the grid-sampled "
              f"truth {mean_grid}; vs the truth {mean_truth} (the grid's own IoU vs the truth: {bound})")
    assert min(mean_grid.values()) > 0.95, mean_grid
    assert all(mean_truth[c] > bound[c] - 0.05 for c in bound), (mean_truth, bound)


# ---------------------------------------------------------------------------------------------------------------
# The CLI.


@pytest.fixture(scope="module")
def vits16_checkpoint(tmp_path_factory) -> str:
    """A random-weight ViT-S/16 as an official state dict (.pth)."""
    path = str(tmp_path_factory.mktemp("ckpt") / "dinov3_vits16_random.pth")
    state_dict = flax_to_official(dinov3.random_params(dinov3.VARIANTS["vits16"], seed=0))
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        propagate.main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.reference
def test_cli_writes_pseudo_masks(sim_root, vits16_checkpoint, capsys, tmp_path):
    root = str(tmp_path / "data")
    for video in vrs_layout.list_videos(sim_root, "val"):  # a train split like real VRS: first-frame labels only
        record = vrs_layout.read_video(sim_root, "val", video)
        masks = {c: record.masks["mask_gt"][c] for c in ROBOT_CATEGORIES}
        vrs_layout.write_video(root, "train", video, record.frames, masks, label_frames=[0])
    base = ["--data", root, "--checkpoint", vits16_checkpoint, "--model", "vits16", "--short-side", "32"]

    code, output = run_cli(base, capsys)
    assert code == 0, output
    for video in vrs_layout.list_videos(root, "train"):
        for category in ROBOT_CATEGORIES:
            for frame_id in vrs_layout.list_frames(root, "train", video):
                path = vrs_layout.mask_path(root, "train", video, category, frame_id, "mask_gt_dinov3")
                png = Image.open(path)
                assert png.mode == "L" and png.size == (128, 128)
                assert set(np.unique(np.asarray(png))) <= {0, 255}
    assert "2 video(s) propagated, 12 frames" in output

    code, output = run_cli(base, capsys)  # everything exists: nothing to do
    assert code == 0 and "0 video(s) propagated" in output and "2 video(s) already complete" in output


@pytest.mark.reference
def test_cli_readable_errors(sim_root, vits16_checkpoint, capsys, tmp_path):
    code, output = run_cli(["--data", sim_root, "--split", "val", "--checkpoint", str(tmp_path / "nope.pth")], capsys)
    assert code == 2 and "checkpoint not found" in output and "nope.pth" in output

    code, output = run_cli(["--data", sim_root, "--split", "val", "--checkpoint", vits16_checkpoint, "--overwrite",
                            "--model", "vith16plus"], capsys)
    assert code == 2 and "embed_dim 384" in output and "that is vits16" in output and "that is vith16plus" in output

    root = str(tmp_path / "unlabelled")
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    vrs_layout.write_video(root, "train", "video_a", frames, {})
    code, output = run_cli(["--data", root, "--checkpoint", vits16_checkpoint, "--model", "vits16"], capsys)
    assert code == 2 and "no first-frame label" in output and os.path.join("mask_gt", "video_a") in output

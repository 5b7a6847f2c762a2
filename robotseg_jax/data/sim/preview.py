"""A picture of a VRS-Sim folder: per embodiment, frames with the arm mask in red and the gripper mask in green.

python -m robotseg_jax.data.sim.preview --data DIR --out docs/vrs_sim_preview.png [--videos-per-embodiment 2]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from robotseg_jax.constants import GT_MASK_DIR, PSEUDO_MASK_DIR
from robotseg_jax.data import vrs_layout

ARM_COLOR, GRIPPER_COLOR = np.array([255, 0, 0]), np.array([0, 255, 0])


def overlay(frame: np.ndarray, arm: np.ndarray, gripper: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    out = frame.astype(np.float32)
    out[arm] = (1 - alpha) * out[arm] + alpha * ARM_COLOR
    out[gripper] = (1 - alpha) * out[gripper] + alpha * GRIPPER_COLOR
    return out.astype(np.uint8)


def preview_grid(root: str, videos_per_embodiment: int = 2, frame_index: int = 0) -> np.ndarray:
    """One row per embodiment; each video gives a (frame, overlay) pair of tiles. Masks come from the densest
    folder a split has (mask_gt_dinov3 in train, mask_gt elsewhere)."""
    rows: dict[str, list[np.ndarray]] = {}
    for split in vrs_layout.SPLITS:
        if not os.path.isdir(os.path.join(root, split, vrs_layout.IMAGE_DIR)):
            continue
        mask_dir = PSEUDO_MASK_DIR if split == "train" else GT_MASK_DIR
        for video in vrs_layout.list_videos(root, split):
            embodiment = vrs_layout.read_metadata(root, split, video).get("embodiment", "unknown")
            tiles = rows.setdefault(embodiment, [])
            if len(tiles) >= 2 * videos_per_embodiment:
                continue
            frame_id = vrs_layout.list_frames(root, split, video)[frame_index]
            frame = vrs_layout.read_frame(root, split, video, frame_id)
            arm, gripper = (vrs_layout.read_mask(root, split, video, c, frame_id, mask_dir) for c in ("arm", "gripper"))
            tiles += [frame, overlay(frame, arm, gripper)]
    width = max(len(tiles) for tiles in rows.values())
    blank = np.zeros_like(next(iter(rows.values()))[0])
    return np.concatenate(
        [np.concatenate(tiles + [blank] * (width - len(tiles)), axis=1) for _, tiles in sorted(rows.items())]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="a VRS-Sim dataset root")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--videos-per-embodiment", type=int, default=2)
    parser.add_argument("--frame-index", type=int, default=0, help="position of the frame shown within each video")
    args = parser.parse_args()
    Image.fromarray(preview_grid(args.data, args.videos_per_embodiment, args.frame_index)).save(args.out, optimize=True)


if __name__ == "__main__":
    main()

"""What a segmentation job leaves on disk, written so that a killed job never leaves a video that counts as done
with missing or half-written masks.

    <out>/<video>/<000|001|002>/<frame:05d>.png   0/255 masks in the VRS layout (000 arm, 001 gripper, 002 robot)
    <out>/manifest/process_<i>.jsonl               one line per finished or failed video (the job's record)
    <out>/overlays/<video>.gif                     overlays of the first videos each process finishes
    <out>/summary.json                             counts, failures, throughput
    <out>/tfds/                                    optionally, the masks as a TFDS dataset (array_record)

A video's PNGs go to `<out>/.partial/<video>/` and the finished folder is renamed into place in one step, then the
manifest line is appended (and fsynced). A rerun skips every video named in any process's manifest (so the process
count may change between runs), removes partial folders, and redoes a video whose folder was renamed but not yet
recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from robotseg_jax.constants import CATEGORY_FOLDERS, ROBOT_CATEGORIES
from robotseg_jax.inference.visualize import overlay, write_gif

MANIFEST_DIR = "manifest"
PARTIAL_DIR = ".partial"
OVERLAY_DIR = "overlays"
SUMMARY_FILE = "summary.json"
DONE, FAILED = "done", "failed"
GIF_FRAME_MS = 100


class Manifest:
    """The finished and failed videos of a job over all its runs and processes; this process appends to its own
    file, so processes never write the same file."""

    def __init__(self, out: str, process_index: int = 0):
        self.folder = os.path.join(out, MANIFEST_DIR)
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, f"process_{process_index}.jsonl")
        self.records: dict[str, dict] = {}
        for name in sorted(os.listdir(self.folder)):
            if name.endswith(".jsonl"):
                self._read(os.path.join(self.folder, name))

    def _read(self, path: str) -> None:
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a process killed while appending it
                    continue
                self.records[record["video"]] = record

    def status(self, video: str) -> str | None:
        record = self.records.get(video)
        return None if record is None else record["status"]

    def record(self, video: str, status: str, **details) -> None:
        record = {"video": video, "status": status, "time": time.time(), **details}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[video] = record


class VideoWriter:
    """One video's masks, written frame by frame into its partial folder and moved into place by `commit`;
    with `gif`, an overlay GIF of its frames too."""

    def __init__(self, out: str, video: str, categories: Sequence[str], gif: bool):
        self.out, self.video, self.categories = out, video, list(categories)
        self.partial = os.path.join(out, PARTIAL_DIR, video)
        shutil.rmtree(self.partial, ignore_errors=True)
        for category in self.categories:
            os.makedirs(os.path.join(self.partial, CATEGORY_FOLDERS[category]))
        self.overlays: list[np.ndarray] | None = [] if gif else None

    def add(self, frame_id: int, masks: np.ndarray, rgb: np.ndarray | None) -> None:
        """Frame `frame_id`'s masks, bool [K, H, W] in category order; `rgb` its pixels (needed with `gif`)."""
        for category, mask in zip(self.categories, masks):
            path = os.path.join(self.partial, CATEGORY_FOLDERS[category], f"{frame_id:05d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        if self.overlays is not None:
            self.overlays.append(overlay(rgb, category_overlay_masks(self.categories, masks)))

    def commit(self) -> None:
        final = os.path.join(self.out, self.video)
        if os.path.exists(final):  # renamed by a run killed before it recorded the video
            shutil.rmtree(final)
        os.replace(self.partial, final)
        if self.overlays:
            os.makedirs(os.path.join(self.out, OVERLAY_DIR), exist_ok=True)
            write_gif(self.overlays, os.path.join(self.out, OVERLAY_DIR, f"{self.video}.gif"), GIF_FRAME_MS)

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


def category_overlay_masks(categories: Sequence[str], masks) -> dict[int, np.ndarray]:
    """`overlay`'s masks of one frame: each category under its own colour (object id = its index + 1), the whole
    robot drawn first so that the arm and the gripper show on top of it."""
    order = sorted(range(len(categories)), key=lambda i: -ROBOT_CATEGORIES.index(categories[i]))
    return {ROBOT_CATEGORIES.index(categories[i]) + 1: masks[i] for i in order}


def write_summary(out: str, summary: dict) -> str:
    """Writes summary.json atomically (a temporary file renamed into place); returns its path."""
    path = os.path.join(out, SUMMARY_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
    return path

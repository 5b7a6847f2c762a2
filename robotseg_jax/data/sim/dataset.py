"""Plans, renders and writes a VRS-Sim dataset in the VRS layout: deterministic, resumable, parallel.

- Video i renders embodiment `EMBODIMENT_ORDER[i % 3]` from seeds derived from (global seed, i) alone, so the
  bytes on disk do not depend on the number of workers, the order of work or interruptions.
- Splits: videos of a held-out embodiment all go to test; the others are dealt per embodiment by a fixed schedule
  that tracks the split fractions (no randomness), so growing `num_videos` later keeps every earlier assignment.
- A video is staged under `<out>/.partial/<video>` and moved into place folder by folder, its metadata JSON last:
  the JSON marks the video complete, and a rerun skips complete videos and redoes the others.
- train mimics real VRS: `mask_gt` on the first frame only and `mask_gt_dinov3` on every frame. The DINOv3 pseudo
  masks are stood in for by the exact rendered masks. val and test get dense `mask_gt`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from robotseg_jax.constants import GT_MASK_DIR, PSEUDO_MASK_DIR
from robotseg_jax.data import vrs_layout
from robotseg_jax.data.sim.embodiments import EMBODIMENTS
from robotseg_jax.data.sim.video import RenderedVideo, VideoSeeds, render_video
from robotseg_jax.errors import UserError, make_output_dir

DEFAULT_SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
EMBODIMENT_ORDER = tuple(EMBODIMENTS)
MANIFEST_FILE = "vrs_sim.json"  # the settings a folder was generated with; resuming requires the same ones
STAGING_DIR = ".partial"
FORMAT_VERSION = 1


class SimConfigError(UserError, ValueError):
    """Generation settings that cannot be rendered, or that differ from those a folder was started with."""


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines the bytes of a video (the number of videos and workers do not)."""

    num_frames: int = 8
    size: int = 256
    seed: int = 0
    split_fractions: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLIT_FRACTIONS))
    holdout_embodiment: str | None = "xarm6"
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.holdout_embodiment is not None and self.holdout_embodiment not in EMBODIMENTS:
            raise SimConfigError(f"unknown embodiment {self.holdout_embodiment!r}; expected one of {EMBODIMENT_ORDER}")
        fractions = dict(self.split_fractions)
        if not set(fractions) <= set(vrs_layout.SPLITS) or any(f < 0 for f in fractions.values()):
            raise SimConfigError(f"split fractions {fractions} must be >= 0 and name only {vrs_layout.SPLITS}")
        if not np.isclose(sum(self.split_fractions.values()), 1.0):
            raise SimConfigError(f"split fractions {dict(self.split_fractions)} must sum to 1")
        if self.num_frames < 1 or self.size < 16:
            raise SimConfigError(f"need num_frames >= 1 and size >= 16, got {self.num_frames} and {self.size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise SimConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    index: int
    name: str
    embodiment: str
    split: str
    seeds: VideoSeeds


def plan_videos(num_videos: int, config: GenerationConfig) -> list[VideoPlan]:
    embodiments = [EMBODIMENT_ORDER[i % len(EMBODIMENT_ORDER)] for i in range(num_videos)]
    splits = assign_splits(embodiments, config.split_fractions, config.holdout_embodiment)
    return [
        VideoPlan(i, f"sim_{i:05d}_{e}", e, s, video_seeds(config.seed, i))
        for i, (e, s) in enumerate(zip(embodiments, splits))
    ]


def video_seeds(seed: int, index: int) -> VideoSeeds:
    """Independent seeds per (global seed, video index, stream), via numpy's SeedSequence spawn keys."""
    streams = [np.random.SeedSequence(seed, spawn_key=(index, k)).generate_state(1, np.uint64)[0] for k in range(3)]
    return VideoSeeds(*(int(s) for s in streams))


def assign_splits(embodiments: list[str], fractions: Mapping[str, float], holdout: str | None) -> list[str]:
    """Each embodiment's n-th video goes to the split furthest below its share of that embodiment's first n videos
    (ties in vrs_layout.SPLITS order); the held-out embodiment goes entirely to test."""
    counts = {e: dict.fromkeys(vrs_layout.SPLITS, 0) for e in set(embodiments)}
    splits = []
    for embodiment in embodiments:
        if embodiment == holdout:
            splits.append("test")
            continue
        seen = sum(counts[embodiment].values()) + 1
        split = max(vrs_layout.SPLITS, key=lambda s: fractions.get(s, 0.0) * seen - counts[embodiment][s])
        counts[embodiment][split] += 1
        splits.append(split)
    return splits


def is_complete(out_dir: str, plan: VideoPlan) -> bool:
    return os.path.exists(vrs_layout.metadata_path(out_dir, plan.split, plan.name))


def generate(
    out_dir: str,
    num_videos: int,
    config: GenerationConfig,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Renders every planned video that is not complete yet; returns the names rendered now. Raises
    SimConfigError for settings that cannot be rendered or differ from the folder's, OutputDirError when `out_dir`
    cannot be created."""
    if num_videos < 1:
        raise SimConfigError(f"the number of videos must be at least 1, got {num_videos}")
    make_output_dir(out_dir, "VRS-Sim output folder")
    _check_or_write_manifest(out_dir, config)
    pending = [plan for plan in plan_videos(num_videos, config) if not is_complete(out_dir, plan)]
    log(f"{num_videos - len(pending)} of {num_videos} videos already complete; rendering {len(pending)}")
    render_one = functools.partial(_render_and_write, out_dir, config)
    rendered = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(pending) > 1:
            # spawn, not fork: a parent that already initialised JAX or pybullet must not be forked.
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, len(pending)), mp_context=context))
            results = pool.map(render_one, pending)
        else:
            results = map(render_one, pending)
        for count, (name, seconds) in enumerate(results, 1):
            rendered.append(name)
            log(f"[{count}/{len(pending)}] {name} in {seconds:.1f}s")
    _remove_if_empty(os.path.join(out_dir, STAGING_DIR))
    return rendered


def _render_and_write(out_dir: str, config: GenerationConfig, plan: VideoPlan) -> tuple[str, float]:
    start = time.perf_counter()
    video = render_video(plan.embodiment, config.num_frames, config.size, plan.seeds)
    _write_atomically(out_dir, config, plan, video)
    return plan.name, time.perf_counter() - start


def _write_atomically(out_dir: str, config: GenerationConfig, plan: VideoPlan, video: RenderedVideo) -> None:
    staging = os.path.join(out_dir, STAGING_DIR, plan.name)
    shutil.rmtree(staging, ignore_errors=True)
    metadata = _video_metadata(config, plan, video)
    write = functools.partial(
        vrs_layout.write_video,
        staging,
        plan.split,
        plan.name,
        video.frames,
        video.masks,
        jpeg_quality=config.jpeg_quality,
    )
    if plan.split == "train":
        write(mask_dir=PSEUDO_MASK_DIR)
        write(mask_dir=GT_MASK_DIR, label_frames=[0], metadata=metadata)  # rewrites the same JPEG bytes
    else:
        write(mask_dir=GT_MASK_DIR, metadata=metadata)

    staged_split = os.path.join(staging, plan.split)
    for folder in sorted(os.listdir(staged_split)):
        if folder == vrs_layout.META_DIR:
            continue
        target = os.path.join(out_dir, plan.split, folder, plan.name)
        shutil.rmtree(target, ignore_errors=True)  # left by an interrupted earlier attempt
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(staged_split, folder, plan.name), target)
    meta_target = vrs_layout.metadata_path(out_dir, plan.split, plan.name)
    os.makedirs(os.path.dirname(meta_target), exist_ok=True)
    os.replace(vrs_layout.metadata_path(staging, plan.split, plan.name), meta_target)
    shutil.rmtree(staging)


def _video_metadata(config: GenerationConfig, plan: VideoPlan, video: RenderedVideo) -> dict:
    return _jsonable(
        {
            "generator": "robotseg_jax.data.sim",
            "format_version": FORMAT_VERSION,
            "video": plan.name,
            "index": plan.index,
            "split": plan.split,
            "seed": config.seed,
            "num_frames": config.num_frames,
            f"{GT_MASK_DIR}_frames": [0] if plan.split == "train" else "all",
            PSEUDO_MASK_DIR: "exact rendered masks standing in for DINOv3 pseudo masks"
            if plan.split == "train"
            else None,
            **video.metadata,
        }
    )


def _jsonable(value):
    """numpy scalars to Python, tuples to lists, floats rounded to 6 decimals (a micrometre/microradian)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value


def _check_or_write_manifest(out_dir: str, config: GenerationConfig) -> None:
    manifest = _jsonable({"format_version": FORMAT_VERSION, **dataclasses.asdict(config)})
    path = os.path.join(out_dir, MANIFEST_FILE)
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        if existing != manifest:
            raise SimConfigError(
                f"{path} was generated with {existing}, not {manifest}; resume with the same settings or use a new folder"
            )
        return
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _remove_if_empty(folder: str) -> None:
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)

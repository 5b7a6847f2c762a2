"""A segmentation job described by a config (`configs/segment.py`): `plan_from_config` checks the config and
opens the source (everything a user can fix fails before the model loads), `load_predictor` builds the model,
`run_job` segments this process's share of the videos and writes the outputs (outputs.py).

With several processes (JAX's multi-process runtime, `distributed.initialize`), process i takes videos i, i+n,
i+2n, ... of the source; each writes its own videos and manifest file, and process 0 writes the summary of all.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

import jax
from ml_collections import config_dict
from tqdm import tqdm

from robotseg_jax import distributed
from robotseg_jax.checkpoints.convert import CheckpointError
from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.errors import ConfigValueError, make_output_dir
from robotseg_jax.evaluation.from_config import model_overrides
from robotseg_jax.evaluation.guided_filter import refine_mask
from robotseg_jax.inference import RobotSegVideoPredictor, build_video_predictor
from robotseg_jax.modeling.config import RobotSegConfig, get_model_config
from robotseg_jax.segmentation import outputs, tfds_output
from robotseg_jax.segmentation.engine import START_FRAME, FrameMasks, Segmenter, VideoFailed, VideoFinished
from robotseg_jax.segmentation.sources import SourceVideo, open_source


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    videos: list[SourceVideo]  # this process's share, in source order
    categories: list[str]
    out: str
    videos_per_step: int  # config.videos_per_step rounded up to a multiple of this process's devices
    config: config_dict.ConfigDict


def plan_from_config(config: config_dict.ConfigDict) -> SegmentPlan:
    categories = [c.strip().lower() for c in str(config.categories).split(",") if c.strip()]
    if not categories or any(c not in ROBOT_CATEGORIES for c in categories) or len(set(categories)) < len(categories):
        raise ConfigValueError(f"categories must be a comma-separated subset of {','.join(ROBOT_CATEGORIES)}, "
                               f"got {config.categories!r}")
    for field in ("videos_per_step", "read_ahead"):
        if config[field] < 1:
            raise ConfigValueError(f"{field} must be at least 1, got {config[field]}")
    if config.max_videos is not None and config.max_videos < 1:
        raise ConfigValueError(f"max_videos must be at least 1, got {config.max_videos}")
    try:
        model = get_model_config(config.model, **model_overrides(config))
    except ValueError as err:
        raise ConfigValueError(f"model / image_size: {err}") from err
    if not isinstance(model, RobotSegConfig):
        raise ConfigValueError(f"model {config.model} has no robot prompts: automatic segmentation needs a RobotSeg "
                               "model (robotseg_hiera_t)")
    for field, what in (("checkpoint", "an official .pt file or an orbax directory"),
                        ("source", "a VRS layout, a folder of videos or tfds:<name>[:<split>]"),
                        ("out", "the output folder")):
        if config[field] is None:
            raise ConfigValueError(f"{field} is required: {what}")
    if not os.path.exists(config.checkpoint):
        raise ConfigValueError(f"no checkpoint at {config.checkpoint}")
    videos = open_source(config.source, config.split, config.data_dir, config.image_key)
    if config.max_videos is not None:
        videos = videos[: config.max_videos]
    make_output_dir(config.out, "out folder")
    mine = videos[jax.process_index() :: jax.process_count()]
    devices = jax.local_device_count()
    videos_per_step = -(-config.videos_per_step // devices) * devices  # every device tracks as many videos
    return SegmentPlan(mine, categories, config.out, videos_per_step, config)


def load_predictor(config: config_dict.ConfigDict) -> RobotSegVideoPredictor:
    """The RobotSeg video predictor of `config` on this process's devices (sessions seeded with `config.seed`;
    None: fresh draws)."""
    try:
        return build_video_predictor(
            config.model, config.checkpoint, seed=config.seed, compute_dtype=config.compute_dtype,
            devices=jax.local_devices(), **model_overrides(config),
        )
    except CheckpointError as err:  # names the file and the problem
        raise ConfigValueError(f"cannot load the checkpoint: {err}") from err


def run_job(plan: SegmentPlan, predictor: RobotSegVideoPredictor) -> dict[str, Any]:
    """Segments the plan's videos not yet done; returns the job's summary (all processes), which process 0 also
    writes to `<out>/summary.json`."""
    config, out = plan.config, plan.out
    manifest = outputs.Manifest(out, jax.process_index())
    for video in plan.videos:  # what a killed run left half-written
        shutil.rmtree(os.path.join(out, outputs.PARTIAL_DIR, video.name), ignore_errors=True)
    skip = {outputs.DONE} if config.retry_failed else {outputs.DONE, outputs.FAILED}
    todo = [v for v in plan.videos if manifest.status(v.name) not in skip]
    with_overlay = {v.name for v in todo[: config.overlay_videos]}
    segmenter = Segmenter(
        predictor,
        plan.categories,
        videos_per_step=plan.videos_per_step,
        read_ahead=config.read_ahead,
        keep_rgb=lambda name: config.guided_filter or name in with_overlay,
    )
    writers: dict[str, outputs.VideoWriter] = {}
    done, failed, frames = 0, [], 0  # frames: of the videos segmented
    tracked = 0  # frames processed, those of videos that then failed included
    show = config.progress and jax.process_index() == 0
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="video", disable=not show, desc="segmenting") as progress:
        for event in segmenter.run(todo):
            if isinstance(event, FrameMasks):
                writer = writers.get(event.video)
                if writer is None:
                    writer = writers[event.video] = outputs.VideoWriter(
                        out, event.video, plan.categories, event.video in with_overlay
                    )
                masks = event.masks
                if config.guided_filter and event.frame_idx != START_FRAME:  # upstream skips the start frame
                    masks = [refine_mask(mask, event.rgb) for mask in masks]
                writer.add(event.frame_id, masks, event.rgb)
                tracked += 1
                progress.set_postfix_str(f"{tracked / (time.perf_counter() - start):.2f} frames/s", refresh=False)
                continue
            if isinstance(event, VideoFinished):
                writers.pop(event.video).commit()
                manifest.record(event.video, outputs.DONE, frames=event.num_frames)
                done += 1
                frames += event.num_frames
            elif isinstance(event, VideoFailed):
                writer = writers.pop(event.video, None)
                if writer is not None:
                    writer.discard()
                manifest.record(event.video, outputs.FAILED, error=event.error)
                failed.append({"video": event.video, "error": event.error})
            progress.update()
    seconds = time.perf_counter() - start
    partial = os.path.join(out, outputs.PARTIAL_DIR)
    if os.path.isdir(partial) and not os.listdir(partial):
        os.rmdir(partial)
    part = {"videos": len(plan.videos), "segmented": done, "skipped": len(plan.videos) - len(todo),  # done (or failed) before
            "failed": failed, "frames": frames, "seconds": seconds, "videos_per_step": plan.videos_per_step}
    distributed.barrier("segmented")  # processes finish their shares minutes apart; gathering must not time out
    summary = _merged(distributed.allgather_json(part), config)
    if jax.process_index() == 0:
        if config.tfds_output:
            records = outputs.Manifest(out).records  # every process's, all recorded before the barrier
            done_videos = sorted(name for name, record in records.items() if record["status"] == outputs.DONE)
            summary["tfds_data_dir"] = tfds_output.write_dataset(out, done_videos, plan.categories)
        outputs.write_summary(out, summary)
    return summary


def _merged(parts: list[dict], config: config_dict.ConfigDict) -> dict[str, Any]:
    """The job's summary from every process's part; throughput over the slowest process's time."""
    seconds = max(p["seconds"] for p in parts)
    frames = sum(p["frames"] for p in parts)
    segmented = sum(p["segmented"] for p in parts)
    return {
        "videos": sum(p["videos"] for p in parts),
        "segmented": segmented,
        "skipped_already_done": sum(p["skipped"] for p in parts),
        "failed": [f for p in parts for f in p["failed"]],
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 3) if seconds > 0 else None,
        "videos_per_s": round(segmented / seconds, 4) if seconds > 0 else None,
        "processes": len(parts),
        "devices": jax.device_count(),
        "videos_per_step": parts[0]["videos_per_step"],  # per process
        "config": config.to_dict(),
    }


"""The predictors of a named model, as sam2's `build_sam2` / `build_sam2_video_predictor`: the model config with
the predictor's settings, weights from a checkpoint (an official .pt or an orbax directory) or given params."""

from __future__ import annotations

import os

import jax.numpy as jnp

from robotseg_jax.checkpoints.convert import load_checkpoint
from robotseg_jax.inference.image_predictor import IMAGE_PREDICTOR_OVERRIDES, ImagePredictor
from robotseg_jax.inference.robotseg_predictor import RobotSegVideoPredictor
from robotseg_jax.inference.video_predictor import VideoPredictor
from robotseg_jax.modeling.config import (
    VIDEO_PREDICTOR_OVERRIDES,
    RobotSegConfig,
    SAM2Config,
    get_model_config,
)


def _config_and_params(
    model_name: str, checkpoint: str | os.PathLike | None, params: dict | None, overrides: dict
) -> tuple[SAM2Config, dict]:
    if (checkpoint is None) == (params is None):
        raise ValueError("give exactly one of checkpoint (a .pt file or orbax directory) or params")
    config = get_model_config(model_name, **overrides)
    return config, (load_checkpoint(checkpoint, config) if params is None else params)


def build_video_predictor(
    model_name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    params: dict | None = None,
    fill_hole_area: int = 8,
    non_overlap_masks: bool = False,
    add_all_frames_to_correct_as_cond: bool = False,
    memory_dtype=jnp.bfloat16,
    feature_cache_size: int = 4,
    frame_cache_size: int = 2,
    seed: int | None = None,
    compute_dtype: str = "float32",
    memory_buckets: bool | None = None,
    devices=None,
    **config_overrides,
) -> VideoPredictor:
    """sam2's `build_sam2_video_predictor`: the named model with the video-predictor settings (stability-based
    multimask fallback, binarised click masks in memory, hole filling 8) and `config_overrides` (e.g.
    `image_size=512`). A RobotSeg model (`robotseg_hiera_t`) gets a `RobotSegVideoPredictor` with the same
    settings, as the original's inference config. `seed` seeds every session's draws (RobotSeg's RPG; None: fresh
    ones, as the unseeded original). `devices`: several devices to split batched tracking (`track_frames`) over."""
    config, params = _config_and_params(
        model_name, checkpoint, params, {**VIDEO_PREDICTOR_OVERRIDES, **config_overrides}
    )
    predictor_class = RobotSegVideoPredictor if isinstance(config, RobotSegConfig) else VideoPredictor
    return predictor_class(
        config,
        params,
        fill_hole_area=fill_hole_area,
        non_overlap_masks=non_overlap_masks,
        add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond,
        memory_dtype=memory_dtype,
        feature_cache_size=feature_cache_size,
        frame_cache_size=frame_cache_size,
        seed=seed,
        compute_dtype=compute_dtype,
        memory_buckets=memory_buckets,
        devices=devices,
    )


def build_image_predictor(
    model_name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    params: dict | None = None,
    mask_threshold: float = 0.0,
    max_hole_area: float = 0.0,
    max_sprinkle_area: float = 0.0,
    **config_overrides,
) -> ImagePredictor:
    """An `ImagePredictor` for a named model (`sam2.1_hiera_t`, ...), as sam2's `build_sam2` +
    `SAM2ImagePredictor`; `config_overrides` such as `image_size=512` change the model config."""
    config, params = _config_and_params(
        model_name, checkpoint, params, {**IMAGE_PREDICTOR_OVERRIDES, **config_overrides}
    )
    return ImagePredictor(config, params, mask_threshold, max_hole_area, max_sprinkle_area)

"""An evaluation described by a config (`configs/eval_vrs.py`), in three steps: `plan_from_config` checks the
config and opens the data, `load_predictor` builds the model, `run_plan` evaluates and writes the report. The plan
comes first so that everything a user can fix fails before the model loads; one predictor can serve many plans
(its compiled steps are reused)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ml_collections import config_dict

from robotseg_jax.checkpoints.convert import CheckpointError
from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.data.eval_videos import LayoutVideos, TfdsVideos, open_videos
from robotseg_jax.errors import UserError
from robotseg_jax.evaluation.report import EvalResults, write_report
from robotseg_jax.evaluation.runner import evaluate
from robotseg_jax.evaluation.settings import SETTINGS
from robotseg_jax.inference import VideoPredictor, build_video_predictor
from robotseg_jax.modeling.config import get_model_config


class ConfigError(UserError, ValueError):
    """The config asks for something impossible or misses something required; the message names the field."""


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    settings: list[str]
    categories: list[str]
    videos: LayoutVideos | TfdsVideos
    out: str
    guided_filter: bool
    image_mode: bool
    max_videos: int | None
    progress: bool
    run_info: dict[str, Any]  # the config, recorded in results.json


@dataclasses.dataclass(frozen=True)
class EvalRun:
    results: EvalResults
    paths: list[str]  # the report files written


def plan_from_config(config: config_dict.ConfigDict) -> EvalPlan:
    settings = _choices(config.settings, SETTINGS, "settings", str.upper)
    categories = _choices(config.categories, ROBOT_CATEGORIES, "categories", str.lower)
    if config.image_mode and "OI" in settings:
        raise ConfigError("settings: OI corrects frames during tracking, so it has no image mode; drop OI")
    if config.max_videos is not None and config.max_videos < 1:
        raise ConfigError(f"max_videos must be at least 1, got {config.max_videos}")
    _check_model(config)
    if config.checkpoint is None:
        raise ConfigError("checkpoint is required: an official .pt file or an orbax directory")
    if not os.path.exists(config.checkpoint):
        raise ConfigError(f"no checkpoint at {config.checkpoint}")
    if config.data is None:
        raise ConfigError("data is required: a VRS layout folder or tfds:<name>[:<split>]")
    return EvalPlan(
        settings=settings,
        categories=categories,
        videos=open_videos(config.data, config.split, config.data_dir),
        out=config.out,
        guided_filter=config.guided_filter,
        image_mode=config.image_mode,
        max_videos=config.max_videos,
        progress=config.progress,
        run_info=config.to_dict(),
    )


def load_predictor(config: config_dict.ConfigDict) -> VideoPredictor:
    """The video predictor of `config.model` with the weights of `config.checkpoint` at `config.image_size`, its
    sessions seeded with `config.seed` (RobotSeg's RPG draws; None: fresh ones, as the unseeded original)."""
    try:
        return build_video_predictor(config.model, config.checkpoint, seed=config.seed, **model_overrides(config))
    except CheckpointError as err:  # names the file and the problem
        raise ConfigError(f"cannot load the checkpoint: {err}") from err


def run_plan(plan: EvalPlan, predictor: Any) -> EvalRun:
    results = evaluate(
        predictor,
        plan.videos,
        plan.settings,
        plan.categories,
        plan.out,
        guided_filter=plan.guided_filter,
        image_mode=plan.image_mode,
        max_videos=plan.max_videos,
        progress=plan.progress,
    )
    return EvalRun(results, write_report(results, plan.out, plan.run_info))


def _check_model(config: config_dict.ConfigDict) -> None:
    try:
        get_model_config(config.model, **model_overrides(config))
    except ValueError as err:
        raise ConfigError(f"model / image_size: {err}") from err


def model_overrides(config: config_dict.ConfigDict) -> dict[str, int]:
    """The model-config overrides of a CLI config: its `image_size`, when set."""
    return {} if config.image_size is None else {"image_size": config.image_size}


def _choices(text: str, allowed: tuple[str, ...], field: str, normalise) -> list[str]:
    """A comma-separated subset of `allowed`, in the given order, without repeats."""
    chosen = list(dict.fromkeys(normalise(item.strip()) for item in str(text).split(",") if item.strip()))
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise ConfigError(f"{field} must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return chosen

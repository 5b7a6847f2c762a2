"""Runs the VRS evaluation with RobotSeg's protocol: every chosen setting and category over every video, saving the
masks as PNGs and scoring them.

Per video and category: the GT is read once, the start frame is the first labelled frame with a GT pixel (as
upstream's VRS test scripts choose it, also in automatic mode; frames before it are never predicted),
and each setting starts from a fresh object on the same predictor state (so image features stay cached).
A video whose GT for the category is absent or empty everywhere is skipped and recorded: upstream skips the
former silently and cannot run the latter (no `mask_gt_info` file), and no prompt can be placed on it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.evaluation.guided_filter import refine_mask
from robotseg_jax.evaluation.protocols import first_visible_frame
from robotseg_jax.evaluation.report import EvalResults
from robotseg_jax.evaluation.scores import Score, video_score
from robotseg_jax.evaluation.session import PredictorSession, supports_robot_prompts
from robotseg_jax.evaluation.settings import SETTINGS, predict
from robotseg_jax.data.eval_videos import DatasetError, EvalVideo, LayoutVideos, TfdsVideos
from robotseg_jax.evaluation.image_mode import as_images


def evaluate(
    predictor: Any,
    videos: LayoutVideos | TfdsVideos | Sequence[EvalVideo],
    settings: list[str],
    categories: list[str],
    out_dir: str,
    *,
    guided_filter: bool = True,
    image_mode: bool = False,
    max_videos: int | None = None,
    progress: bool = True,
) -> EvalResults:
    """Evaluates a predictor with sam2's video API (`inference.VideoPredictor` or RobotSeg's) on `videos`
    (`data.eval_videos.open_videos`). In image mode each labelled frame is a 1-frame video. AU needs RobotSeg's
    `add_new_robot`; without it AU is recorded as unavailable."""
    if not set(settings) <= set(SETTINGS) or not set(categories) <= set(ROBOT_CATEGORIES):
        raise ValueError(
            f"settings {settings} and categories {categories} must be subsets of {SETTINGS}, {ROBOT_CATEGORIES}"
        )
    results = EvalResults(list(settings), list(categories))
    runnable = list(settings)
    if "AU" in runnable and not supports_robot_prompts(predictor):
        runnable.remove("AU")
        results.unavailable["AU"] = f"{type(predictor).__name__} has no add_new_robot (SAM 2.x has no robot prompts)"
    total = len(videos) if max_videos is None else min(len(videos), max_videos)
    with tqdm(total=total, desc="evaluating", unit="video", disable=not progress) as bar:
        for video in itertools.islice(videos, total):
            for unit in as_images(video, categories) if image_mode else [video]:
                _evaluate_video(predictor, unit, runnable, categories, out_dir, guided_filter, results, bar)
            bar.update()
    return results


def _evaluate_video(
    predictor: Any,
    video: EvalVideo,
    settings: list[str],
    categories: list[str],
    out_dir: str,
    guided_filter: bool,
    results: EvalResults,
    bar: tqdm,
) -> None:
    state = None
    for category in categories:
        gt = video.read_gt(category)
        if not gt:
            results.skip(video.name, category, "no GT masks for this category")
            continue
        if not any(mask.any() for mask in gt.values()):
            results.skip(video.name, category, "the GT is empty in every frame")
            continue
        start = first_visible_frame(gt)
        if state is None:
            state = predictor.init_state(video.load())
            if state.num_frames != len(video.frame_ids):
                raise DatasetError(
                    f"{video.name}: the predictor read {state.num_frames} frames, the dataset lists "
                    f"{len(video.frame_ids)}"
                )
        for setting in settings:
            bar.set_postfix_str(f"{video.name} {setting}/{category}", refresh=False)
            masks = predict(PredictorSession(predictor, state, category), setting, gt, start)
            score = record_prediction(video, masks, gt, os.path.join(out_dir, setting, category), guided_filter)
            results.add(setting, category, video.name, video.embodiment, score)


def record_prediction(
    video: EvalVideo,
    masks: Mapping[int, np.ndarray],
    gt: Mapping[int, np.ndarray],
    category_dir: str,
    guided_filter: bool,
) -> Score:
    """Saves one run's masks and scores them against the GT.

    masks: {position: bool [H,W]} in the order propagation yielded them. With `guided_filter`, every mask but
        the first yielded (the prompted start frame) is refined with upstream's guided filter, as its VRS test
        scripts do.
    Writes `<category_dir>/<video.folder>/<frame_id:05d>.png` (0/255) for every frame. Frames never predicted
    (those before the start frame) are saved and scored as empty, so that every GT PNG has a prediction, as
    upstream's evaluator asserts. Their GT is empty too, so the scoring gives them no entry (upstream's evaluator
    skips frames before the object has appeared in the GT or the prediction).
    """
    first = next(iter(masks))
    refined = {
        position: refine_mask(mask, video.read_frame(position)) if guided_filter and position != first else mask
        for position, mask in masks.items()
    }
    empty = np.zeros_like(gt[next(iter(gt))])
    folder = os.path.join(category_dir, video.folder)
    os.makedirs(folder, exist_ok=True)
    for position, frame_id in enumerate(video.frame_ids):
        png = np.where(refined.get(position, empty), 255, 0).astype(np.uint8)
        Image.fromarray(png).save(os.path.join(folder, f"{frame_id:05d}.png"))
    labelled = sorted(gt)
    return video_score(np.stack([refined.get(p, empty) for p in labelled]), np.stack([gt[p] for p in labelled]))

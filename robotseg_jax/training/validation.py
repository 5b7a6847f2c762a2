"""Validation during and after training: the paper's protocol (evaluation/) on held-out videos with the current
params, as J&F numbers, and overlays of the predicted masks for image summaries and the run's GIF.

One video predictor is built at the first validation and reused (`set_params`), so its steps compile once.
With several processes each process evaluates every n-th video (its predictor on its own devices) and writes
their PNGs; the per-video scores are then gathered, so every process returns the numbers of a 1-process run.
"""

from __future__ import annotations

import itertools
import os

import jax
import numpy as np
from ml_collections import config_dict
from PIL import Image

from robotseg_jax import distributed
from robotseg_jax.data.eval_videos import EvalVideo, open_videos
from robotseg_jax.evaluation.report import ALL, EvalResults
from robotseg_jax.evaluation.runner import evaluate
from robotseg_jax.inference import build_video_predictor
from robotseg_jax.inference.visualize import overlay


class Validator:
    """J&F of `settings` x `categories` on a split (`config`: data, split, data_dir, settings, categories,
    max_videos), for a model built as `build_video_predictor(model_name, **model_overrides)`. `seed` seeds the
    predictor's sessions (RobotSeg's RPG draws), so that a validation's numbers repeat."""

    def __init__(self, config: config_dict.ConfigDict, model_name: str, model_overrides: dict, seed: int):
        self.config = config
        self.model_name, self.model_overrides = model_name, dict(model_overrides)
        self.seed = seed
        self.settings = [s.strip().upper() for s in config.settings.split(",")]
        self.categories = [c.strip().lower() for c in config.categories.split(",")]
        self.videos = open_videos(config.data, config.split, config.get("data_dir"))
        self._predictor = None

    def run(self, params: dict, out_dir: str) -> tuple[dict[str, float], EvalResults]:
        """Evaluates `params`; returns {"<setting>/<category>/J&F": percent, ..., "J&F": their mean} and the
        full results (predicted PNGs under `out_dir`)."""
        params = distributed.host_copy(params)
        if self._predictor is None:
            self._predictor = build_video_predictor(
                self.model_name, params=params, seed=self.seed, **self.model_overrides
            )
        else:
            self._predictor.set_params(params)
        videos = list(itertools.islice(self.videos, self.config.max_videos))
        count, index = jax.process_count(), jax.process_index()
        results = evaluate(
            self._predictor,
            videos[index::count],
            self.settings,
            self.categories,
            out_dir,
            guided_filter=False,
            progress=False,
        )
        if count > 1:
            distributed.barrier("validation scored")  # the processes' videos take different times
            parts = [EvalResults.from_json(part) for part in distributed.allgather_json(results.to_json())]
            results = EvalResults.merged(parts, [video.name for video in videos])
        metrics = {}
        for setting, category in itertools.product(self.settings, self.categories):
            groups = results.groups(setting, category)
            if groups:
                metrics[f"{setting}/{category}/J&F"] = groups[ALL][0].jf
        if not metrics:
            raise RuntimeError(f"validation scored nothing on {self.config.data}:{self.config.split} ({results.unavailable})")
        metrics["J&F"] = float(np.mean(list(metrics.values())))
        return metrics, results

    def overlay_frames(self, out_dir: str, max_frames: int = 8) -> np.ndarray:
        """uint8 [N, H, W, 3]: the first video's frames with the first setting's and category's predicted mask."""
        video = next(iter(self.videos))
        folder = os.path.join(out_dir, self.settings[0], self.categories[0], video.folder)
        return np.stack([_overlay_frame(video, folder, i) for i in range(min(max_frames, len(video.frame_ids)))])


def _overlay_frame(video: EvalVideo, folder: str, position: int) -> np.ndarray:
    mask = np.asarray(Image.open(os.path.join(folder, f"{video.frame_ids[position]:05d}.png"))) > 0
    return overlay(video.read_frame(position), {1: mask})

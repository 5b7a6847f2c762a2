"""A segmentation job's masks as a TFDS dataset (array_record), to feed them to TFDS / grain pipelines next to
the videos they came from.

    robotseg_masks/1.0.0 under <out>/tfds, split "train": one example per segmented video
        name        the video's name (its output folder; `episode_<index:06d>` for RLDS episodes)
        frame_ids   int32 [T], the frame numbers of the PNGs
        masks       {category: T PNG-encoded uint8 [H, W, 1] masks, 0 or 255}

Read it with `tfds.core.read_only_builder.builder_from_files("robotseg_masks", data_dir=<out>/tfds)
.as_data_source("train")`. It is built from the finished PNG folders, so it holds exactly the videos the manifest
records as done.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from robotseg_jax.constants import CATEGORY_FOLDERS

NAME = "robotseg_masks"
SPLIT = "train"


class SegmentedMasks(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The PNG folders `<out>/<video>/<category folder>/` of `videos` as one example each."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Masks of robotseg_jax.segment."}

    def __init__(self, *, out: str, videos: Sequence[str], categories: Sequence[str], **kwargs):
        self._out, self._videos, self._categories = out, list(videos), list(categories)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        masks = tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1), encoding_format="png"))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "name": tfds.features.Text(),
                    "frame_ids": tfds.features.Sequence(np.int32),
                    "masks": {category: masks for category in self._categories},
                }
            )
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        for video in self._videos:
            folders = {c: os.path.join(self._out, video, CATEGORY_FOLDERS[c]) for c in self._categories}
            names = sorted(os.listdir(folders[self._categories[0]]), key=lambda n: int(os.path.splitext(n)[0]))
            masks = {c: [_read_bytes(os.path.join(folder, n)) for n in names] for c, folder in folders.items()}
            yield video, {"name": video, "frame_ids": [int(os.path.splitext(n)[0]) for n in names], "masks": masks}


def write_dataset(out: str, videos: Sequence[str], categories: Sequence[str]) -> str:
    """(Re)builds the dataset of `videos` under `<out>/tfds`; returns that folder."""
    data_dir = os.path.join(out, "tfds")
    shutil.rmtree(os.path.join(data_dir, NAME), ignore_errors=True)  # a rerun adds videos: rebuild it whole
    builder = SegmentedMasks(out=out, videos=videos, categories=categories, data_dir=data_dir,
                             file_format="array_record")
    builder.download_and_prepare()
    return data_dir


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()

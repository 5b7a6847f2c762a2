"""TFDS builder `vrs_sim`: the synthetic robot videos of `python -m robotseg_jax.data.sim`, read from a manual dir.

The generator writes the VRS layout (train: first-frame `mask_gt` plus dense `mask_gt_dinov3`; val/test: dense
`mask_gt`) and `meta/<video>.json`, whose "embodiment" is stored; a video without its JSON is incomplete (an
interrupted generation) and an error. Build from the repo root:

    python -m robotseg_jax.data.sim --out /tmp/vrs_sim --videos 60 --frames 8 --size 256
    python -m robotseg_jax.data.tfds_builders vrs_sim --manual_dir /tmp/vrs_sim --data_dir /tmp/tensorflow_datasets
"""

import tensorflow_datasets as tfds

from robotseg_jax.data import vrs_tfds


class Builder(vrs_tfds.LayoutBuilder):
    """Synthetic robot videos (VRS-Sim) with arm, gripper and whole-robot masks; one example per video."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the output folder of `python -m robotseg_jax.data.sim` as manual_dir."
    REQUIRE_METADATA = True  # the generator writes it last; without it a video is incomplete

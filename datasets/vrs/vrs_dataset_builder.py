"""TFDS builder `vrs`: the real VRS (Video Robot Segmentation) benchmark of RobotSeg, read from a manual dir.

Point it at the VRS download, the folder that holds `train/` and `test/` (and `val/` if present):

    VRS/train/image/<video>/<frame:05d>.jpg
    VRS/train/mask_gt/<video>/<000|001|002>/<frame:05d>.png         first-frame labels (000 arm, 001 gripper, 002 robot)
    VRS/train/mask_gt_dinov3/<video>/<000|001|002>/<frame:05d>.png  DINOv3 pseudo masks for every later frame
    VRS/test/image/<video>/<frame:05d>.jpg
    VRS/test/mask_gt/<video>/<000|001|002>/<frame:05d>.png          dense ground truth

and build it from the repo root (no TensorFlow needed):

    python -m robotseg_jax.data.tfds_builders vrs --manual_dir /path/to/VRS --data_dir /path/to/tensorflow_datasets

(or `tfds_builders.build("vrs", manual_dir, data_dir)` from Python), then read a split with
`robotseg_jax.data.vrs_tfds.open_split("vrs", "train", data_dir)`.

The pseudo masks come from the offline DINOv3 propagation (`python -m robotseg_jax.teacher.propagate`); a
pseudo-mask folder with a hole after its first PNG is an error that names the missing file. `train/txt` and
`test/mask_gt_info/*.npy` are not read: the videos are the image folders, and the `.npy` files repeat what the
test PNGs hold. The embodiment is parsed from names such as
`train_video_0000___01_franka___training_..._clip_00130_00697` ("franka"), else "unknown".
"""

import tensorflow_datasets as tfds

from robotseg_jax.data import vrs_tfds


class Builder(vrs_tfds.LayoutBuilder):
    """Real VRS robot videos with arm, gripper and whole-robot masks; one example per video."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the VRS folder that holds train/ and test/ as manual_dir."
    HOMEPAGE = "https://arxiv.org/abs/2511.22950"

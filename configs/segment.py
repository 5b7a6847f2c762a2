"""Automatic (0-click) segmentation of a whole robot dataset with RobotSeg: every video's arm, gripper and robot
masks for every frame, as VRS-layout PNGs.

    python -m robotseg_jax.segment --config configs/segment.py \
        --config.checkpoint=robotseg.pt --config.source=/data/videos --config.out=/data/masks

`source` is a VRS layout folder (its `split`), a folder of videos (.mp4 files, folders of JPEG frames) or
`tfds:<name>[:<split>]` for a built TFDS dataset under `data_dir`: RobotSeg's vrs / vrs_sim, or an RLDS dataset
whose frames are `steps/observation/<image_key>` (e.g. image_key=exterior_image_1_left for DROID).
"""

from ml_collections import config_dict

from robotseg_jax import distributed
from robotseg_jax.constants import ROBOT_CATEGORIES


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.model = "robotseg_hiera_t"
    config.checkpoint = config_dict.placeholder(str)  # an official .pt file or an orbax directory (required)
    config.source = config_dict.placeholder(str)  # required
    config.split = "test"  # of a VRS layout, or of a TFDS dataset given without one
    config.data_dir = config_dict.placeholder(str)  # TFDS data dir (None: TFDS's default)
    config.image_key = "image"  # RLDS: the camera under steps/observation ("a/b" for nested keys)
    config.categories = ",".join(ROBOT_CATEGORIES)  # segmented together, as the objects of each video
    config.out = config_dict.placeholder(str)  # required
    config.image_size = config_dict.placeholder(int)  # model input size (None: the model's, 1024)
    config.compute_dtype = "float32"  # or bfloat16 (as upstream's autocast)
    # RobotSeg's RPG draws (farthest-point-sampling starts): an int makes reruns identical; None draws fresh ones.
    config.seed = 0
    config.videos_per_step = 4  # videos tracked together in each compiled step
    config.read_ahead = 4  # frames decoded ahead per video, in a thread per video
    config.guided_filter = False  # upstream's VRS post-processing (every frame but the first)
    config.max_videos = config_dict.placeholder(int)  # the first N of the source; None: all
    config.overlay_videos = 4  # overlay GIFs of the first N videos each process segments
    config.tfds_output = False  # also the masks as a TFDS dataset (out/tfds/robotseg_masks), by process 0
    config.retry_failed = False  # a rerun also retries the videos that failed before
    config.progress = True
    config.distributed = distributed.config_section()
    return config

"""VRS evaluation with RobotSeg's protocol: settings AU, 1C, 3C, BB, OI; categories arm, gripper, robot, each scored
separately (J, F and J&F as per-video means averaged over the videos).

    python -m robotseg_jax.evaluate --config configs/eval_vrs.py \
        --config.checkpoint=robotseg.pt --config.data=/data/VRS --config.settings=AU,1C,BB

`data` is a VRS layout folder (holding `<split>/image`, `<split>/mask_gt`) or `tfds:<name>[:<split>]` for a built
`vrs` / `vrs_sim` TFDS dataset under `data_dir`.
"""

from ml_collections import config_dict

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.evaluation.settings import SETTINGS


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.model = "robotseg_hiera_t"  # any of modeling.config.MODEL_CONFIGS, e.g. sam2.1_hiera_t (AU is then "-")
    config.checkpoint = config_dict.placeholder(str)  # an official .pt file or an orbax directory (required)
    config.data = config_dict.placeholder(str)  # required
    config.data_dir = config_dict.placeholder(str)  # TFDS data dir for tfds: data (None: TFDS's default)
    config.split = "test"
    config.settings = ",".join(SETTINGS)  # comma-separated subset; AU needs a model with robot prompts
    config.categories = ",".join(ROBOT_CATEGORIES)  # comma-separated subset
    config.image_size = config_dict.placeholder(int)  # model input size (None: the model's, 1024)
    # RobotSeg's RPG draws (farthest-point-sampling starts): an int repeats the numbers; None draws fresh ones per
    # video, as the unseeded original does.
    config.seed = config_dict.placeholder(int)
    config.seed = 0
    # Upstream's VRS post-processing: a guided filter on every saved mask but the start frame's; off for
    # RoboEngine-style image sets, which upstream evaluates without it.
    config.guided_filter = True
    # Every labelled frame as a 1-frame video, as RobotSeg evaluates RoboEngine images (no memory, so no SEMA).
    config.image_mode = False
    config.max_videos = config_dict.placeholder(int)  # the first N (by name; TFDS: split order); None: all
    config.out = "eval_vrs"  # PNGs in out/<setting>/<category>/<video>/, results.csv and results.json in out/
    config.progress = True
    return config

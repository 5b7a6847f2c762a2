"""VRS evaluation with the paper's protocol (spec §6): settings AU, 1C, 3C, BB, OI; categories arm, gripper, robot.

    python -m robotseg_jax.evaluate --config configs/eval_vrs.py \
        --config.checkpoint=robotseg.pt --config.data=/data/VRS --config.settings=AU,1C,BB

`data` is a VRS layout folder (holding `<split>/image`, `<split>/mask_gt`) or `tfds:<name>[:<split>]` for a built
`vrs` / `vrs_sim` TFDS dataset under `data_dir`.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.model = "robotseg_hiera_t"  # any of modeling.config.MODEL_CONFIGS, e.g. sam2.1_hiera_t (AU is then "-")
    config.checkpoint = config_dict.placeholder(str)  # an official .pt file or an orbax directory (required)
    config.data = config_dict.placeholder(str)  # required
    config.data_dir = config_dict.placeholder(str)  # TFDS data dir for tfds: data (None: TFDS's default)
    config.split = "test"
    config.settings = "AU,1C,3C,BB,OI"  # comma-separated subset; AU needs a model with robot prompts
    config.categories = "arm,gripper,robot"
    config.image_size = config_dict.placeholder(int)  # model input size (None: the model's, 1024)
    config.guided_filter = True  # upstream's VRS post-processing (§5); off for RoboEngine-style image sets
    config.image_mode = False  # every labelled frame as a 1-frame video (§1.6), as for RoboEngine images
    config.max_videos = config_dict.placeholder(int)  # the first N (by name; TFDS: split order); None: all
    config.out = "eval_vrs"  # PNGs in out/<setting>/<category>/<video>/, results.csv and results.json in out/
    config.progress = True
    return config

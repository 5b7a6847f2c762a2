"""The paper's SAM 2.1 fine-tuning baseline: SAM 2.1-T on VRS with SAM 2's loss and prompts and the training
settings of sam2.1_hiera_b+_MOSE_finetune.yaml where they differ from RobotSeg's recipe, on first-frame GT plus
pseudo masks as for RobotSeg. Everything else is configs/robotseg_hiera_t.py.

    python -m robotseg_jax.train --config configs/sam2_1_hiera_t_finetune.py --workdir runs/sam21_ft \
        --config.init_checkpoint=sam2.1_hiera_tiny.pt
"""

from ml_collections import config_dict

from configs import robotseg_hiera_t
from robotseg_jax.config_sections import config_section
from robotseg_jax.training import prompts


def get_config() -> config_dict.ConfigDict:
    c = robotseg_hiera_t.get_config()
    c.model = "sam2.1_hiera_t"  # SAM 2.1-T: no SEMA, RPG or class tokens
    c.seed = 123
    c.data.sampler = "uniform"  # consecutive frames from a uniform random start
    c.data.num_frames = 8
    c.data.batch_size = 8  # clips per step, global (8 GPUs x 1)
    c.data.images = None  # videos only
    c.prompts = config_section(prompts.SAM21_MOSE_FINETUNE)  # 1-2 conditioning frames, 7 corrections
    c.loss = "sam2"  # sam2_loss: mask 20, dice 1, IoU 1, class 1
    c.optimizer.base_lr = 5e-6
    c.optimizer.vision_lr = 3e-6
    c.num_epochs = 40
    c.eval.settings = "1C"  # SAM 2.1 has no automatic mode
    return c

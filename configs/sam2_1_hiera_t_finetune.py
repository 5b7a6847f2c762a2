"""The paper's SAM 2.1 fine-tuning baseline: SAM 2.1-T on VRS with SAM 2's loss and prompts
(sam2.1_hiera_b+_MOSE_finetune.yaml's training settings, spec §3.2's right column), first-frame GT plus pseudo
masks as for RobotSeg.

    python -m robotseg_jax.train --config configs/sam2_1_hiera_t_finetune.py --workdir runs/sam21_ft \
        --config.init_checkpoint=sam2.1_hiera_tiny.pt
"""

from ml_collections import config_dict

from configs import robotseg_hiera_t


def get_config() -> config_dict.ConfigDict:
    c = robotseg_hiera_t.get_config()
    c.model = "sam2.1_hiera_t"
    c.seed = 123
    c.data.sampler = "uniform"
    c.data.num_frames = 8
    c.data.batch_size = 8
    c.data.images = None
    c.prompts = config_dict.ConfigDict(  # training.prompts.SAM21_MOSE_FINETUNE
        {"prob_robot": None, "prob_point": 0.5, "prob_box": 0.5, "prob_from_gt": 0.1, "num_init_cond_frames": 2,
         "rand_init_cond_frames": True, "num_frames_to_correct": 2, "rand_frames_to_correct": True,
         "num_correction_pts": 7, "add_all_frames_to_correct_as_cond": True}
    )
    c.loss = "sam2"
    c.optimizer.base_lr = 5e-6
    c.optimizer.vision_lr = 3e-6
    c.num_epochs = 40
    c.eval.settings = "1C"
    return c

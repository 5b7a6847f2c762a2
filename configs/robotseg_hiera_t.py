"""RobotSeg's training recipe (spec §3.2, §4): LET on VRS with mixed RoboEngine-style image batches, from SAM 2.1-T.

    python -m robotseg_jax.train --config configs/robotseg_hiera_t.py --workdir runs/robotseg \
        --config.init_checkpoint=sam2.1_hiera_tiny.pt --config.data.data_dir=/data/tfds

Data: the `vrs` TFDS dataset (`python -m robotseg_jax.data.tfds_builders vrs --manual_dir VRS/ --data_dir DIR`,
with `train/mask_gt_dinov3` from `python -m robotseg_jax.teacher.propagate`). The image source is any dataset in
the VRS layout whose videos are single images (RoboEngine converted to that layout and built with the `vrs`
builder into its own data dir); set `data.images=None` to train on videos only.
Batch sizes are global: the paper's 8 GPUs x (1 clip | 10 images).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.model = "robotseg_hiera_t"
    c.image_size = 1024
    c.model_overrides = config_dict.ConfigDict({"hiera_drop_path_rate": 0.1})  # robotseg-train.yaml
    c.init_checkpoint = config_dict.placeholder(str)  # sam2.1_hiera_tiny.pt (the paper's start), or None: random
    c.seed = 2026

    c.data = config_dict.ConfigDict()
    c.data.name = "vrs"
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (None: TFDS's default)
    c.data.split = "train"
    c.data.mask_dir = "mask_gt_dinov3"  # first-frame GT plus DINOv3 pseudo masks (spec §4.5)
    c.data.sampler = "bidirectional"
    c.data.num_frames = 7
    c.data.batch_size = 8
    c.data.augment = True
    c.data.num_workers = 10
    c.data.images = config_dict.ConfigDict(
        {"name": "vrs", "data_dir": config_dict.placeholder(str), "split": "train", "mask_dir": "mask_gt",
         "batch_size": 80}
    )
    c.data.sim = None  # set by configs that render VRS-Sim when the dataset is absent

    c.prompts = config_dict.ConfigDict(  # spec §4.3 (training.prompts.ROBOTSEG)
        {"prob_robot": 0.4, "prob_point": 0.4, "prob_box": 0.5, "prob_from_gt": 0.1, "num_init_cond_frames": 1,
         "rand_init_cond_frames": False, "num_frames_to_correct": 1, "rand_frames_to_correct": False,
         "num_correction_pts": 3, "add_all_frames_to_correct_as_cond": True}
    )
    c.loss = "let"
    c.let_loss = config_dict.ConfigDict(
        {"weight_mask": 5.0, "weight_dice": 1.0, "weight_iou": 1.0, "weight_class": 1.0, "weight_semantic": 1.0,
         "weight_patch": 1.0, "weight_structure": 1.0, "supervise_all_iou": False}
    )
    c.sam2_loss = config_dict.ConfigDict(  # used with loss "sam2"
        {"weight_mask": 20.0, "weight_dice": 1.0, "weight_iou": 1.0, "weight_class": 1.0}
    )
    c.optimizer = config_dict.ConfigDict(  # spec §4.6
        {"base_lr": 3e-4, "vision_lr": 6e-5, "end_lr_ratio": 0.1, "weight_decay": 0.1, "layer_decay": 0.9,
         "grad_clip_norm": 0.1, "freeze_image_encoder": False}
    )
    c.num_epochs = 25
    c.total_steps = config_dict.placeholder(int)  # None: num_epochs x steps per epoch
    c.compute_dtype = "bfloat16"  # float32 master params, bf16 forward (torch autocast)
    c.unroll_stages = config_dict.placeholder(bool)  # None: unroll on CPU, scan elsewhere (train_step.StepConfig)

    c.mesh = config_dict.ConfigDict({"data": -1, "fsdp": 1, "fsdp_rules": (".*",)})
    c.checkpoint_every_steps = config_dict.placeholder(int)  # None: once per epoch
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.log_every_steps = 50
    c.profile_steps = 0  # > 0: a profiler trace of that many steps after the first log interval

    c.eval = config_dict.ConfigDict(  # validation J&F during training; every_steps 0 turns it off
        {"every_steps": config_dict.placeholder(int), "data": "tfds:vrs", "data_dir": config_dict.placeholder(str),
         "split": "test", "settings": "AU", "categories": "robot", "max_videos": 20}
    )
    c.final_eval = config_dict.ConfigDict(  # after training (and before it, with compare_untrained): results.json
        {"enabled": False, "data": "tfds:vrs", "data_dir": config_dict.placeholder(str), "split": "test",
         "settings": "AU,1C,3C,BB,OI", "categories": "arm,gripper,robot", "max_videos": config_dict.placeholder(int),
         "compare_untrained": False}
    )
    c.max_consecutive_skips = 100  # non-finite steps in a row before the run stops as diverged
    c.compilation_cache_dir = config_dict.placeholder(str)
    c.distributed = False  # jax.distributed.initialize() for multi-host (TPU pods, multi-node GPU)
    return c

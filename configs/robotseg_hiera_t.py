"""RobotSeg's training recipe: LET on VRS with mixed RoboEngine-style image batches, from SAM 2.1-T.

    python -m robotseg_jax.train --config configs/robotseg_hiera_t.py --workdir runs/robotseg \
        --config.init_checkpoint=sam2.1_hiera_tiny.pt --config.data.data_dir=/data/tfds

Data: the `vrs` TFDS dataset (`python -m robotseg_jax.data.tfds_builders vrs --manual_dir VRS/ --data_dir DIR`,
with `train/mask_gt_dinov3` from `python -m robotseg_jax.teacher.propagate`). The image source is any dataset in
the VRS layout whose videos are single images (RoboEngine converted to that layout and built with the `vrs`
builder into its own data dir); set `data.images=None` to train on videos only.
Batch sizes are global: the paper's 8 GPUs x (1 clip | 10 images).

The prompt, loss and optimizer sections are the code's presets (`training.prompts.ROBOTSEG`, `LETLossConfig()`,
`SAM2LossConfig()`, `OptimizerConfig`'s defaults), one key per dataclass field: override any of them with
`--config.<section>.<field>=...`, e.g. `--config.let_loss.weight_semantic=2`, `--config.let_loss.cycle.weight_mask=10`.
"""

from ml_collections import config_dict

from robotseg_jax import distributed
from robotseg_jax.config_sections import config_section, defaults_section
from robotseg_jax.constants import GT_MASK_DIR, PSEUDO_MASK_DIR, ROBOT_CATEGORIES
from robotseg_jax.evaluation.settings import SETTINGS
from robotseg_jax.training import prompts
from robotseg_jax.training.losses import LETLossConfig, SAM2LossConfig
from robotseg_jax.training.optimizer import OptimizerConfig


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.model = "robotseg_hiera_t"  # any of modeling.config.MODEL_CONFIGS
    c.image_size = 1024  # the square model input
    c.model_overrides = config_dict.ConfigDict()  # modeling.config.get_model_config overrides
    c.model_overrides.hiera_drop_path_rate = 0.1  # robotseg-train.yaml: trunk drop path 0 -> 0.1 over the blocks
    c.init_checkpoint = config_dict.placeholder(str)  # sam2.1_hiera_tiny.pt (the paper's start), or None: random
    c.seed = 2026  # params (without a checkpoint), data order, augmentation and prompts

    c.data = config_dict.ConfigDict()  # the video source
    c.data.name = "vrs"  # a TFDS dataset built by robotseg_jax.data.tfds_builders
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (None: TFDS's default)
    c.data.split = "train"
    c.data.mask_dir = PSEUDO_MASK_DIR  # first-frame GT plus DINOv3-propagated pseudo masks on every frame
    c.data.sampler = "bidirectional"  # clips [0, s, 2s, 3s, 2s, s, 0]: GT on the first and last stage
    c.data.num_frames = 7  # clip length
    c.data.batch_size = 8  # clips per step, global
    c.data.augment = True  # SAM 2.1's MOSE fine-tuning transforms
    c.data.num_workers = 10  # grain worker processes
    c.data.images = config_dict.ConfigDict()  # the 1-frame image source mixed in per batch (None: videos only)
    c.data.images.name = "vrs"  # RoboEngine in the VRS layout, built with the vrs builder into its own data dir
    c.data.images.data_dir = config_dict.placeholder(str)
    c.data.images.split = "train"
    c.data.images.mask_dir = GT_MASK_DIR  # RoboEngine has GT masks only
    c.data.images.batch_size = 80  # images per step, global
    c.data.sim = None  # set by configs that render VRS-Sim when the dataset is absent

    c.prompts = config_section(prompts.ROBOTSEG)  # P(robot/mask/point) 0.4/0.2/0.4, 3 correction clicks on frame 0
    c.loss = "let"  # "let" or "sam2"
    c.let_loss = config_section(LETLossConfig())  # robotseg-train.yaml's LET weights
    c.sam2_loss = config_section(SAM2LossConfig())  # SAM 2.1's loss, used with loss "sam2"
    c.optimizer = defaults_section(OptimizerConfig)  # AdamW 3e-4 / 6e-5 (image encoder), layer decay 0.9, cosine to 1/10
    c.num_epochs = 25
    c.total_steps = config_dict.placeholder(int)  # None: num_epochs x steps per epoch
    c.compute_dtype = "bfloat16"  # float32 master params, bf16 forward (torch autocast)
    c.unroll_stages = config_dict.placeholder(bool)  # None: unroll on CPU, scan elsewhere (train_step.StepConfig)

    c.mesh = config_dict.ConfigDict()
    c.mesh.data = -1  # data-parallel devices (-1: all that fsdp leaves)
    c.mesh.fsdp = 1  # devices that shard the params
    c.mesh.fsdp_rules = (".*",)  # regexes (full match on PyTorch param names) of the params sharded over fsdp
    c.checkpoint_every_steps = config_dict.placeholder(int)  # None: once per epoch
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.log_every_steps = 50
    c.profile_steps = 0  # > 0: a profiler trace of that many steps after the first log interval

    c.eval = config_dict.ConfigDict()  # validation J&F during training
    c.eval.every_steps = config_dict.placeholder(int)  # None: once per epoch; 0: off
    c.eval.data = "tfds:vrs"  # as configs/eval_vrs.py's data
    c.eval.data_dir = config_dict.placeholder(str)  # None: data.data_dir
    c.eval.split = "test"
    c.eval.settings = "AU"
    c.eval.categories = "robot"
    c.eval.max_videos = 20
    c.final_eval = config_dict.ConfigDict()  # after training (and before it, with compare_untrained): results.json
    c.final_eval.enabled = False
    c.final_eval.data = "tfds:vrs"
    c.final_eval.data_dir = config_dict.placeholder(str)  # None: data.data_dir
    c.final_eval.split = "test"
    c.final_eval.settings = ",".join(SETTINGS)  # all five
    c.final_eval.categories = ",".join(ROBOT_CATEGORIES)  # each scored separately
    c.final_eval.max_videos = config_dict.placeholder(int)  # None: all
    c.final_eval.compare_untrained = False  # also evaluate the starting params
    c.max_consecutive_skips = 100  # non-finite steps in a row before the run stops as diverged
    c.metrics_lag_steps = 1  # the host fetches each step's metrics this many steps late (0: waits every step)
    c.compilation_cache_dir = config_dict.placeholder(str)
    c.distributed = distributed.config_section()  # JAX's multi-process runtime: mode auto / on / off
    return c

"""A RobotSeg run that needs no downloads and trains in minutes on a CPU: LET from scratch on VRS-Sim.

    python -m robotseg_jax.train --config configs/quickstart.py --workdir runs/quickstart

Renders a small VRS-Sim dataset into <workdir>/data (Franka and Kuka for training, the xArm held out for test),
builds it as TFDS, evaluates the untrained model, trains the full robotseg_hiera_t architecture at 128 px on
3-frame bidirectional clips, validates, evaluates again (automatic mode, whole robot) and writes results.json,
overlay.gif, TensorBoard logs and the trained params (<workdir>/params, loadable by evaluate/predict/convert
with --config.image_size=128 / --image-size 128). VRS-Sim's exact masks stand in for DINOv3 pseudo masks.
Everything not set here is configs/robotseg_hiera_t.py.

`configs/quickstart.py:tiny` is the same run at test size, seconds per step on a CPU: 64 px, 2-frame clips, 4
Hiera blocks (one global) and a narrower memory-attention MLP, robot prompts only, a checkpoint and a log line
every step, no evaluation (the multi-process tests and benchmarks/scaling.py use it).
"""

from ml_collections import config_dict

from configs import robotseg_hiera_t


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
    c = robotseg_hiera_t.get_config()
    c.image_size = 128
    c.model_overrides.hiera_drop_path_rate = 0.0
    c.seed = 0

    c.data.name = "vrs_sim"  # its train split has first-frame GT and exact masks as pseudo masks, like VRS
    c.data.num_frames = 3  # [0, s, 0]: every LET role (cycle, semantic/patch, structure) at a third of the cost
    c.data.batch_size = 4
    c.data.num_workers = 0  # batches are made in the training process
    c.data.images = None  # videos only
    c.data.sim = config_dict.ConfigDict()  # rendered into <workdir>/data when the TFDS dataset is absent
    c.data.sim.out = config_dict.placeholder(str)  # the VRS layout folder (None: <workdir>/data/vrs_sim)
    c.data.sim.videos = 36
    c.data.sim.frames = 8  # per video
    c.data.sim.size = 128  # square frames, pixels
    c.data.sim.seed = 0
    c.data.sim.holdout_embodiment = "xarm6"  # all its videos go to test
    c.data.sim.workers = 2  # rendering processes
    # Robot prompts (the automatic mode evaluated below) and single clicks; no boxes and no mask prompts, which
    # would each add a program to compile (about 80 s apiece on 2 CPU cores).
    c.prompts.prob_robot = 0.6
    c.prompts.prob_point = 0.4
    c.prompts.prob_box = 0.0
    # From scratch the IoU head must learn to rank all 3 masks (the reference LET trains only the selected one's).
    c.let_loss.cycle.supervise_all_iou = True
    c.optimizer.base_lr = 1e-3
    c.optimizer.vision_lr = 1e-3  # from scratch: the image encoder learns as fast as the rest
    c.optimizer.layer_decay = 1.0
    c.total_steps = 300
    c.compute_dtype = "float32"  # bf16 is slow on CPUs

    c.checkpoint_every_steps = 100
    c.keep_checkpoints = 2
    c.log_every_steps = 10
    c.eval.every_steps = 100
    c.eval.data = "tfds:vrs_sim"
    c.eval.split = "val"
    c.eval.max_videos = 4
    c.final_eval.enabled = True
    c.final_eval.data = "tfds:vrs_sim"
    c.final_eval.settings = "AU"
    c.final_eval.categories = "robot"
    c.final_eval.compare_untrained = True
    if variant == "tiny":
        _tiny(c)
    elif variant:
        raise ValueError(f"configs/quickstart.py:{variant}: the only variant is 'tiny'")
    return c


def _tiny(c: config_dict.ConfigDict) -> None:
    c.image_size = 64
    c.model_overrides.hiera_stages = (1, 1, 1, 1)
    c.model_overrides.hiera_global_att_blocks = (2,)
    c.model_overrides.mem_attn_dim_feedforward = 256
    c.data.sampler = "uniform"
    c.data.num_frames = 2
    c.data.sim.videos = 6
    c.data.sim.frames = 4
    c.data.sim.size = 64
    c.prompts.prob_robot = 1.0
    c.prompts.prob_point = 0.0
    c.total_steps = 20
    c.checkpoint_every_steps = 1
    c.log_every_steps = 1
    c.eval.every_steps = 0
    c.final_eval.enabled = False

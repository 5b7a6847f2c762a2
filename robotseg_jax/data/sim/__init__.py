"""VRS-Sim: synthetic robot videos with exact arm/gripper/robot masks, rendered on the CPU with pybullet.

Franka Panda, KUKA iiwa + WSG50 and xArm6 (all from `pybullet_data`) move along smooth random joint trajectories in
randomised rooms (procedural textures, clutter, robot-coloured distractors, light, a slowly orbiting camera) and are
written in the VRS folder layout (`robotseg_jax.data.vrs_layout`). CLI: `python -m robotseg_jax.data.sim --help`.
"""

from robotseg_jax.data.sim.dataset import GenerationConfig, generate, plan_videos

__all__ = ["GenerationConfig", "generate", "plan_videos"]

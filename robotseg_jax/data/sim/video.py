"""Renders one synthetic robot video: scene, trajectory, camera and light drawn from three seeded streams."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from robotseg_jax.data.sim import camera as camera_lib
from robotseg_jax.data.sim import render, scene
from robotseg_jax.data.sim.embodiments import EMBODIMENTS, Embodiment
from robotseg_jax.data.sim.trajectory import Trajectory, sample_trajectory

FLOOR_CLEARANCE = 0.02  # m every moving link keeps above the robot's base plane (pedestal, table and floor below)


@dataclasses.dataclass(frozen=True)
class VideoSeeds:
    """Seeds of the independent random streams of one video; `numpy.random.default_rng(seed)` replays each."""

    scene: int
    trajectory: int
    camera: int


@dataclasses.dataclass(frozen=True)
class RenderedVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8
    masks: dict[str, np.ndarray]  # "arm", "gripper", "robot" -> [T, H, W] bool
    metadata: dict


def render_video(embodiment_name: str, num_frames: int, size: int, seeds: VideoSeeds) -> RenderedVideo:
    """Renders `num_frames` square frames of `size` pixels. Same arguments -> the same pixels, in any process."""
    embodiment = EMBODIMENTS[embodiment_name]
    scene_rng, trajectory_rng, camera_rng = (np.random.default_rng(s) for s in dataclasses.astuple(seeds))
    with _bullet_client() as client, tempfile.TemporaryDirectory(prefix="vrs_sim_textures_") as texture_dir:
        painter = scene.TexturePainter(client, texture_dir)
        surroundings = scene.build_surroundings(client, scene_rng, painter)
        robot = embodiment.load(client, (0.0, 0.0, surroundings["base_height"]), surroundings["robot_yaw"])
        trajectory = _sample_valid_trajectory(client, trajectory_rng, embodiment, robot, num_frames)
        box_min, box_max = _robot_bounds(client, embodiment, robot, trajectory)
        camera = camera_lib.sample_camera_path(camera_rng, box_min, box_max, num_frames)
        light = render.sample_light(camera_rng)
        # Walls go beyond the farthest camera position, so the camera always stays inside the room.
        room = float(np.abs(camera.eye[:, :2]).max()) + scene_rng.uniform(0.5, 2.0)
        scene.add_walls(client, scene_rng, painter, room)

        frames, arm, gripper = [], [], []
        for t in range(num_frames):
            embodiment.set_pose(client, robot, trajectory.arm[t], trajectory.gripper[t])
            rgb, arm_mask, gripper_mask = render.render_frame(
                client, camera, t, size, size, light, robot, embodiment.first_gripper_link
            )
            frames.append(rgb)
            arm.append(arm_mask)
            gripper.append(gripper_mask)
    arm, gripper = np.stack(arm), np.stack(gripper)
    metadata = {
        "embodiment": embodiment.name,
        "robot_model": embodiment.model_file,
        "seeds": dataclasses.asdict(seeds),
        "image_size": [size, size],
        "camera": camera.metadata(size, size),
        "light": light,
        "scene": surroundings,
        "arm_joints": list(embodiment.arm_joints),
        "joint_positions": trajectory.arm.tolist(),
        "gripper_opening": trajectory.gripper.tolist(),
    }
    return RenderedVideo(np.stack(frames), {"arm": arm, "gripper": gripper, "robot": arm | gripper}, metadata)


def _sample_valid_trajectory(client, rng, embodiment: Embodiment, robot: int, num_frames: int) -> Trajectory:
    """Waypoints must keep every moving link above the base plane and add no self-contact beyond those the model
    has at its home pose (wrist and hand collision meshes touch by design)."""
    num_links = client.getNumJoints(robot)
    base_z = client.getBasePositionAndOrientation(robot)[0][2]
    link_pairs = [(a, b) for a in range(-1, num_links) for b in range(a + 2, num_links)]

    def touching_pairs() -> set[tuple[int, int]]:
        client.performCollisionDetection()
        return {(a, b) for a, b in link_pairs if client.getClosestPoints(robot, robot, 0.0, a, b)}

    embodiment.set_pose(client, robot, np.array(embodiment.home), 1.0)
    allowed = touching_pairs()

    def is_valid(arm: np.ndarray) -> bool:
        embodiment.set_pose(client, robot, arm, 1.0)
        lowest = min(client.getAABB(robot, link)[0][2] for link in range(2, num_links))
        return lowest > base_z + FLOOR_CLEARANCE and touching_pairs() <= allowed

    lower, upper = embodiment.arm_limits(client, robot)
    home, spread = np.array(embodiment.home), np.array(embodiment.spread)
    return sample_trajectory(rng, num_frames, home, spread, lower, upper, is_valid)


def _robot_bounds(client, embodiment: Embodiment, robot: int, trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box holding every link over the whole trajectory."""
    corners = []
    for arm, gripper in zip(trajectory.arm, trajectory.gripper):
        embodiment.set_pose(client, robot, arm, gripper)
        for link in range(-1, client.getNumJoints(robot)):
            corners.extend(client.getAABB(robot, link))
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


@contextlib.contextmanager
def _bullet_client() -> Iterator[BulletClient]:
    """A private DIRECT-mode (CPU, no GUI) physics server; a fresh one per video so textures and meshes never pile up.
    pybullet prints a banner from C on connect, which is silenced at the file-descriptor level."""
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            client = BulletClient(connection_mode=pybullet.DIRECT)
    finally:
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    try:
        client.setAdditionalSearchPath(pybullet_data.getDataPath())
        yield client
    finally:
        client.disconnect()

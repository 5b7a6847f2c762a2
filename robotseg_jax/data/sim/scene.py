"""Everything around the robot: textured floor, pedestal, table, clutter, robot-coloured distractors and walls.

The robot stands at the origin on a pedestal whose top is at `base_height`; the table top and the floor lie at or
below that height, so "no link below the base" also keeps the arm out of the furniture.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from pybullet_utils.bullet_client import BulletClient

from robotseg_jax.data.sim.textures import random_texture

# (model in pybullet_data, scale range) sized to 5-20 cm objects on a table.
CLUTTER = (
    ("cube_small.urdf", (0.8, 2.5)),
    ("duck_vhacd.urdf", (0.8, 1.5)),
    ("lego/lego.urdf", (1.5, 3.0)),
    ("tray/traybox.urdf", (0.4, 0.7)),
    ("objects/mug.urdf", (0.8, 1.3)),
    ("sphere_small.urdf", (0.8, 2.0)),
    ("teddy_vhacd.urdf", (1.0, 2.0)),
    ("jenga/jenga.urdf", (0.8, 1.5)),
    ("domino/domino.urdf", (1.5, 3.0)),
    ("soccerball.urdf", (0.1, 0.2)),
    ("random_urdfs/{index:03d}/{index:03d}.urdf", (0.8, 1.5)),
)
NUM_RANDOM_URDFS = 1000
# Colours of real arms (white, light grey, KUKA orange, light blue, dark grey): distractors in these colours make
# "robot-coloured" alone a wrong cue for the segmenter.
ROBOT_COLORS = np.array([[0.95, 0.95, 0.95], [0.75, 0.76, 0.78], [1.0, 0.42, 0.04], [0.5, 0.7, 1.0], [0.2, 0.2, 0.2]])
WALL_HEIGHT = 4.0


class TexturePainter:
    """Gives bodies random procedural textures (written as PNGs into `folder`, which pybullet loads) or colours."""

    def __init__(self, client: BulletClient, folder: str):
        self._client, self._folder, self._count = client, folder, 0

    def paint(self, rng: np.random.Generator, body: int, texture_probability: float = 0.7) -> None:
        if rng.random() < texture_probability:
            path = os.path.join(self._folder, f"texture_{self._count:03d}.png")
            self._count += 1
            Image.fromarray(random_texture(rng)).save(path, compress_level=1)  # a throwaway file: speed over size
            texture = self._client.loadTexture(path)
            self._client.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1])
        else:
            self._client.changeVisualShape(body, -1, rgbaColor=[*rng.uniform(0.1, 1.0, 3), 1])


def build_surroundings(client: BulletClient, rng: np.random.Generator, painter: TexturePainter) -> dict:
    """Floor, pedestal, maybe a table, clutter and distractors. Returns metadata, including the robot's base pose."""
    painter.paint(rng, client.loadURDF("plane.urdf"), texture_probability=0.9)
    base_height = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.2, 0.9))
    if base_height > 0:
        half = rng.uniform(0.12, 0.25)
        painter.paint(rng, _box(client, [half, half, base_height / 2], [0, 0, base_height / 2]))
    robot_yaw = float(rng.uniform(-np.pi, np.pi))

    table = (
        _add_table(client, rng, painter, base_height, robot_yaw) if base_height >= 0.4 and rng.random() < 0.8 else None
    )
    clutter = [_add_clutter(client, rng, table) for _ in range(rng.integers(2, 9))]
    num_distractors = int(rng.integers(0, 4))
    for _ in range(num_distractors):
        _add_distractor(client, rng, table)
    return {
        "base_height": base_height,
        "robot_yaw": robot_yaw,
        "table": table,
        "clutter": clutter,
        "num_distractors": num_distractors,
    }


def add_walls(client: BulletClient, rng: np.random.Generator, painter: TexturePainter, half_size: float) -> None:
    """Four textured walls of a square room around the origin, so the background is never the renderer's white."""
    for angle in np.arange(4) * np.pi / 2:
        center = [half_size * np.cos(angle), half_size * np.sin(angle), WALL_HEIGHT / 2]
        orientation = client.getQuaternionFromEuler([0, 0, angle])
        painter.paint(rng, _box(client, [0.05, half_size, WALL_HEIGHT / 2], center, orientation), 0.8)


def _add_table(client, rng, painter, base_height, robot_yaw) -> dict:
    """A table in front of the robot, its top slightly below the robot's base."""
    top = base_height - rng.uniform(0.0, 0.05)
    length, width, thickness, leg = rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.2), 0.04, 0.03
    legs = [
        [sx * (length / 2 - leg), sy * (width / 2 - leg), (top - thickness) / 2] for sx in (-1, 1) for sy in (-1, 1)
    ]
    shape = client.createVisualShapeArray(
        [client.GEOM_BOX] * 5,
        halfExtents=[[length / 2, width / 2, thickness / 2]] + [[leg, leg, (top - thickness) / 2]] * 4,
        visualFramePositions=[[0, 0, top - thickness / 2]] + legs,
    )
    offset = rng.uniform(-0.3, 0.3)
    distance = 0.3 + length / 2  # clears the widest pedestal
    center = [
        distance * np.cos(robot_yaw) - offset * np.sin(robot_yaw),
        distance * np.sin(robot_yaw) + offset * np.cos(robot_yaw),
        0.0,
    ]
    orientation = client.getQuaternionFromEuler([0, 0, robot_yaw])
    painter.paint(
        rng, client.createMultiBody(baseVisualShapeIndex=shape, basePosition=center, baseOrientation=orientation)
    )
    return {"center": center, "yaw": robot_yaw, "length": length, "width": width, "top": top}


def _add_clutter(client, rng, table) -> str:
    model, scale_range = CLUTTER[rng.integers(len(CLUTTER))]
    model = model.format(index=int(rng.integers(NUM_RANDOM_URDFS)))
    body = client.loadURDF(model, globalScaling=float(rng.uniform(*scale_range)))
    if rng.random() < 0.5:
        client.changeVisualShape(body, -1, rgbaColor=[*rng.uniform(0, 1, 3), 1])
    _rest_on_support(client, rng, body, table)
    return model


def _add_distractor(client, rng, table) -> None:
    """A cylinder, capsule or box of the size of a robot link, in a robot colour."""
    kind = rng.integers(3)
    radius, length = rng.uniform(0.03, 0.08), rng.uniform(0.1, 0.4)
    color = [*ROBOT_COLORS[rng.integers(len(ROBOT_COLORS))], 1]
    if kind == 0:
        visual = client.createVisualShape(client.GEOM_CYLINDER, radius=radius, length=length, rgbaColor=color)
        collision = client.createCollisionShape(client.GEOM_CYLINDER, radius=radius, height=length)
    elif kind == 1:
        visual = client.createVisualShape(client.GEOM_CAPSULE, radius=radius, length=length, rgbaColor=color)
        collision = client.createCollisionShape(client.GEOM_CAPSULE, radius=radius, height=length)
    else:
        half = [radius, radius, length / 2]
        visual = client.createVisualShape(client.GEOM_BOX, halfExtents=half, rgbaColor=color)
        collision = client.createCollisionShape(client.GEOM_BOX, halfExtents=half)
    lying = rng.random() < 0.5
    orientation = client.getQuaternionFromEuler([np.pi / 2 if lying else 0, 0, rng.uniform(0, 2 * np.pi)])
    body = client.createMultiBody(0, collision, visual, baseOrientation=orientation)
    _rest_on_support(client, rng, body, table)


def _rest_on_support(client, rng, body, table) -> None:
    """Moves the body (keeping its orientation's pitch/roll, random yaw) onto the table top or the floor around the
    robot, its lowest point touching the surface."""
    if table is not None and rng.random() < 0.7:
        along, across = rng.uniform(-0.45, 0.45) * table["length"], rng.uniform(-0.45, 0.45) * table["width"]
        yaw = table["yaw"]
        xy = np.array(table["center"][:2]) + [
            along * np.cos(yaw) - across * np.sin(yaw),
            along * np.sin(yaw) + across * np.cos(yaw),
        ]
        surface = table["top"]
    else:
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 1.5)
        xy, surface = radius * np.array([np.cos(angle), np.sin(angle)]), 0.0
    _, orientation = client.getBasePositionAndOrientation(body)
    roll, pitch, _ = client.getEulerFromQuaternion(orientation)
    orientation = client.getQuaternionFromEuler([roll, pitch, rng.uniform(0, 2 * np.pi)])
    client.resetBasePositionAndOrientation(body, [xy[0], xy[1], 0.0], orientation)
    lowest = client.getAABB(body)[0][2]
    client.resetBasePositionAndOrientation(body, [xy[0], xy[1], surface - lowest], orientation)


def _box(client, half_extents, position, orientation=(0, 0, 0, 1)) -> int:
    shape = client.createVisualShape(client.GEOM_BOX, halfExtents=half_extents)
    return client.createMultiBody(baseVisualShapeIndex=shape, basePosition=position, baseOrientation=orientation)

"""One frame through pybullet's CPU TinyRenderer: the RGB image plus exact arm and gripper masks."""

from __future__ import annotations

import numpy as np
from pybullet_utils.bullet_client import BulletClient

from robotseg_jax.data.sim.camera import CameraPath

_OBJECT_BITS = (1 << 24) - 1  # the segmentation buffer packs objectUniqueId + ((linkIndex + 1) << 24)


def sample_light(rng: np.random.Generator) -> dict:
    """Random light direction (from above), colour tint, material coefficients and shadows, as getCameraImage
    keyword arguments."""
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.4)
    return {
        "lightDirection": [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)],
        "lightColor": list(rng.uniform(0.75, 1.0, 3)),
        "lightDistance": 10.0,
        "lightAmbientCoeff": rng.uniform(0.3, 0.7),
        "lightDiffuseCoeff": rng.uniform(0.3, 0.7),
        "lightSpecularCoeff": rng.uniform(0.0, 0.3),
        "shadow": int(rng.random() < 0.5),
    }


def render_frame(
    client: BulletClient,
    camera: CameraPath,
    frame: int,
    width: int,
    height: int,
    light: dict,
    robot: int,
    first_gripper_link: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns rgb uint8 [H,W,3], arm bool [H,W], gripper bool [H,W] (disjoint; their union is the robot)."""
    _, _, rgba, _, segmentation = client.getCameraImage(
        width,
        height,
        camera.view_matrix(frame),
        camera.projection_matrix(width, height),
        renderer=client.ER_TINY_RENDERER,
        flags=client.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX,
        **light,
    )
    rgb = np.reshape(rgba, (height, width, 4))[..., :3].astype(np.uint8)
    segmentation = np.reshape(segmentation, (height, width))
    robot_mask = (segmentation >= 0) & ((segmentation & _OBJECT_BITS) == robot)
    link = (segmentation >> 24) - 1
    gripper = robot_mask & (link >= first_gripper_link)
    return rgb, robot_mask & ~gripper, gripper

"""A slowly moving camera that orbits the robot and keeps it in view."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pybullet

NEAR, FAR = 0.05, 30.0
UP = (0.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class CameraPath:
    eye: np.ndarray  # [T, 3] world positions
    target: np.ndarray  # [T, 3] points looked at
    fov_deg: float  # vertical field of view

    def view_matrix(self, frame: int) -> tuple[float, ...]:
        return pybullet.computeViewMatrix(self.eye[frame].tolist(), self.target[frame].tolist(), UP)

    def projection_matrix(self, width: int, height: int) -> tuple[float, ...]:
        return pybullet.computeProjectionMatrixFOV(self.fov_deg, width / height, NEAR, FAR)

    def metadata(self, width: int, height: int) -> dict:
        """Pinhole intrinsics (pixels, OpenCV convention) and the per-frame eye/target/up (OpenGL look-at)."""
        focal = 0.5 * height / math.tan(math.radians(self.fov_deg) / 2)
        return {
            "fov_deg": self.fov_deg,
            "near": NEAR,
            "far": FAR,
            "intrinsics": {"fx": focal, "fy": focal, "cx": width / 2, "cy": height / 2},
            "up": list(UP),
            "eye": self.eye.tolist(),
            "target": self.target.tolist(),
        }


def sample_camera_path(
    rng: np.random.Generator, box_min: np.ndarray, box_max: np.ndarray, num_frames: int
) -> CameraPath:
    """Orbits the box's centre at a random yaw, elevation and distance. The distance would fit the box's bounding
    sphere into the view; the factor < 1 on it frames the robot tighter (an arm fills far less than its bounding
    sphere) and lets some videos crop the robot the way real close-ups do.
    Yaw, elevation, distance and target drift linearly, a little per frame."""
    center = (np.asarray(box_min) + np.asarray(box_max)) / 2
    radius = float(np.linalg.norm(np.asarray(box_max) - np.asarray(box_min))) / 2
    fov_deg = float(rng.uniform(40, 65))
    distance0 = radius / math.sin(math.radians(fov_deg) / 2) * rng.uniform(0.55, 0.95)
    frames = np.arange(num_frames)[:, None]

    yaw = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.015, 0.015) * frames
    elevation = np.clip(np.radians(rng.uniform(10, 50)) + rng.uniform(-0.004, 0.004) * frames, 0.09, 1.3)
    distance = distance0 * (1 + rng.uniform(-0.004, 0.004) * frames)
    target = center + rng.normal(0, 0.08 * radius, 3) + rng.normal(0, 0.003, 3) * frames

    direction = np.concatenate(
        [np.cos(elevation) * np.cos(yaw), np.cos(elevation) * np.sin(yaw), np.sin(elevation)], axis=1
    )
    return CameraPath(eye=target + distance * direction, target=target, fov_deg=fov_deg)

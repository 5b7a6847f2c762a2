"""Smooth random joint trajectories: random waypoints near a home pose, eased in and out between them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

SEGMENT_FRAMES = (5, 13)  # frames between two waypoints, drawn uniformly in [low, high)
MAX_WAYPOINT_TRIES = 50


@dataclasses.dataclass(frozen=True)
class Trajectory:
    arm: np.ndarray  # [T, J] joint angles (rad)
    gripper: np.ndarray  # [T] opening in [0 closed, 1 open]


def sample_trajectory(
    rng: np.random.Generator,
    num_frames: int,
    home: np.ndarray,
    spread: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    is_valid: Callable[[np.ndarray], bool],
) -> Trajectory:
    """Waypoints are `home + U(-spread, spread)` clipped to the limits and redrawn until `is_valid` accepts them
    (e.g. no floor or self collision); consecutive waypoints are joined with a smoothstep, so joints start and stop
    smoothly. The gripper gets its own waypoints, fully open or closed, on the same schedule."""
    times = [0]
    while len(times) < 2 or times[-1] < num_frames - 1:
        times.append(times[-1] + int(rng.integers(*SEGMENT_FRAMES)))
    arm_waypoints = np.stack([_valid_waypoint(rng, home, spread, lower, upper, is_valid) for _ in times])
    gripper_waypoints = (rng.random(len(times)) < 0.5).astype(np.float64)
    return Trajectory(
        arm=_ease_between(arm_waypoints, times, num_frames),
        gripper=_ease_between(gripper_waypoints[:, None], times, num_frames)[:, 0],
    )


def _valid_waypoint(rng, home, spread, lower, upper, is_valid) -> np.ndarray:
    for _ in range(MAX_WAYPOINT_TRIES):
        waypoint = np.clip(home + rng.uniform(-1, 1, home.shape) * spread, lower, upper)
        if is_valid(waypoint):
            return waypoint
    return np.asarray(home, np.float64)  # the home pose is valid by construction of the embodiment table


def _ease_between(waypoints: np.ndarray, times: list[int], num_frames: int) -> np.ndarray:
    frames = np.arange(num_frames)
    segment = np.clip(np.searchsorted(times, frames, side="right") - 1, 0, len(times) - 2)
    start, end = np.asarray(times)[segment], np.asarray(times)[segment + 1]
    u = (frames - start) / (end - start)
    ease = (u * u * (3 - 2 * u))[:, None]
    return waypoints[segment] * (1 - ease) + waypoints[segment + 1] * ease

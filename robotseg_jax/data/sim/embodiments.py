"""The robots VRS-Sim renders, all shipped in `pybullet_data`, and how to pose them.

Link indices follow pybullet's numbering of each model (link i is the child of joint i, the base is -1). Every link
from `first_gripper_link` on belongs to the gripper (hand, fingers, knuckles); the links before it are the arm.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pybullet_utils.bullet_client import BulletClient


@dataclasses.dataclass(frozen=True)
class Embodiment:
    name: str
    model_file: str  # relative to pybullet_data; .urdf or .sdf
    arm_joints: tuple[int, ...]
    home: tuple[float, ...]  # a natural working pose the random waypoints stay near
    spread: tuple[float, ...]  # max |waypoint - home| per arm joint (rad), before clipping to the joint limits
    # (joint index, value when closed, value when open); mimic joints are listed too since pybullet ignores <mimic>.
    gripper_joints: tuple[tuple[int, float, float], ...]
    first_gripper_link: int

    def load(self, client: BulletClient, position: tuple[float, float, float], yaw: float) -> int:
        orientation = client.getQuaternionFromEuler((0.0, 0.0, yaw))
        if self.model_file.endswith(".sdf"):
            (body,) = client.loadSDF(self.model_file)
            client.resetBasePositionAndOrientation(body, position, orientation)
            return body
        return client.loadURDF(self.model_file, position, orientation, useFixedBase=True)

    def set_pose(self, client: BulletClient, body: int, arm: np.ndarray, gripper_opening: float) -> None:
        """Puts the arm joints at `arm` (rad) and the gripper at `gripper_opening` in [0 closed, 1 open]."""
        for joint, value in zip(self.arm_joints, arm):
            client.resetJointState(body, joint, float(value))
        for joint, closed, opened in self.gripper_joints:
            client.resetJointState(body, joint, closed + gripper_opening * (opened - closed))

    def arm_limits(self, client: BulletClient, body: int) -> tuple[np.ndarray, np.ndarray]:
        info = [client.getJointInfo(body, joint) for joint in self.arm_joints]
        return np.array([i[8] for i in info]), np.array([i[9] for i in info])


EMBODIMENTS = {
    e.name: e
    for e in (
        Embodiment(
            name="panda",
            model_file="franka_panda/panda.urdf",
            arm_joints=(0, 1, 2, 3, 4, 5, 6),
            home=(0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8),
            spread=(1.6, 0.8, 0.8, 0.7, 1.2, 0.7, 1.5),
            gripper_joints=((9, 0.0, 0.04), (10, 0.0, 0.04)),
            first_gripper_link=8,  # panda_hand; link 7 (panda_link8) is an invisible flange
        ),
        Embodiment(
            name="kuka_iiwa",
            model_file="kuka_iiwa/kuka_with_gripper2.sdf",  # iiwa with the WSG50 gripper already attached
            arm_joints=(0, 1, 2, 3, 4, 5, 6),
            home=(0.0, 0.5, 0.0, -1.4, 0.0, 1.0, 0.0),
            spread=(1.6, 0.7, 0.8, 0.7, 1.2, 0.7, 1.5),
            # The finger joints have no limits in the model; +-0.3 rad is the opening pybullet's KukaGymEnv uses.
            gripper_joints=((8, 0.0, -0.3), (11, 0.0, 0.3), (10, 0.0, 0.0), (13, 0.0, 0.0)),
            first_gripper_link=7,  # the WSG50 base_link
        ),
        Embodiment(
            name="xarm6",
            model_file="xarm/xarm6_with_gripper.urdf",
            arm_joints=(1, 2, 3, 4, 5, 6),  # joint 0 fixes link_base to the model's "world" link
            home=(0.0, -0.3, -0.8, 0.0, 1.0, 0.0),
            spread=(1.6, 0.7, 0.7, 1.2, 0.8, 1.5),
            gripper_joints=tuple((joint, 0.85, 0.0) for joint in range(8, 14)),  # drive_joint and its 5 mimics
            first_gripper_link=7,  # xarm_gripper_base_link
        ),
    )
}

"""The arm: a WidowX-250-6DoF-class arm with a parallel-jaw gripper, controlled in end-effector space.

The gripper always points straight down (as in COG's scenes), so the commanded pose has four degrees of freedom:
tool-centre-point (TCP) position and yaw. For that family of poses the six joint angles have a closed form (waist
towards the target, a planar two-link solution for shoulder and elbow, the wrist pitched to keep the gripper
vertical, forearm roll zero, wrist rotate for yaw), which is exact and costs microseconds, unlike pybullet's
iterative IK.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pybullet_utils.bullet_client
from numpy.typing import NDArray

ASSET_DIR = Path(__file__).parent / "assets"

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
FINGER_JOINTS = ("left_finger", "right_finger")

# Kinematic constants of arm_wx250s_simple.urdf (metres).
SHOULDER_HEIGHT = 0.072 + 0.039
UPPER_ARM = (0.05, 0.25)  # shoulder -> elbow at zero angles, (forward, up)
FOREARM = 0.175 + 0.075  # elbow -> wrist_angle axis
TOOL = 0.065 + 0.085  # wrist_angle axis -> TCP along the gripper
FINGER_TRAVEL = 0.036  # each finger's stroke; the opening between the fingers is twice the joint position
FINGERTIP_PAST_TCP = 0.010  # the finger boxes end 0.095 along the gripper, the TCP sits at 0.085


class BulletClient(pybullet_utils.bullet_client.BulletClient):  # type: ignore[misc]  # untyped base
    """pybullet bound to one physics client, so several environments in a process never share state.

    The base class builds a new `functools.partial` on every attribute access (tens of thousands per second
    here); this one keeps the bound function after first use.
    """

    def __getattr__(self, name: str) -> Any:
        attribute = super().__getattr__(name)
        self.__dict__[name] = attribute
        return attribute


_L1 = math.hypot(*UPPER_ARM)
_ALPHA = math.atan2(UPPER_ARM[1], UPPER_ARM[0])


def topdown_ik(pos: NDArray[np.float64], yaw: float) -> NDArray[np.float64]:
    """Joint angles (6,) that put the TCP at `pos` (base frame) with the gripper vertical and rotated by `yaw`.

    Yaw 0 means the fingers close along the world y axis. Targets out of reach are pulled onto the reachable
    sphere; callers keep targets inside the workspace box, which lies well within reach.
    """
    x, y, z = float(pos[0]), float(pos[1]), float(pos[2])
    waist = math.atan2(y, x)
    # Wrist-angle axis sits straight above the TCP; solve the shoulder-elbow-wrist triangle in the arm's plane.
    dx = math.hypot(x, y)
    dz = z + TOOL - SHOULDER_HEIGHT
    dist = min(math.hypot(dx, dz), _L1 + FOREARM - 1e-6)
    cos_q = (dist * dist - _L1 * _L1 - FOREARM * FOREARM) / (2.0 * _L1 * FOREARM)
    q = -math.acos(max(-1.0, min(1.0, cos_q)))  # elbow up: forearm bends down relative to the upper arm
    upper = math.atan2(dz, dx) - math.atan2(FOREARM * math.sin(q), _L1 + FOREARM * math.cos(q))
    forearm = upper + q  # absolute angles in the arm's plane, from horizontal, positive up
    # A positive rotation about +y tilts the link downwards, hence the signs.
    shoulder = _ALPHA - upper
    elbow = -forearm - shoulder
    wrist_angle = math.pi / 2 - shoulder - elbow
    wrist_rotate = waist - yaw
    return np.array([waist, shoulder, elbow, 0.0, wrist_angle, wrist_rotate])


@dataclass(frozen=True)
class ArmConfig:
    """Motor and workspace settings of the arm."""

    workspace_low: tuple[float, float, float] = (0.13, -0.2, 0.015)
    """Lower corner of the box the TCP is kept in (metres, base frame)."""
    workspace_high: tuple[float, float, float] = (0.4, 0.2, 0.2)
    """Upper corner of that box (all of the box is within reach with the gripper vertical)."""
    yaw_limit: float = math.pi / 2
    """|yaw| bound in radians; the gripper is symmetric, so half a turn covers every grasp."""
    max_target_lag: float = 0.03
    """How far (m) the commanded TCP may run ahead of the real one, so a blocked arm does not wind up."""
    joint_force: float = 60.0
    """Maximum motor torque of the arm joints (N m)."""
    finger_force: float = 25.0
    """Maximum force of each finger motor (N)."""
    position_gain: float = 0.3
    """pybullet POSITION_CONTROL position gain of the arm joints."""


class Arm:
    """The arm in one physics client: loads once, resets joint states, applies end-effector commands."""

    def __init__(self, client: BulletClient, config: ArmConfig) -> None:
        self.client = client
        self.config = config
        self.body = client.loadURDF(str(ASSET_DIR / "arm_wx250s_simple.urdf"), useFixedBase=True)
        index = {client.getJointInfo(self.body, j)[1].decode(): j for j in range(client.getNumJoints(self.body))}
        self.arm_joints = [index[name] for name in ARM_JOINTS]
        self.finger_joints = [index[name] for name in FINGER_JOINTS]
        self._zeros, self._ones = [0.0] * 6, [1.0] * 6
        self._arm_forces, self._arm_gains = [config.joint_force] * 6, [config.position_gain] * 6
        self._finger_forces = [config.finger_force] * 2
        self.tcp_link = index["tcp_joint"]
        self.low = np.array(config.workspace_low)
        self.high = np.array(config.workspace_high)
        self.target_pos = np.zeros(3)
        self.target_yaw = 0.0
        self._start_pos = self.target_pos
        self._start_yaw = 0.0
        self.gripper_closed = False
        for link in self.finger_joints:
            client.changeDynamics(self.body, link, lateralFriction=1.5, spinningFriction=0.002)

    def reset(
        self, pos: NDArray[np.float64], yaw: float, gripper_closed: bool, finger_gap: float | None = None
    ) -> None:
        """Teleport the arm to a TCP pose (no dynamics) and hold it there."""
        self.target_pos = np.clip(np.asarray(pos, dtype=np.float64), self.low, self.high)
        self.target_yaw = float(np.clip(yaw, -self.config.yaw_limit, self.config.yaw_limit))
        self.gripper_closed = gripper_closed
        self._start_pos, self._start_yaw = self.target_pos, self.target_yaw
        q = topdown_ik(self.target_pos, self.target_yaw)
        for joint, angle in zip(self.arm_joints, q, strict=True):
            self.client.resetJointState(self.body, joint, float(angle), 0.0)
        gap = finger_gap if finger_gap is not None else (0.0 if gripper_closed else 2 * FINGER_TRAVEL)
        for joint in self.finger_joints:
            self.client.resetJointState(self.body, joint, gap / 2, 0.0)
        self._drive_arm(q)
        self._drive_fingers()

    def command(
        self, delta_pos: NDArray[np.float64], delta_yaw: float, gripper: float, tcp: NDArray[np.float64]
    ) -> None:
        """Move the commanded TCP by `delta_pos` (m) and yaw by `delta_yaw` (rad); gripper >= 0.5 closes, <= -0.5 opens.

        `tcp` is the current TCP position; the command may run at most `max_target_lag` ahead of it. Between the
        gripper thresholds the gripper keeps its state (hysteresis, as on the real robot's gripper bridge).
        """
        target = np.clip(self.target_pos + delta_pos, self.low, self.high)
        lag = self.config.max_target_lag
        self._start_pos, self._start_yaw = self.target_pos, self.target_yaw
        self.target_pos = np.clip(target, tcp - lag, tcp + lag)
        self.target_yaw = float(np.clip(self.target_yaw + delta_yaw, -self.config.yaw_limit, self.config.yaw_limit))
        if gripper >= 0.5:
            self.gripper_closed = True
        elif gripper <= -0.5:
            self.gripper_closed = False
        self._drive_fingers()

    def track(self, fraction: float) -> None:
        """Drive the arm's motors to the point `fraction` of the way along the current command.

        Called several times per control step, so the TCP moves at a steady velocity (as under MoveIt Servo on the
        robot) rather than jumping to each new target and stopping: the jumps' peak accelerations made objects slide
        in a drawer being pulled.
        """
        pos = self._start_pos + fraction * (self.target_pos - self._start_pos)
        yaw = self._start_yaw + fraction * (self.target_yaw - self._start_yaw)
        self._drive_arm(topdown_ik(pos, yaw))

    def _drive_arm(self, q: NDArray[np.float64]) -> None:
        self.client.setJointMotorControlArray(
            self.body,
            self.arm_joints,
            self.client.POSITION_CONTROL,
            targetPositions=q.tolist(),
            targetVelocities=self._zeros,
            forces=self._arm_forces,
            positionGains=self._arm_gains,
            velocityGains=self._ones,
        )

    def _drive_fingers(self) -> None:
        target = 0.0 if self.gripper_closed else FINGER_TRAVEL
        self.client.setJointMotorControlArray(
            self.body,
            self.finger_joints,
            self.client.POSITION_CONTROL,
            targetPositions=[target, target],
            forces=self._finger_forces,
            positionGains=[0.2, 0.2],
        )

    def tcp_pose(self) -> tuple[NDArray[np.float64], float]:
        """TCP position and yaw of the finger axis about +z (0 when the fingers close along world y)."""
        state = self.client.getLinkState(self.body, self.tcp_link, computeForwardKinematics=True)
        x, y, z, w = state[5]
        # Second column of the rotation matrix (the finger axis), from the quaternion.
        axis_x, axis_y = 2.0 * (x * y - w * z), 1.0 - 2.0 * (x * x + z * z)
        return np.array(state[4]), math.atan2(-axis_x, axis_y)

    def finger_gap(self) -> float:
        """Opening between the fingers' inner faces (m), clipped at 0 (closed on nothing, the motors push the fingers
        a few millimetres past their joint limit)."""
        states = self.client.getJointStates(self.body, self.finger_joints)
        return max(0.0, float(states[0][0] + states[1][0]))

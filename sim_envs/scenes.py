"""The two scenes of COG and Lee et al.: a cabinet with two drawers, and pick-and-place into a tray.

A scene builds its bodies into an empty physics world, places them for an initial condition, and answers
questions about itself (task success, the privileged state). The environment owns the client, the arm and the
camera; scenes never step the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from sim_envs.robot import ASSET_DIR, FINGERTIP_PAST_TCP, Arm, BulletClient

PARKED = (-0.3, -0.5)
"""Where an object that is not part of the episode is put (behind the camera), and the position reported for it."""
SPAWN_SPOTS = ((-3.0, -3.0, 3.0), (-3.0, 3.0, 3.0))
"""Where free bodies are created, apart from each other and from the scene, before `reset` places them."""


@dataclass(frozen=True)
class CameraConfig:
    """A fixed pinhole camera looking at the workspace."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float = 50.0


@dataclass
class SceneState:
    """Everything a scripted skill may read: the privileged, noiseless state of the scene (metres, radians)."""

    tcp: NDArray[np.float64]
    yaw: float
    finger_gap: float
    gripper_closed: bool
    object_pos: NDArray[np.float64]
    object_quat: tuple[float, float, float, float]
    object_yaw: float
    object_held: bool
    bottom_drawer: float = 0.0
    top_drawer: float = 0.0
    blocker_pos: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    blocker_held: bool = False
    tray_pos: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))


class Scene(Protocol):
    """What the environment needs from a scene."""

    name: str
    initial_conditions: tuple[str, ...]
    horizons: dict[str, int]
    camera: CameraConfig
    privileged_names: tuple[str, ...]
    task: str
    tcp_floor: float
    """Lowest TCP height (m) the arm is commanded to: there the fingertips just reach the lowest surface the
    gripper works on (v1 of the drawer scene; see `DrawerScene.tcp_floor`)."""

    def build(self, client: BulletClient) -> None: ...

    def reset(self, client: BulletClient, arm: Arm, rng: np.random.Generator, condition: str) -> None: ...

    def state(self, client: BulletClient, arm: Arm) -> SceneState: ...

    def success(self, state: SceneState) -> bool: ...

    def privileged(self, state: SceneState) -> NDArray[np.float64]: ...

    def milestones(self, state: SceneState, condition: str) -> dict[str, bool]:
        """The sub-goals on the way to success from `condition`, in task order, each true while it holds."""
        ...


def _box(
    client: BulletClient,
    half_extents: tuple[float, float, float],
    rgba: tuple[float, float, float, float],
    mass: float,
    position: tuple[float, float, float],
    friction: float = 1.0,
) -> int:
    col = client.createCollisionShape(client.GEOM_BOX, halfExtents=half_extents)
    vis = client.createVisualShape(client.GEOM_BOX, halfExtents=half_extents, rgbaColor=rgba)
    body = client.createMultiBody(mass, col, vis, basePosition=position)
    # No rolling or spinning friction: each adds constraint rows to every contact of the body, and together they
    # cost a fifth of the physics step (measured) without changing any skill's success. The fingers keep spinning
    # friction (robot.py), which is what holds an off-centre object from twisting in a pinch.
    client.changeDynamics(body, -1, lateralFriction=friction)
    return int(body)


def _build_table(client: BulletClient) -> int:
    """A 1.2 m square table whose top is the plane z = 0.

    It is transparent (without any visual shape pybullet would draw its collision box), and the camera paints the
    table colour wherever no body was drawn: a frame-filling plane cost TinyRenderer as much as everything else
    together (measured), so this halves the render time.
    """
    table = _box(client, (0.6, 0.6, 0.025), (0.55, 0.55, 0.55, 0.0), mass=0.0, position=(0.2, 0.0, -0.025))
    return table


def _yaw_of(quat: tuple[float, ...]) -> float:
    x, y, z, w = quat
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _quat_yaw(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def _held(client: BulletClient, arm: Arm, body: int) -> bool:
    """Both fingers pinch the body: each touches it with a roughly horizontal contact normal.

    Closed fingers pressing down on top of an object touch it too, with vertical normals; that is not a grasp.
    """
    pinching = {
        contact[3]  # the arm's link index
        for contact in client.getContactPoints(arm.body, body)
        if abs(contact[7][2]) < 0.7  # z of the contact normal
    }
    return all(finger in pinching for finger in arm.finger_joints)


def _pose(client: BulletClient, body: int) -> tuple[NDArray[np.float64], tuple[float, ...]]:
    pos, quat = client.getBasePositionAndOrientation(body)
    return np.array(pos), quat


class DrawerScene:
    """Table, cabinet with a top and a bottom drawer, an object in the bottom drawer, optionally a blocking object.

    Initial conditions: `open` (bottom drawer open), `closed`, `blocked` (top drawer open above the bottom
    drawer's handle), `blocked_by_object` (an object standing in the gap behind the bottom drawer's handle), and
    `open_blocker_aside` and `closed_blocker_aside`: the blocking object stands on the table where `remove_blocker`
    sets it down, so data recorded after its removal and data starting from these conditions show the same scenes
    (skill stitching needs that overlap). `ajar`: the bottom drawer part-way out (`AJAR`, around `OPEN_THRESHOLD`),
    where a drawer ends up that an arm backing off its handle pushed back in; openings from it show the data how to
    recover. `closed_after_removal`: as `closed_blocker_aside`, with the arm where `remove_blocker` leaves it (TCP
    above the set-down blocker, yawed as the removal's noise leaves it, gripper open) instead of the usual start box:
    openings from it continue a removal in the arm's pose too (`AFTER_REMOVAL_TCP`). Task: grasp the object and lift
    it out of the drawer. In the other
    conditions the blocker leaves the scene and the privileged state reports it at the parked position `PARKED`.
    """

    name = "drawer"
    task = "grasp the object from the bottom drawer and hold it above the drawer"
    initial_conditions: tuple[str, ...] = (
        "open", "closed", "blocked", "blocked_by_object", "open_blocker_aside", "closed_blocker_aside", "ajar",
        "closed_after_removal",
    )  # fmt: skip
    horizons: dict[str, int] = {
        "open": 50, "closed": 50, "blocked": 80, "blocked_by_object": 80,
        "open_blocker_aside": 50, "closed_blocker_aside": 50, "ajar": 50, "closed_after_removal": 50,
    }  # fmt: skip
    camera = CameraConfig(eye=(0.1, -0.3, 0.34), target=(0.3, 0.05, 0.05), fov_deg=45.0)
    privileged_names: tuple[str, ...] = (
        "object_x", "object_y", "object_z", "object_qx", "object_qy", "object_qz", "object_qw",
        "bottom_drawer", "top_drawer", "blocker_x", "blocker_y", "blocker_z",
    )  # fmt: skip

    # Layout (metres, world frame). The cabinet's front face is at x = FRONT, its centre line at y = CENTER_Y.
    FRONT = 0.36
    CENTER_Y = 0.08
    BOTTOM_HANDLE_Y = CENTER_Y - 0.05
    TOP_HANDLE_Y = CENTER_Y + 0.05
    HANDLE_Z = 0.045  # bottom drawer handle height; the top drawer's is 0.069 higher
    TOP_HANDLE_Z = 0.114
    DRAWER_TRAVEL = 0.14
    BOTTOM_JOINT, TOP_JOINT = 0, 1  # joint (and link) indices in cabinet.urdf
    DRAWER_TOP_Z = 0.072  # top edge of the bottom drawer's walls
    DRAWER_FLOOR_Z = 0.017  # the bottom drawer's floor (the object rests on it)
    OPEN_THRESHOLD = 0.11  # the bottom drawer counts as open (object reachable) beyond this
    AJAR = (0.09, 0.12)  # the `ajar` condition's bottom drawer opening (m), drawn uniformly
    OBJECT_HALF = 0.015
    # The blocker stands in the 0.039 m gap between the bottom handle's bar and the drawer face and nearly fills the
    # 0.07 m between the handle's posts, so a closed gripper can neither reach the bar beside it nor nudge it aside;
    # it is still narrow enough for the open gripper (0.072 m) to grasp it above the posts. At 0.2 kg, a gripper
    # pressing on its top worked it loose in 5 of 30 episodes; at 0.5 kg in none (measured), and grasps still hold.
    BLOCKER_HALF = (0.014, 0.029, 0.0425)
    BLOCKER_MASS = 0.5
    # Where `remove_blocker` sets the blocker down (x, y), and the spread of the `*_blocker_aside` conditions around
    # it: the scripted removal with action noise 0.1 leaves it within about 2 cm of the spot.
    BLOCKER_ASIDE = (0.2, -0.12)
    BLOCKER_ASIDE_SPREAD = 0.02
    # Where `remove_blocker` leaves the arm: its last waypoint is above BLOCKER_ASIDE at travel height; the episode's
    # remaining steps of action noise spread the TCP and yaw. Measured on drawer-blocked_by_object-prior (medium, v1):
    # the successful removals' last TCPs lie in x 0.164-0.235, y -0.157 to -0.086, z 0.117-0.187 (5%-95%), yaw
    # within +-0.52. Outside `closed_after_removal` the arm starts in the box of `reset` (y >= -0.08, yaw 0).
    AFTER_REMOVAL_TCP = ((0.16, -0.16, 0.12), (0.24, -0.08, 0.19))
    AFTER_REMOVAL_YAW = 0.5
    BLOCKER_ASIDE_CONDITIONS = ("open_blocker_aside", "closed_blocker_aside", "closed_after_removal")
    """The conditions that stand the blocker where the removal sets it down."""
    # Fingertips stop at the bottom drawer's floor. With the arm's bound at the table's height (v0: 0.015), a policy
    # pressing down in the drawer drove them into its floor with 100-220 N (pybullet's contact forces), which no
    # WidowX's servos can, and the floor's friction on them then held the 25 N finger motors open: the fingers
    # jammed at ~60 mm beside the object (5 of seed 0's 8 failures from the closed drawer). Nothing in this scene is
    # grasped lower: objects rest on the drawer floor or, set aside, on the table with their centre higher still.
    tcp_floor = round(DRAWER_FLOOR_Z + FINGERTIP_PAST_TCP, 6)

    def build(self, client: BulletClient) -> None:
        table = _build_table(client)
        self.cabinet = client.loadURDF(
            str(ASSET_DIR / "cabinet.urdf"), basePosition=(self.FRONT, self.CENTER_Y, 0.0), useFixedBase=True
        )
        # The drawers never touch the table, though their bounding boxes overlap it in every state: skip the pair.
        for link in (-1, self.BOTTOM_JOINT, self.TOP_JOINT):
            client.setCollisionFilterPair(table, self.cabinet, -1, link, 0)
        self.bottom_joint, self.top_joint = self.BOTTOM_JOINT, self.TOP_JOINT
        self.blocker_present = False
        # Drawer slides have some friction so that drawers stay where they are left.
        for joint in (self.bottom_joint, self.top_joint):
            client.setJointMotorControl2(self.cabinet, joint, client.VELOCITY_CONTROL, targetVelocity=0, force=3.0)
            client.changeDynamics(self.cabinet, joint, lateralFriction=1.0)  # pybullet's default is 0.5
        h = self.OBJECT_HALF
        self.object = _box(client, (h, h, h), (0.9, 0.1, 0.1, 1.0), mass=0.05, position=SPAWN_SPOTS[0])
        self.blocker = _box(
            client, self.BLOCKER_HALF, (0.1, 0.3, 0.95, 1.0), mass=self.BLOCKER_MASS, position=SPAWN_SPOTS[1]
        )

    def reset(self, client: BulletClient, arm: Arm, rng: np.random.Generator, condition: str) -> None:
        bottom, top = 0.0, 0.0
        match condition:
            case "open" | "open_blocker_aside":
                bottom = rng.uniform(0.12, self.DRAWER_TRAVEL)
            case "ajar":
                bottom = rng.uniform(*self.AJAR)
            case "closed" | "closed_blocker_aside" | "closed_after_removal":
                pass
            case "blocked":
                top = rng.uniform(0.12, self.DRAWER_TRAVEL)
            case "blocked_by_object":
                pass
            case _:
                raise ValueError(f"drawer scene: unknown initial condition {condition!r}")
        client.resetJointState(self.cabinet, self.bottom_joint, bottom, 0.0)
        client.resetJointState(self.cabinet, self.top_joint, top, 0.0)
        # The object sits near the front of the bottom drawer, so it is reachable once the drawer is open.
        local_x = 0.035 + rng.uniform(-0.005, 0.005)
        obj_y, obj_z = self.CENTER_Y + rng.uniform(-0.025, 0.025), self.DRAWER_FLOOR_Z + self.OBJECT_HALF
        obj = (self.FRONT - bottom + local_x, obj_y, obj_z)
        client.resetBasePositionAndOrientation(self.object, obj, _quat_yaw(rng.uniform(-0.3, 0.3)))
        blocker_yaw = 0.0
        if condition == "blocked_by_object":
            blocker = (self.FRONT - 0.0295, self.BOTTOM_HANDLE_Y + rng.uniform(-0.004, 0.004), self.BLOCKER_HALF[2])
        elif condition in self.BLOCKER_ASIDE_CONDITIONS:
            x, y = np.asarray(self.BLOCKER_ASIDE) + rng.uniform(-1, 1, 2) * self.BLOCKER_ASIDE_SPREAD
            blocker, blocker_yaw = (float(x), float(y), self.BLOCKER_HALF[2]), float(rng.uniform(-0.3, 0.3))
        else:
            blocker = (*PARKED, self.BLOCKER_HALF[2])
        # Outside `blocked_by_object` the blocker leaves the scene: without collisions it falls away, out of view
        # behind the camera. Resting on the table it cost a fifth of every physics step (measured); making it static
        # instead (mass 0, then back) left pybullet in a state that changed later episodes, so its mass stays.
        self.blocker_present = condition == "blocked_by_object" or condition in self.BLOCKER_ASIDE_CONDITIONS
        client.setCollisionFilterGroupMask(self.blocker, -1, int(self.blocker_present), -int(self.blocker_present))
        client.resetBasePositionAndOrientation(self.blocker, blocker, _quat_yaw(blocker_yaw))
        if condition == "closed_after_removal":
            tcp = rng.uniform(*self.AFTER_REMOVAL_TCP)
            yaw = float(rng.uniform(-self.AFTER_REMOVAL_YAW, self.AFTER_REMOVAL_YAW))
        else:  # the draws of every other condition are as they were, so their collected data replays exactly
            tcp, yaw = rng.uniform((0.18, -0.08, 0.14), (0.26, 0.04, 0.2)), 0.0
        arm.reset(tcp, yaw, gripper_closed=False)

    def state(self, client: BulletClient, arm: Arm) -> SceneState:
        obj, quat = _pose(client, self.object)
        blocker = _pose(client, self.blocker)[0] if self.blocker_present else np.array([*PARKED, self.BLOCKER_HALF[2]])
        tcp, yaw = arm.tcp_pose()
        return SceneState(
            tcp=tcp,
            yaw=yaw,
            finger_gap=arm.finger_gap(),
            gripper_closed=arm.gripper_closed,
            object_pos=obj,
            object_quat=(quat[0], quat[1], quat[2], quat[3]),
            object_yaw=_yaw_of(quat),
            object_held=_held(client, arm, self.object),
            bottom_drawer=float(client.getJointState(self.cabinet, self.bottom_joint)[0]),
            top_drawer=float(client.getJointState(self.cabinet, self.top_joint)[0]),
            blocker_pos=blocker,
            blocker_held=self.blocker_present and _held(client, arm, self.blocker),
        )

    def success(self, state: SceneState) -> bool:
        """The object is held and its bottom is clear of the bottom drawer's walls."""
        lifted = state.object_pos[2] - self.OBJECT_HALF > self.DRAWER_TOP_Z + 0.01
        return bool(lifted and state.object_held)

    def privileged(self, state: SceneState) -> NDArray[np.float64]:
        drawers = [state.bottom_drawer, state.top_drawer]
        return np.concatenate([state.object_pos, state.object_quat, drawers, state.blocker_pos])

    def milestones(self, state: SceneState, condition: str) -> dict[str, bool]:
        """Clear the way (blocked conditions only), open the bottom drawer, hold the object, lift it (success)."""
        reached: dict[str, bool] = {}
        if condition == "blocked":
            reached["top_closed"] = bool(self.top_closed(state))
        elif condition == "blocked_by_object":
            reached["blocker_clear"] = bool(self.blocker_clear(state))
        reached["bottom_open"] = bool(self.bottom_open(state))
        reached["object_held"] = bool(state.object_held)
        reached["success"] = self.success(state)
        return reached

    # Sub-skill predicates, used by the scripted skills to report success.
    def bottom_open(self, state: SceneState) -> bool:
        return state.bottom_drawer >= self.OPEN_THRESHOLD

    def top_closed(self, state: SceneState) -> bool:
        return state.top_drawer <= 0.02

    def blocker_clear(self, state: SceneState) -> bool:
        """The blocking object is out of the bottom drawer's path and of the way to its handle, and let go."""
        x, y = state.blocker_pos[0], state.blocker_pos[1]
        in_front = self.FRONT - 0.2 < x < self.FRONT + 0.01 and abs(y - self.BOTTOM_HANDLE_Y) < 0.1
        return not in_front and not state.blocker_held


class PickPlaceScene:
    """Table, an object and a tray. Initial conditions: `on_table` (random pose), `in_gripper`.

    Task: the object rests in the tray (inside its walls, not held).
    """

    name = "pick_place"
    task = "put the object into the tray and let go of it"
    initial_conditions: tuple[str, ...] = ("on_table", "in_gripper")
    horizons: dict[str, int] = {"on_table": 40, "in_gripper": 40}
    camera = CameraConfig(eye=(0.1, -0.3, 0.4), target=(0.28, 0.0, 0.0), fov_deg=45.0)
    privileged_names: tuple[str, ...] = (
        "object_x", "object_y", "object_z", "object_qx", "object_qy", "object_qz", "object_qw",
        "tray_x", "tray_y", "tray_z",
    )  # fmt: skip

    OBJECT_HALF = 0.015
    tcp_floor = OBJECT_HALF  # the object's centre: fingertips stop 5 mm above the table
    TRAY_INNER_HALF = 0.059
    TRAY_CENTER = (0.3, 0.13)

    def build(self, client: BulletClient) -> None:
        _build_table(client)
        self.tray = client.loadURDF(
            str(ASSET_DIR / "tray.urdf"), basePosition=(*self.TRAY_CENTER, 0.0), useFixedBase=True
        )
        h = self.OBJECT_HALF
        self.object = _box(client, (h, h, h), (0.9, 0.1, 0.1, 1.0), mass=0.05, position=SPAWN_SPOTS[0])

    def reset(self, client: BulletClient, arm: Arm, rng: np.random.Generator, condition: str) -> None:
        tray = (self.TRAY_CENTER[0] + rng.uniform(-0.02, 0.02), self.TRAY_CENTER[1] + rng.uniform(-0.02, 0.02), 0.0)
        client.resetBasePositionAndOrientation(self.tray, tray, (0, 0, 0, 1))
        match condition:
            case "on_table":
                obj = (rng.uniform(0.2, 0.36), rng.uniform(-0.16, 0.0), self.OBJECT_HALF)
                client.resetBasePositionAndOrientation(
                    self.object, obj, _quat_yaw(rng.uniform(-math.pi / 4, math.pi / 4))
                )
                tcp = rng.uniform((0.18, -0.08, 0.14), (0.26, 0.04, 0.2))
                arm.reset(tcp, 0.0, gripper_closed=False)
            case "in_gripper":
                tcp = rng.uniform((0.2, -0.1, 0.1), (0.3, 0.05, 0.16))
                yaw = rng.uniform(-0.3, 0.3)
                arm.reset(tcp, yaw, gripper_closed=True, finger_gap=2 * self.OBJECT_HALF)
                client.resetBasePositionAndOrientation(self.object, tcp, _quat_yaw(yaw))
            case _:
                raise ValueError(f"pick_place scene: unknown initial condition {condition!r}")

    def state(self, client: BulletClient, arm: Arm) -> SceneState:
        obj, quat = _pose(client, self.object)
        tray, _ = _pose(client, self.tray)
        tcp, yaw = arm.tcp_pose()
        return SceneState(
            tcp=tcp,
            yaw=yaw,
            finger_gap=arm.finger_gap(),
            gripper_closed=arm.gripper_closed,
            object_pos=obj,
            object_quat=(quat[0], quat[1], quat[2], quat[3]),
            object_yaw=_yaw_of(quat),
            object_held=_held(client, arm, self.object),
            tray_pos=tray,
        )

    def success(self, state: SceneState) -> bool:
        """The object lies inside the tray's walls, low (not hovering), and no finger holds it."""
        d = np.abs(state.object_pos[:2] - state.tray_pos[:2])
        inside = bool(np.all(d < self.TRAY_INNER_HALF - 0.005))
        low = state.object_pos[2] < 0.006 + 2 * self.OBJECT_HALF + 0.01
        return inside and low and not state.object_held

    def privileged(self, state: SceneState) -> NDArray[np.float64]:
        return np.concatenate([state.object_pos, state.object_quat, state.tray_pos])

    def milestones(self, state: SceneState, condition: str) -> dict[str, bool]:
        """Pick the object up, then place it (success); from `in_gripper` it starts picked."""
        return {"picked": self.picked(state), "success": self.success(state)}

    def picked(self, state: SceneState) -> bool:
        return bool(state.object_held and state.object_pos[2] > 0.06)

"""`ManipulationEnv`: the gymnasium environment shared by both scenes.

One physics client per environment (every pybullet call carries its id, through `BulletClient`). `reset` rebuilds
the world from pybullet's in-memory copy of our URDFs (a few milliseconds, no disk access) and places the bodies,
so that every episode depends on its seed and actions alone.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet
from numpy.typing import NDArray

from sim_envs.robot import Arm, ArmConfig, BulletClient
from sim_envs.scenes import CameraConfig, DrawerScene, PickPlaceScene, Scene, SceneState

ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "gripper")
ACTION_SCALES = (0.03, 0.03, 0.03, 0.25, 1.0)
ACTION_UNITS = ("m/step", "m/step", "m/step", "rad/step", "command: >=0.5 close, <=-0.5 open, else hold")
STATE_NAMES = ("tcp_x", "tcp_y", "tcp_z", "yaw", "gripper_opening")
CONTROL_PERIOD_S = 0.1
"""Nominal control period on the robot: a `dx` of 1 is 0.03 m per 0.1 s, i.e. a twist of 0.3 m/s."""
PHYSICS_DT = 1.0 / 240.0
SUBSTEPS = 12
"""Physics steps per control step (0.05 s simulated). Fewer, or fewer solver iterations, broke the drawer grasp
(measured: 25-episode success fell from 1.0 to 0.16-0.36)."""
TRACK_EVERY = 3
"""Substeps between motor target updates along the commanded motion (4 waypoints per control step)."""
SOLVER_ITERATIONS = 20
"""pybullet's default is 50; 20 costs 0.7x as much per physics step (measured) and holds grasps as well."""


@dataclass(frozen=True)
class EnvSpecRecord:
    """What datasets and checkpoints record about the environment, as JSON-able fields."""

    scene: str
    task: str
    initial_conditions: tuple[str, ...]
    """The conditions `reset` draws from when no `initial_condition` option is given."""
    horizons: dict[str, int]
    """Episode length for every condition of the scene."""
    terminate_on_success: bool
    action_names: tuple[str, ...]
    action_scales: tuple[float, ...]
    action_units: tuple[str, ...]
    control_period_s: float
    image_shape: tuple[int, int, int] | None
    state_names: tuple[str, ...]
    privileged_names: tuple[str, ...] | None
    workspace_low: tuple[float, float, float]
    """Lower corner (m) of the box the TCP is commanded within; its z is the scene's floor for the fingertips."""
    workspace_high: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scene(name: str) -> Scene:
    match name:
        case "drawer":
            return DrawerScene()
        case "pick_place":
            return PickPlaceScene()
        case _:
            raise ValueError(f"unknown scene {name!r}; choose one of 'drawer', 'pick_place'")


def _image_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
    problem = f"image_size must be an int or (height, width) with each an int in [16, 1024], got {image_size!r}"
    if isinstance(image_size, numbers.Integral):
        size: tuple[object, ...] = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)):
        size = tuple(image_size)
    else:
        raise ValueError(problem)
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        raise ValueError(problem)
    height, width = int(size[0]), int(size[1])  # type: ignore[call-overload]
    if not (16 <= height <= 1024 and 16 <= width <= 1024):
        raise ValueError(problem)
    return height, width


TABLE_RGB = np.array([140, 140, 140], dtype=np.uint8)
FAR_DEPTH = 0.9999  # TinyRenderer leaves 0.99999994 (float32 1 - eps) where nothing was drawn


class Camera:
    """Renders RGB frames with pybullet's TinyRenderer (CPU, deterministic, no GL needed).

    Pixels where no body was drawn (depth at the far plane) show the table top, which has no visual shape.
    """

    def __init__(self, client: BulletClient, config: CameraConfig, height: int, width: int) -> None:
        self.client, self.height, self.width = client, height, width
        self.view = client.computeViewMatrix(config.eye, config.target, (0, 0, 1))
        self.projection = client.computeProjectionMatrixFOV(config.fov_deg, width / height, 0.05, 3.0)

    def render(self) -> NDArray[np.uint8]:
        _, _, rgba, depth, _ = self.client.getCameraImage(
            self.width,
            self.height,
            self.view,
            self.projection,
            shadow=0,
            renderer=pybullet.ER_TINY_RENDERER,
            flags=pybullet.ER_NO_SEGMENTATION_MASK,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)[:, :, :3].copy()
        rgb[np.asarray(depth).reshape(self.height, self.width) >= FAR_DEPTH] = TABLE_RGB
        return rgb


class ManipulationEnv(gym.Env[dict[str, NDArray[Any]], NDArray[np.float32]]):
    """A WidowX-class arm in a drawer or pick-place scene, with camera images and a sparse task reward.

    Observation: dict with `image` (uint8 HxWx3, unless `include_image=False`), `state` (float32: TCP position,
    yaw, gripper opening) and, with `privileged_state=True`, `privileged` (object pose and the scene's joints).
    Action: float32 in [-1, 1]^5 named `ACTION_NAMES`, scaled by `ACTION_SCALES` per step.
    Reward: 1.0 on every step where the task's success holds, else 0.0. `terminated` on success only when
    `terminate_on_success`; `truncated` at the initial condition's horizon (COG's: 40 pick-place, 50 drawer,
    80 blocked drawer) unless `max_episode_steps` overrides it.
    Info: `success`, `initial_condition`, `step`, and `milestones`: the scene's sub-goals for this initial
    condition in task order (for the drawer: clear the way, open the drawer, hold the object, success), each true
    while it holds, so an evaluation can say where failed episodes stopped.
    `tcp_floor` (m) is the lowest TCP height commanded, where the fingertips meet the scene's working surface
    (`Scene.tcp_floor` unless given; `robot_rl/Drawer-v0` is the drawer scene with the table's 0.015).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        scene: str = "drawer",
        initial_conditions: tuple[str, ...] | list[str] | str | None = None,
        image_size: int | tuple[int, int] = 48,
        include_image: bool = True,
        privileged_state: bool = False,
        terminate_on_success: bool = False,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        render_size: int = 256,
        arm: ArmConfig | None = None,
        tcp_floor: float | None = None,
    ) -> None:
        self.scene = make_scene(scene)
        if initial_conditions is None:
            conditions: tuple[str, ...] = self.scene.initial_conditions
        elif isinstance(initial_conditions, str):
            conditions = (initial_conditions,)
        else:
            conditions = tuple(initial_conditions)
        for condition in conditions:
            self._check_condition(condition)
        if not conditions:
            raise ValueError("initial_conditions is empty")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.initial_conditions = conditions
        self.image_hw = _image_shape(image_size)
        self.include_image = include_image
        self.privileged_state = privileged_state
        self.terminate_on_success = terminate_on_success
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode

        self.client = BulletClient(connection_mode=pybullet.DIRECT)
        arm = arm or ArmConfig()
        floor = self.scene.tcp_floor if tcp_floor is None else float(tcp_floor)
        if not floor < arm.workspace_high[2]:  # also refuses NaN
            raise ValueError(f"tcp_floor must be below the workspace's top ({arm.workspace_high[2]} m), got {floor}")
        floor = max(arm.workspace_low[2], floor)
        self._arm_config = replace(arm, workspace_low=(*arm.workspace_low[:2], floor))
        self.arm = self._build_world()
        self.camera = Camera(self.client, self.scene.camera, *self.image_hw)
        self._render_camera = Camera(self.client, self.scene.camera, render_size, render_size)

        spaces: dict[str, gym.Space[Any]] = {}
        if include_image:
            spaces["image"] = gym.spaces.Box(0, 255, (*self.image_hw, 3), np.uint8)
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (len(STATE_NAMES),), np.float32)
        if privileged_state:
            spaces["privileged"] = gym.spaces.Box(-np.inf, np.inf, (len(self.scene.privileged_names),), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)  # type: ignore[assignment]  # gymnasium's Dict is untyped
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(ACTION_NAMES),), np.float32)
        self._scales = np.array(ACTION_SCALES)
        self._condition = conditions[0]
        self._steps = 0
        self._horizon = 0
        self._state: SceneState | None = None

    # -- gymnasium API -------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"initial_condition"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: 'initial_condition'")
        if "initial_condition" in options:
            condition = str(options["initial_condition"])
            self._check_condition(condition)
        else:
            condition = self.initial_conditions[int(self.np_random.integers(len(self.initial_conditions)))]
        self.arm = self._build_world()
        self.scene.reset(self.client, self.arm, self.np_random, condition)
        for _ in range(SUBSTEPS // 2):  # let placed bodies settle onto their supports
            self.client.stepSimulation()
        self._condition = condition
        self._steps = 0
        self._horizon = self.max_episode_steps or self.scene.horizons[condition]
        self._state = self.scene.state(self.client, self.arm)
        return self._observation(), self._info(self._state)

    def step(self, action: NDArray[np.float32]) -> tuple[dict[str, NDArray[Any]], float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape} {ACTION_NAMES}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}")
        d = np.clip(a, -1.0, 1.0) * self._scales
        self.arm.command(d[:3], float(d[3]), float(d[4]), tcp=self._state.tcp)
        for k in range(SUBSTEPS):
            if k % TRACK_EVERY == 0:
                self.arm.track((k + TRACK_EVERY) / SUBSTEPS)
            self.client.stepSimulation()
        self._steps += 1
        self._state = self.scene.state(self.client, self.arm)
        success = self.scene.success(self._state)
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self._horizon and not terminated
        return self._observation(), float(success), terminated, truncated, self._info(self._state)

    def render(self) -> NDArray[np.uint8] | None:
        if self.render_mode != "rgb_array":
            return None
        return self._render_camera.render()

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.disconnect()
            self.client = None  # type: ignore[assignment]

    # -- introspection -------------------------------------------------------------------------------------------
    @staticmethod
    def conditions_of(scene: str) -> tuple[str, ...]:
        """The initial conditions a scene offers."""
        return make_scene(scene).initial_conditions

    def scene_state(self) -> SceneState:
        """The privileged state of the scene as of the last reset or step (what scripted skills read)."""
        if self._state is None:
            raise RuntimeError("call reset() first")
        return self._state

    @property
    def initial_condition(self) -> str:
        return self._condition

    @property
    def horizon(self) -> int:
        return self._horizon

    def spec_record(self) -> EnvSpecRecord:
        return EnvSpecRecord(
            scene=self.scene.name,
            task=self.scene.task,
            initial_conditions=self.initial_conditions,
            # Every condition of the scene: reset(options=...) may start from any of them (e.g. evaluation).
            horizons={c: self.max_episode_steps or self.scene.horizons[c] for c in self.scene.initial_conditions},
            terminate_on_success=self.terminate_on_success,
            action_names=ACTION_NAMES,
            action_scales=ACTION_SCALES,
            action_units=ACTION_UNITS,
            control_period_s=CONTROL_PERIOD_S,
            image_shape=(*self.image_hw, 3) if self.include_image else None,
            state_names=STATE_NAMES,
            privileged_names=self.scene.privileged_names if self.privileged_state else None,
            workspace_low=self._arm_config.workspace_low,
            workspace_high=self._arm_config.workspace_high,
        )

    # -- internals -----------------------------------------------------------------------------------------------
    def _build_world(self) -> Arm:
        """Empty the physics world and build the arm and the scene in it again.

        Every episode starts from a freshly built world, so that it depends on its seed and actions alone, never on
        the episodes before it (collection must give the same data whatever the number of workers). The cheaper
        restoreState snapshot did not: Bullet's contact manifolds and broadphase pairs survive it, and with them
        the solver's warm starts and its order of constraints; 4 of 60 randomised episodes then differed from a
        fresh environment's (measured, also with extra collision passes). Rebuilding costs ~3.5 ms: the URDFs come
        from pybullet's in-memory file cache, not from disk.
        """
        c = self.client
        c.resetSimulation()
        c.setPhysicsEngineParameter(
            fixedTimeStep=PHYSICS_DT,
            numSolverIterations=SOLVER_ITERATIONS,
            deterministicOverlappingPairs=1,
            enableFileCaching=1,
        )
        c.setGravity(0, 0, -9.81)
        arm = Arm(c, self._arm_config)
        self.scene.build(c)
        return arm

    def _check_condition(self, condition: str) -> None:
        if condition not in self.scene.initial_conditions:
            raise ValueError(
                f"unknown initial condition {condition!r} for scene {self.scene.name!r}; "
                f"choose from {self.scene.initial_conditions}"
            )

    def _observation(self) -> dict[str, NDArray[Any]]:
        assert self._state is not None
        s = self._state
        obs: dict[str, NDArray[Any]] = {}
        if self.include_image:
            obs["image"] = self.camera.render()
        obs["state"] = np.array([*s.tcp, s.yaw, s.finger_gap], dtype=np.float32)
        if self.privileged_state:
            obs["privileged"] = self.scene.privileged(s).astype(np.float32)
        return obs

    def _info(self, state: SceneState) -> dict[str, Any]:
        return {
            "initial_condition": self._condition,
            "success": self.scene.success(state),
            "milestones": self.scene.milestones(state, self._condition),
            "step": self._steps,
        }

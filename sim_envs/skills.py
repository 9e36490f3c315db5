"""Scripted skills: one waypoint controller per sub-skill, reading the privileged scene state.

Each skill walks through phases (move above, descend, close, pull, ...); a phase ends when the tool centre point is
within its tolerance of the phase's target, or after a fixed number of steps for gripper phases. `ScriptedPolicy`
adds COG's Gaussian action noise and, optionally, "suboptimal" random-direction actions part of the time, so that
collected data holds the varied and partly failing behaviour of COG's scripted datasets. `SkillChain` runs skills
one after another: the chained solutions solve each task from its hardest initial condition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sim_envs.env import ACTION_SCALES, ManipulationEnv
from sim_envs.scenes import DrawerScene, PickPlaceScene, SceneState

D = DrawerScene
P = PickPlaceScene
TRAVEL_Z = 0.16  # safe height above the cabinet's top drawer handle
_LINEAR_SCALE = ACTION_SCALES[0]
_YAW_SCALE = ACTION_SCALES[3]
CLOSE, OPEN = 1.0, -1.0


@dataclass(frozen=True)
class Waypoint:
    """One phase of a skill: drive the TCP to `target` with the gripper command `gripper`.

    The phase ends when the TCP is within `tol` metres of the target, or when `until` holds, or after `steps`
    steps if `steps` is set (used for closing and opening the gripper).
    """

    target: NDArray[np.float64]
    gripper: float
    tol: float = 0.01
    steps: int | None = None
    yaw: float = 0.0
    until: bool = False
    speed: float = 1.0
    """Cap on the normalised motion command, for moves that must be gentle (pulling a loaded drawer)."""


class Skill:
    """Base of the scripted skills: a phase counter and a proportional controller towards each waypoint."""

    name: str = "skill"
    has_goal: bool = True
    """False for skills without a success predicate (exploration): their success is recorded as None."""

    def __init__(self) -> None:
        self.phase = 0
        self._phase_steps = 0
        self._finished = False

    def reset(self) -> None:
        self.phase = 0
        self._phase_steps = 0
        self._finished = False

    def waypoint(self, s: SceneState) -> Waypoint | None:
        """The current phase's waypoint, or None once the skill has finished."""
        raise NotImplementedError

    def succeeded(self, s: SceneState) -> bool:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        return self._finished

    def act(self, s: SceneState) -> NDArray[np.float64]:
        """The noiseless action for this state, advancing phases whose goal is met."""
        for _ in range(8):  # several phases may be complete already (e.g. the gripper is already closed)
            wp = self.waypoint(s)
            if wp is None:
                self._finished = True
                return np.zeros(5)
            reached = bool(np.linalg.norm(wp.target - s.tcp) < wp.tol)
            if wp.steps is not None:
                reached = self._phase_steps >= wp.steps
            if not (reached or wp.until):
                break
            self.phase += 1
            self._phase_steps = 0
        assert wp is not None
        self._phase_steps += 1
        move = np.clip((wp.target - s.tcp) / _LINEAR_SCALE, -wp.speed, wp.speed)
        yaw_error = math.remainder(wp.yaw - s.yaw, math.pi)  # the gripper is symmetric under a half turn
        turn = float(np.clip(yaw_error / _YAW_SCALE, -1.0, 1.0))
        return np.array([*move, turn, wp.gripper])


def _grasp_yaw(object_yaw: float) -> float:
    """Gripper yaw that aligns the fingers with a cube's faces, the nearest of the four."""
    return math.remainder(object_yaw, math.pi / 2)


def _at(x: float, y: float, z: float) -> NDArray[np.float64]:
    return np.array([x, y, z])


MAX_RETRIES = 5
"""The most retries a grasp takes (a pick takes ~7 steps per attempt; episodes are 40-50 steps)."""


def _check_retries(retries: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be an integer 0-{MAX_RETRIES}, got {retries!r}")


def _check_drawn_distance(name: str, value: float, rng: np.random.Generator | None) -> None:
    """A skill's option that scales a distance the skill draws per episode (metres): finite, >= 0, and with an rng
    to draw from where it is > 0."""
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite distance >= 0 (metres), got {value}")
    if value > 0 and rng is None:
        raise ValueError(f"a skill with {name} > 0 needs an rng to draw it")


class OpenBottomDrawer(Skill):
    """Close the gripper, hook it between the bottom drawer's handle and face, pull the drawer out, back off.

    With `backoff_push` > 0 (metres) the back-off first moves towards the cabinet at handle height, by a distance
    drawn uniformly from [backoff_push / 2, backoff_push], before it rises: once the closed gripper has crossed the
    gap to the drawer's face it pushes the drawer back in (measured: 0.06 pushes it 1.6-4.7 cm). A learnt policy
    that heads for the object while still at the handle does this; these episodes show the data what it does to the
    drawer (and `ajar` episodes what it takes to recover).
    """

    name = "open_bottom_drawer"
    HOOK_X = D.FRONT - 0.0295  # middle of the 0.039 m gap between the handle bar and the drawer face
    PUSH_STEPS = 8
    """The push ends within 8 mm of its target or after this many steps."""

    def __init__(self, rng: np.random.Generator | None = None, backoff_push: float = 0.0) -> None:
        super().__init__()
        _check_drawn_distance("backoff_push", backoff_push, rng)
        self.rng, self.backoff_push = rng, backoff_push
        self.push, self._push_from = 0.0, 0.0
        self.reset()

    def reset(self) -> None:
        super().reset()
        if self.backoff_push > 0:
            assert self.rng is not None
            self.push = float(self.rng.uniform(self.backoff_push / 2, self.backoff_push))

    def waypoint(self, s: SceneState) -> Waypoint | None:
        x, y = self.HOOK_X - s.bottom_drawer, D.BOTTOM_HANDLE_Y
        if self.push > 0 and self.phase >= 3:  # the push is phase 3, the rise phase 4
            if self.phase == 3:
                if self._phase_steps == 0:
                    self._push_from = float(s.tcp[0])
                push_to = _at(self._push_from + self.push, y, D.HANDLE_Z)
                return Waypoint(push_to, CLOSE, tol=0.008, until=self._phase_steps >= self.PUSH_STEPS)
            return Waypoint(_at(s.tcp[0], y, TRAVEL_Z), OPEN, tol=0.015) if self.phase == 4 else None
        match self.phase:
            case 0:
                return Waypoint(_at(x, y, TRAVEL_Z), CLOSE, tol=0.012)
            case 1:
                return Waypoint(_at(x, y, D.HANDLE_Z), CLOSE, tol=0.008)
            case 2:
                opened = s.bottom_drawer >= D.DRAWER_TRAVEL - 0.008
                # Pulled faster, the drawer accelerates the object beyond what friction holds and it slides back.
                pull_to = _at(self.HOOK_X - D.DRAWER_TRAVEL - 0.01, y, D.HANDLE_Z)
                return Waypoint(pull_to, CLOSE, until=opened, speed=0.6)
            case 3:
                return Waypoint(_at(s.tcp[0], y, TRAVEL_Z), OPEN, tol=0.015)
        return None

    def succeeded(self, s: SceneState) -> bool:
        return D().bottom_open(s)


class CloseTopDrawer(Skill):
    """Go in front of the open top drawer, below its top edge and away from its handle, and push it shut."""

    name = "close_top_drawer"
    PUSH_Y = D.CENTER_Y - 0.04

    def waypoint(self, s: SceneState) -> Waypoint | None:
        face_x = D.FRONT - 0.01 - s.top_drawer
        match self.phase:
            case 0:
                return Waypoint(_at(face_x - 0.035, self.PUSH_Y, TRAVEL_Z), CLOSE, tol=0.012)
            case 1:
                return Waypoint(_at(face_x - 0.035, self.PUSH_Y, 0.1), CLOSE, tol=0.01)
            case 2:
                return Waypoint(_at(D.FRONT - 0.008, self.PUSH_Y, 0.1), CLOSE, until=s.top_drawer < 0.005)
            case 3:
                return Waypoint(_at(D.FRONT - 0.05, self.PUSH_Y, TRAVEL_Z), CLOSE, tol=0.015)
        return None

    def succeeded(self, s: SceneState) -> bool:
        return D().top_closed(s)


class RemoveBlocker(Skill):
    """Grasp the object standing behind the bottom drawer's handle, lift it out, set it down aside, let go."""

    name = "remove_blocker"
    ASIDE = D.BLOCKER_ASIDE

    def waypoint(self, s: SceneState) -> Waypoint | None:
        b = s.blocker_pos
        grasp_z = b[2] + D.BLOCKER_HALF[2] - 0.016  # fingertips stay above the handle bar
        match self.phase:
            case 0:
                return Waypoint(_at(b[0], b[1], TRAVEL_Z), OPEN, tol=0.01)
            case 1:
                return Waypoint(_at(b[0], b[1], grasp_z), OPEN, tol=0.006)
            case 2:
                return Waypoint(_at(b[0], b[1], grasp_z), CLOSE, steps=3)
            case 3:
                return Waypoint(_at(s.tcp[0], s.tcp[1], TRAVEL_Z + 0.02), CLOSE, tol=0.015)
            case 4:
                return Waypoint(_at(*self.ASIDE, TRAVEL_Z + 0.02), CLOSE, tol=0.02)
            case 5:
                return Waypoint(_at(*self.ASIDE, 2 * D.BLOCKER_HALF[2] - 0.012), CLOSE, tol=0.01)
            case 6:
                return Waypoint(s.tcp, OPEN, steps=2)
            case 7:
                return Waypoint(_at(*self.ASIDE, TRAVEL_Z), OPEN, tol=0.02)
        return None

    def succeeded(self, s: SceneState) -> bool:
        return D().blocker_clear(s)


class _Grasp(Skill):
    """Align above the object, descend, close, lift: the grasp shared by the drawer and the table.

    With `approach_error` > 0 (metres) the skill first aims beside the object, at a distance drawn uniformly from
    [approach_error / 2, approach_error] in a uniformly drawn direction, descends there to grasp height and only then
    moves over the object (at ~1 cm per step) before closing. A precise scripted descent never visits those states,
    while a learnt policy's descent drifts into them (and, having no data there, stalls open): these episodes show
    the correction. Where a finger lands on the object or a wall instead, the grasp rises and retries above it.

    With `retries` > 0 a grasp that has lifted without holding the object (closed beside it, or lost it) opens and
    starts again from above the object, up to `retries` times. Without retries the data never shows what to do after
    a miss: the scripted grasp lifts its empty, closed gripper and stops, and a learnt policy that closes beside the
    object does the same. Retries aim at the object itself (any `approach_error` applies to the first attempt only).
    With `first_miss` > 0 (metres; needs `retries`) the first attempt closes beside the object, at a distance drawn
    uniformly from [first_miss / 2, first_miss] in a uniformly drawn direction, so that the data holds the miss a
    learnt policy makes and the reopening after it.
    """

    above_z: float
    lift_z: float
    grasp_z: float | None = None
    """The TCP height to close at; None: the object's centre."""
    DESCENT_STEPS = 8
    """The beside-the-object descent ends at grasp height or after this many steps (a finger may land on the object)."""
    BLOCKED_ABOVE = 0.015
    STALL_DZ = 0.003
    """A descent that gains less than STALL_DZ in a step while still BLOCKED_ABOVE above grasp height is blocked (a
    finger on the object or on a drawer wall): the grasp rises straight up and retries with the object as its aim."""
    CORRECTION_SPEED = 0.35
    """Cap on the normalised command moving over the object at grasp height (~1 cm per step)."""

    def __init__(
        self,
        rng: np.random.Generator | None = None,
        approach_error: float = 0.0,
        retries: int = 0,
        first_miss: float = 0.0,
    ) -> None:
        super().__init__()
        _check_drawn_distance("approach_error", approach_error, rng)
        _check_drawn_distance("first_miss", first_miss, rng)
        _check_retries(retries)
        if first_miss > 0 and (retries < 1 or approach_error > 0):
            raise ValueError("first_miss needs retries >= 1 (the reopening it exists to show) and no approach_error")
        self.rng, self.approach_error, self.retries, self.first_miss = rng, approach_error, retries, first_miss
        self.offset, self._rise_from, self._last_z = np.zeros(2), np.zeros(2), math.inf
        self.attempts = 0
        """Attempts started since `reset` (1 during the first)."""
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._last_z = math.inf
        self.attempts = 1
        drawn = self.approach_error or self.first_miss  # at most one of them is set
        if drawn > 0:
            assert self.rng is not None
            radius = self.rng.uniform(drawn / 2, drawn)
            angle = self.rng.uniform(0.0, 2 * math.pi)
            self.offset = radius * np.array([math.cos(angle), math.sin(angle)])

    def waypoint(self, s: SceneState) -> Waypoint | None:
        o = s.object_pos
        z = float(o[2]) if self.grasp_z is None else self.grasp_z
        yaw = _grasp_yaw(s.object_yaw)
        missing = self.first_miss > 0 and self.attempts == 1
        beside = self.approach_error > 0 or missing
        # Phases: above the aim point, descend there, move over the object at grasp height, close, lift (and, with
        # retries, start again after an empty lift). Without an approach error the aim is the object: the descent ends
        # over it and the move is already done. A first miss closes at its aim instead (the object, had a finger
        # landed on it during the descent).
        aim = o[:2] + self.offset
        grip = aim if missing else o[:2]
        match self.phase:
            case 0:
                return Waypoint(_at(aim[0], aim[1], self.above_z), OPEN, tol=0.012, yaw=yaw)
            case -1:  # a blocked descent: straight up first, then the grasp again with the object as the aim
                return Waypoint(_at(self._rise_from[0], self._rise_from[1], self.above_z), OPEN, tol=0.012, yaw=yaw)
            case 1 if beside:
                stalled = self._phase_steps >= 2 and self._last_z - s.tcp[2] < self.STALL_DZ
                if stalled and s.tcp[2] > z + self.BLOCKED_ABOVE:  # a finger on the object or a drawer wall
                    self.offset, self._rise_from = np.zeros(2), s.tcp[:2].copy()
                    self.phase, self._phase_steps = -1, 0
                    return self.waypoint(s)
                self._last_z = float(s.tcp[2])
                done = self._phase_steps >= self.DESCENT_STEPS
                return Waypoint(_at(aim[0], aim[1], z), OPEN, tol=0.006, yaw=yaw, until=done)
            case 1:
                return Waypoint(_at(o[0], o[1], z), OPEN, tol=0.006, yaw=yaw)
            case 2:  # over the object at grasp height: after a descent beside it, slowly, so the data shows the way
                return Waypoint(
                    _at(grip[0], grip[1], z), OPEN, tol=0.006, yaw=yaw, speed=self.CORRECTION_SPEED if beside else 1.0
                )
            case 3:
                return Waypoint(_at(grip[0], grip[1], z), CLOSE, steps=3, yaw=yaw)
            case 4:
                return Waypoint(_at(s.tcp[0], s.tcp[1], self.lift_z), CLOSE, tol=0.012, yaw=s.yaw)
            case 5 if self.attempts <= self.retries and not s.object_held:  # lifted empty: open and try again
                self.attempts += 1
                self.offset, self.phase, self._phase_steps, self._last_z = np.zeros(2), 0, 0, math.inf
                return self.waypoint(s)
        return None

    def act(self, s: SceneState) -> NDArray[np.float64]:
        action = super().act(s)
        if self.done:  # keep holding once lifted
            action[4] = CLOSE
        return action


class GraspFromDrawer(_Grasp):
    """Open the gripper above the object in the open bottom drawer, descend, close, and lift it out."""

    name = "grasp_from_drawer"
    above_z, lift_z = 0.12, 0.15

    def succeeded(self, s: SceneState) -> bool:
        return D().success(s)


class PickFromTable(_Grasp):
    """Align with the object on the table, descend, close, lift."""

    name = "pick_from_table"
    above_z, grasp_z, lift_z = 0.09, P.OBJECT_HALF, 0.1

    def succeeded(self, s: SceneState) -> bool:
        return P().picked(s)


class PlaceInTray(Skill):
    """Carry the held object above the tray, lower it, let go, back off."""

    name = "place_in_tray"

    def waypoint(self, s: SceneState) -> Waypoint | None:
        t = s.tray_pos
        match self.phase:
            case 0:
                return Waypoint(_at(t[0], t[1], 0.1), CLOSE, tol=0.015, yaw=s.yaw)
            case 1:
                return Waypoint(_at(t[0], t[1], 0.06), CLOSE, tol=0.01, yaw=s.yaw)
            case 2:
                return Waypoint(s.tcp, OPEN, steps=2, yaw=s.yaw)
            case 3:
                return Waypoint(_at(t[0], t[1], 0.12), OPEN, tol=0.015, yaw=s.yaw)
        return None

    def succeeded(self, s: SceneState) -> bool:
        return P().success(s)


class RandomExploration(Skill):
    """Wander between random points of the workspace, opening and closing the gripper at random.

    It has no goal (`has_goal` is False), so its success is recorded as not applicable.
    """

    name = "random_exploration"
    has_goal = False

    def __init__(self, rng: np.random.Generator, low: tuple[float, ...], high: tuple[float, ...]) -> None:
        super().__init__()
        self.rng, self.low, self.high = rng, np.array(low), np.array(high)
        self._target = self.rng.uniform(self.low, self.high)
        self._gripper = OPEN
        self._yaw = 0.0

    def waypoint(self, s: SceneState) -> Waypoint | None:
        if self._phase_steps == 0 or self.rng.random() < 0.1:
            self._target = self.rng.uniform(self.low, self.high)
            self._gripper = CLOSE if self.rng.random() < 0.5 else OPEN
            self._yaw = float(self.rng.uniform(-0.6, 0.6))
        return Waypoint(self._target, self._gripper, tol=0.0, yaw=self._yaw)

    def succeeded(self, s: SceneState) -> bool:
        return False


class SkillChain(Skill):
    """Run skills one after another; each hands over when it has finished its phases."""

    def __init__(self, name: str, skills: list[Skill]) -> None:
        super().__init__()
        self.name, self.skills, self.current = name, skills, 0

    def reset(self) -> None:
        super().reset()
        self.current = 0
        for skill in self.skills:
            skill.reset()

    def act(self, s: SceneState) -> NDArray[np.float64]:
        while True:
            skill = self.skills[self.current]
            action = skill.act(s)
            if not skill.done or self.current == len(self.skills) - 1:
                return action
            self.current += 1

    def succeeded(self, s: SceneState) -> bool:
        return self.skills[-1].succeeded(s)


@dataclass(frozen=True)
class SkillSetting:
    """A skill and where it is measured: its scene and the initial condition it starts from."""

    name: str
    scene: str
    initial_condition: str
    parts: tuple[str, ...] = ()
    """For a chained solution, the skills it runs in order; empty for a single skill."""


SKILLS: dict[str, SkillSetting] = {
    s.name: s
    for s in (
        SkillSetting("open_bottom_drawer", "drawer", "closed"),
        SkillSetting("close_top_drawer", "drawer", "blocked"),
        SkillSetting("remove_blocker", "drawer", "blocked_by_object"),
        SkillSetting("grasp_from_drawer", "drawer", "open"),
        SkillSetting("pick_from_table", "pick_place", "on_table"),
        SkillSetting("place_in_tray", "pick_place", "in_gripper"),
        SkillSetting("random_exploration", "drawer", "closed"),
        SkillSetting("open_then_grasp", "drawer", "closed", ("open_bottom_drawer", "grasp_from_drawer")),
        SkillSetting(
            "close_top_open_grasp", "drawer", "blocked", ("close_top_drawer", "open_bottom_drawer", "grasp_from_drawer")
        ),
        SkillSetting(
            "remove_blocker_open_grasp",
            "drawer",
            "blocked_by_object",
            ("remove_blocker", "open_bottom_drawer", "grasp_from_drawer"),
        ),
        SkillSetting("pick_then_place", "pick_place", "on_table", ("pick_from_table", "place_in_tray")),
    )
}
"""Every scripted skill and chained solution, by name. `random_exploration` runs in either scene."""


GRASPS = ("grasp_from_drawer", "pick_from_table")
"""The skills that take an `approach_error`, `retries` and a `first_miss` (see `_Grasp`)."""


def make_skill(
    name: str,
    rng: np.random.Generator,
    approach_error: float = 0.0,
    backoff_push: float = 0.0,
    retries: int = 0,
    first_miss: float = 0.0,
) -> Skill:
    """Build a skill or chained solution by name (see `SKILLS`); `approach_error`, `retries` and `first_miss` are for
    the `GRASPS` alone, `backoff_push` for `open_bottom_drawer` alone."""
    if name not in SKILLS:
        raise ValueError(f"unknown skill {name!r}; choose one of {sorted(SKILLS)}")
    if approach_error != 0.0 and name not in GRASPS:
        raise ValueError(f"approach_error is for the grasps {GRASPS}, not {name!r}")
    for option, value in (("retries", retries), ("first_miss", first_miss)):
        if value != 0 and name not in GRASPS:
            raise ValueError(f"{option} is for the grasps {GRASPS}, not {name!r}")
    if backoff_push != 0.0 and name != "open_bottom_drawer":
        raise ValueError(f"backoff_push is for open_bottom_drawer, not {name!r}")
    setting = SKILLS[name]
    if setting.parts:
        return SkillChain(name, [make_skill(part, rng) for part in setting.parts])
    match name:
        case "open_bottom_drawer":
            return OpenBottomDrawer(rng, backoff_push)
        case "close_top_drawer":
            return CloseTopDrawer()
        case "remove_blocker":
            return RemoveBlocker()
        case "grasp_from_drawer":
            return GraspFromDrawer(rng, approach_error, retries, first_miss)
        case "pick_from_table":
            return PickFromTable(rng, approach_error, retries, first_miss)
        case "place_in_tray":
            return PlaceInTray()
        case "random_exploration":
            return RandomExploration(rng, (0.16, -0.15, 0.03), (0.38, 0.18, 0.2))
    raise AssertionError(f"SKILLS lists {name!r} but make_skill cannot build it")


class ScriptedPolicy:
    """A skill with COG-style action noise: a ~ clip(skill(s) + N(0, noise^2), -1, 1).

    With probability `suboptimal_prob` per step the motion part of the action is replaced by a uniformly random
    direction instead (COG's "suboptimal" scripted data), which makes some episodes fail.
    """

    def __init__(
        self, skill: Skill, rng: np.random.Generator, noise: float = 0.1, suboptimal_prob: float = 0.0
    ) -> None:
        if noise < 0 or not 0.0 <= suboptimal_prob <= 1.0:
            raise ValueError(f"need noise >= 0 and 0 <= suboptimal_prob <= 1, got {noise}, {suboptimal_prob}")
        self.skill, self.rng, self.noise, self.suboptimal_prob = skill, rng, noise, suboptimal_prob

    def reset(self) -> None:
        self.skill.reset()

    def __call__(self, s: SceneState) -> NDArray[np.float32]:
        action = self.skill.act(s)
        if self.suboptimal_prob > 0 and self.rng.random() < self.suboptimal_prob:
            action[:4] = self.rng.uniform(-1.0, 1.0, size=4)
        action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


@dataclass
class EpisodeResult:
    """Outcome of one scripted episode."""

    skill: str
    initial_condition: str
    seed: int
    success: bool | None
    """The skill's own success predicate at the final step; None for skills without a goal."""
    task_success: bool
    """The env's task success at the final step (what its reward reports)."""
    ever_task_success: bool
    steps: int
    frames: list[NDArray[np.uint8]]
    """With `record`: the policy's camera image at every step (T+1 frames), when the env renders images."""
    renders: list[NDArray[np.uint8]]
    """With `record`: `env.render()` at every step, when the env has render_mode 'rgb_array'."""


def run_skill_episode(
    env: ManipulationEnv,
    skill_name: str,
    seed: int,
    noise: float = 0.1,
    suboptimal_prob: float = 0.0,
    initial_condition: str | None = None,
    record: bool = False,
    approach_error: float = 0.0,
    retries: int = 0,
    first_miss: float = 0.0,
) -> EpisodeResult:
    """Reset `env` (seeded) to the skill's initial condition and run the skill until the episode ends."""
    setting = SKILLS.get(skill_name)
    if setting is None:
        raise ValueError(f"unknown skill {skill_name!r}; choose one of {sorted(SKILLS)}")
    condition = initial_condition or setting.initial_condition
    rng = np.random.default_rng(seed)
    skill = make_skill(skill_name, rng, approach_error, retries=retries, first_miss=first_miss)
    policy = ScriptedPolicy(skill, rng, noise=noise, suboptimal_prob=suboptimal_prob)
    options: dict[str, Any] = {"initial_condition": condition}
    frames: list[NDArray[np.uint8]] = []
    renders: list[NDArray[np.uint8]] = []

    def keep(obs: dict[str, NDArray[Any]]) -> None:
        if record and "image" in obs:
            frames.append(obs["image"])
        if record and env.render_mode == "rgb_array":
            render = env.render()
            assert render is not None
            renders.append(render)

    obs, info = env.reset(seed=seed, options=options)
    keep(obs)
    ever, steps, done = bool(info["success"]), 0, False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(env.scene_state()))
        keep(obs)
        steps += 1
        ever = ever or bool(info["success"])
        done = terminated or truncated
    state = env.scene_state()
    return EpisodeResult(
        skill=skill_name,
        initial_condition=condition,
        seed=seed,
        success=policy.skill.succeeded(state) if policy.skill.has_goal else None,
        task_success=bool(info["success"]),
        ever_task_success=ever,
        steps=steps,
        frames=frames,
        renders=renders,
    )

"""Tests of `ManipulationEnv`: the gymnasium contract, determinism, initial conditions, reward, arguments, camera."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from numpy.typing import NDArray

import sim_envs
from sim_envs import ACTION_NAMES, ACTION_SCALES, ENV_IDS, STATE_NAMES
from sim_envs.env import ManipulationEnv
from sim_envs.robot import FINGERTIP_PAST_TCP
from sim_envs.scenes import DrawerScene, PickPlaceScene
from sim_envs.skills import SKILLS, ScriptedPolicy, make_skill, run_skill_episode

EnvFactory = Callable[..., ManipulationEnv]
"""The `make_env` fixture of conftest.py."""
D = DrawerScene
P = PickPlaceScene
STILL_OPEN = np.zeros(5, dtype=np.float32)
"""No motion; a gripper command of 0 keeps the gripper as it is."""
STILL_CLOSED = np.array([0, 0, 0, 0, 1], dtype=np.float32)
"""No motion, gripper commanded closed."""
SEEDS = (0, 1, 2)


# -- helpers -------------------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """Everything an episode returned, step by step (observations include the one from reset)."""

    observations: list[dict[str, NDArray[Any]]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)


def reset_to(env: ManipulationEnv, seed: int, condition: str) -> dict[str, NDArray[Any]]:
    obs, info = env.reset(seed=seed, options={"initial_condition": condition})
    assert info["initial_condition"] == condition
    return obs


def step_into(env: ManipulationEnv, traj: Trajectory, action: NDArray[np.float32]) -> None:
    obs, reward, terminated, truncated, info = env.step(action)
    traj.observations.append(obs)
    traj.rewards.append(reward)
    traj.terminated.append(terminated)
    traj.truncated.append(truncated)
    traj.successes.append(bool(info["success"]))


def rollout(env: ManipulationEnv, seed: int, condition: str, actions: list[NDArray[np.float32]]) -> Trajectory:
    """Reset to `condition` with `seed` and play `actions` open loop."""
    traj = Trajectory(observations=[reset_to(env, seed, condition)])
    for action in actions:
        step_into(env, traj, action)
    return traj


def scripted_actions(scene: str, condition: str, skill: str, seed: int, steps: int) -> list[NDArray[np.float32]]:
    """The actions of a noisy scripted episode, recorded once in a throwaway env, to replay as a fixed sequence.

    Scripted actions make contact (grasps, drawer pulls), where nondeterminism would show, unlike random ones.
    """
    env = ManipulationEnv(scene, include_image=False)
    try:
        rng = np.random.default_rng(seed)
        policy = ScriptedPolicy(make_skill(skill, rng), rng, noise=0.1)
        reset_to(env, seed, condition)
        actions = []
        for _ in range(steps):
            action = policy(env.scene_state())
            actions.append(action)
            env.step(action)
    finally:
        env.close()
    return actions


def assert_same_trajectory(a: Trajectory, b: Trajectory) -> None:
    assert len(a.observations) == len(b.observations)
    for t, (obs_a, obs_b) in enumerate(zip(a.observations, b.observations, strict=True)):
        assert obs_a.keys() == obs_b.keys()
        for key in obs_a:
            assert obs_a[key].dtype == obs_b[key].dtype
            assert obs_a[key].tobytes() == obs_b[key].tobytes(), f"observation {key!r} differs at step {t}"
    assert a.rewards == b.rewards
    assert a.terminated == b.terminated
    assert a.truncated == b.truncated


def drive_to(
    env: ManipulationEnv, target: tuple[float, float, float], gripper: float, steps: int
) -> list[tuple[float, bool]]:
    """Move the TCP towards `target` with a proportional controller; returns (reward, info['success']) per step."""
    out = []
    for _ in range(steps):
        action = np.zeros(5, dtype=np.float32)
        action[:3] = np.clip((np.asarray(target) - env.scene_state().tcp) / ACTION_SCALES[0], -1.0, 1.0)
        action[4] = gripper
        _, reward, _, _, info = env.step(action)
        out.append((reward, bool(info["success"])))
    return out


def red_pixels(image: NDArray[np.uint8]) -> int:
    """Pixels of the red object (the test object's colour, lit): strongly red, little green or blue."""
    r, g, b = (image[..., c].astype(np.int32) for c in range(3))
    return int(np.count_nonzero((r > 150) & (g < 80) & (b < 80)))


def blue_pixels(image: NDArray[np.uint8]) -> int:
    """Pixels of the blue blocking object."""
    r, b = image[..., 0].astype(np.int32), image[..., 2].astype(np.int32)
    return int(np.count_nonzero((b > 150) & (r < 80)))


# -- 1. gymnasium's env checker --------------------------------------------------------------------------------------
EXPECTED_CHECKER_WARNINGS = ("minimum value is -infinity", "maximum value is infinity")
"""The state and privileged vectors are unbounded Boxes on purpose; any other checker warning fails the test."""


def check_env_strict(env: gym.Env[Any, Any]) -> None:
    """`check_env`, failing on any but the expected warnings.

    The env's generator and action space are seeded first, so that every run checks the same resets and actions.
    """
    env.reset(seed=0)
    env.action_space.seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    unexpected = [str(w.message) for w in caught if not any(s in str(w.message) for s in EXPECTED_CHECKER_WARNINGS)]
    assert not unexpected


@pytest.mark.parametrize("env_id", sorted(ENV_IDS.values()))
def test_check_env_on_registered_ids(env_id: str) -> None:
    env = gym.make(env_id)
    try:
        check_env_strict(env.unwrapped)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", sorted(ENV_IDS.values()))
def test_check_env_privileged_without_image(env_id: str) -> None:
    env = gym.make(env_id, privileged_state=True, include_image=False)
    try:
        assert set(env.reset(seed=0)[0]) == {"state", "privileged"}
        check_env_strict(env.unwrapped)
    finally:
        env.close()


def test_import_registers_both_ids() -> None:
    assert set(ENV_IDS.values()) <= set(gym.registry)
    for scene, env_id in sim_envs.ENV_IDS.items():
        env = gym.make(env_id, include_image=False)
        try:
            assert isinstance(env.unwrapped, ManipulationEnv)
            assert env.unwrapped.scene.name == scene
        finally:
            env.close()


# -- 2. determinism --------------------------------------------------------------------------------------------------
DETERMINISM_CASES = [
    # (scene, initial condition, skill whose noisy actions are replayed, steps)
    ("drawer", "closed", "open_then_grasp", 50),
    ("drawer", "blocked_by_object", "remove_blocker", 50),
    ("pick_place", "on_table", "pick_then_place", 40),
]
OTHER_EPISODE = {
    # an unrelated, contact-rich episode run between two repetitions: (initial condition, skill, seed)
    "drawer": ("blocked_by_object", "remove_blocker_open_grasp", 11),
    "pick_place": ("in_gripper", "place_in_tray", 11),
}


@pytest.mark.parametrize(("scene", "condition", "skill", "steps"), DETERMINISM_CASES)
def test_two_envs_same_seed_and_actions_give_identical_trajectories(
    make_env: EnvFactory, scene: str, condition: str, skill: str, steps: int
) -> None:
    actions = scripted_actions(scene, condition, skill, seed=3, steps=steps)
    a = rollout(make_env(scene, privileged_state=True), 3, condition, actions)
    b = rollout(make_env(scene, privileged_state=True), 3, condition, actions)
    assert_same_trajectory(a, b)
    # The replayed actions really move things, so equality is not that of two still scenes.
    assert not np.array_equal(a.observations[0]["privileged"], a.observations[-1]["privileged"])
    assert not np.array_equal(a.observations[0]["image"], a.observations[-1]["image"])


@pytest.mark.parametrize("scene", ["drawer", "pick_place"])
def test_reset_depends_on_the_seed_alone(make_env: EnvFactory, scene: str) -> None:
    """A seeded reset gives the same observation whatever reset came before it (no steps at all in between)."""
    env = make_env(scene, privileged_state=True)
    reference, _ = env.reset(seed=123)
    for seed in range(25):
        env.reset(seed=seed)
        obs, _ = env.reset(seed=123)
        for key in reference:
            assert obs[key].tobytes() == reference[key].tobytes(), f"{key!r} after a reset with seed {seed}"


@pytest.mark.parametrize(
    ("scene", "condition", "skill", "steps"),
    [
        DETERMINISM_CASES[0],
        DETERMINISM_CASES[1],
        DETERMINISM_CASES[2],
    ],
)
def test_same_env_repeats_an_episode_after_other_episodes(
    make_env: EnvFactory, scene: str, condition: str, skill: str, steps: int
) -> None:
    actions = scripted_actions(scene, condition, skill, seed=3, steps=steps)
    env = make_env(scene, privileged_state=True)
    first = rollout(env, 3, condition, actions)
    assert_same_trajectory(first, rollout(env, 3, condition, actions))
    # A different scripted episode in between, then one of random actions from every initial condition.
    other_condition, other_skill, other_seed = OTHER_EPISODE[scene]
    other_steps = env.scene.horizons[other_condition]
    other_actions = scripted_actions(scene, other_condition, other_skill, other_seed, other_steps)
    rollout(env, other_seed, other_condition, other_actions)
    assert_same_trajectory(first, rollout(env, 3, condition, actions))
    env.action_space.seed(0)
    for other_condition in env.scene.initial_conditions:
        rollout(env, 7, other_condition, [env.action_space.sample() for _ in range(20)])
    assert_same_trajectory(first, rollout(env, 3, condition, actions))


@pytest.mark.parametrize("other_scene", ["drawer", "pick_place"])
def test_interleaved_envs_do_not_interfere(make_env: EnvFactory, other_scene: str) -> None:
    actions_a = scripted_actions("drawer", "closed", "open_then_grasp", seed=5, steps=50)
    other_condition, other_skill, other_seed = OTHER_EPISODE[other_scene]
    actions_b = scripted_actions(other_scene, other_condition, other_skill, other_seed, steps=40)
    alone_a = rollout(make_env("drawer", privileged_state=True), 5, "closed", actions_a)
    alone_b = rollout(make_env(other_scene, privileged_state=True), other_seed, other_condition, actions_b)

    env_a = make_env("drawer", privileged_state=True)
    env_b = make_env(other_scene, privileged_state=True)
    a = Trajectory(observations=[reset_to(env_a, 5, "closed")])
    b = Trajectory(observations=[reset_to(env_b, other_seed, other_condition)])
    for t in range(max(len(actions_a), len(actions_b))):
        if t < len(actions_a):
            step_into(env_a, a, actions_a[t])
        if t < len(actions_b):
            step_into(env_b, b, actions_b[t])
    assert_same_trajectory(alone_a, a)
    assert_same_trajectory(alone_b, b)


# -- 3. initial conditions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_open_condition_has_bottom_drawer_extended(drawer_env: ManipulationEnv, seed: int) -> None:
    reset_to(drawer_env, seed, "open")
    s = drawer_env.scene_state()
    assert s.bottom_drawer >= 0.11
    assert drawer_env.scene.bottom_open(s)
    assert s.top_drawer == pytest.approx(0.0, abs=0.005)
    # The object came out with the drawer: it lies in front of the cabinet, within the arm's workspace.
    assert s.object_pos[0] < D.FRONT
    assert not s.object_held


def test_ajar_condition_has_the_bottom_drawer_part_way_out_with_the_object_in_it(drawer_env: ManipulationEnv) -> None:
    openings = []
    for seed in SEEDS:
        reset_to(drawer_env, seed, "ajar")
        s = drawer_env.scene_state()
        assert D.AJAR[0] - 0.002 <= s.bottom_drawer <= D.AJAR[1] + 0.002, seed
        assert s.top_drawer == pytest.approx(0.0, abs=0.005)
        assert D.FRONT - s.bottom_drawer < s.object_pos[0] < D.FRONT - s.bottom_drawer + 0.05  # in the drawer's front
        assert s.object_pos[2] < D.DRAWER_TOP_Z and not s.object_held
        openings.append(s.bottom_drawer)
    assert np.ptp(openings) > 0.005  # drawn, not one opening


@pytest.mark.parametrize("seed", SEEDS)
def test_closed_condition_has_both_drawers_shut(drawer_env: ManipulationEnv, seed: int) -> None:
    reset_to(drawer_env, seed, "closed")
    s = drawer_env.scene_state()
    assert s.bottom_drawer == pytest.approx(0.0, abs=0.005)
    assert s.top_drawer == pytest.approx(0.0, abs=0.005)
    assert not drawer_env.scene.bottom_open(s)
    assert drawer_env.scene.blocker_clear(s)
    assert s.object_pos[0] > D.FRONT  # inside the cabinet


@pytest.mark.parametrize("seed", SEEDS)
def test_blocked_condition_has_top_drawer_open_and_bottom_closed(drawer_env: ManipulationEnv, seed: int) -> None:
    reset_to(drawer_env, seed, "blocked")
    s = drawer_env.scene_state()
    assert s.top_drawer >= 0.12
    assert not drawer_env.scene.top_closed(s)
    assert s.bottom_drawer == pytest.approx(0.0, abs=0.005)
    assert drawer_env.scene.blocker_clear(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_blocked_by_object_condition_has_blocker_in_front_of_bottom_drawer(
    drawer_env: ManipulationEnv, seed: int
) -> None:
    reset_to(drawer_env, seed, "blocked_by_object")
    s = drawer_env.scene_state()
    assert not drawer_env.scene.blocker_clear(s)
    assert not s.blocker_held
    # Standing upright on the table, between the bottom drawer's handle and its face.
    assert s.blocker_pos[2] == pytest.approx(D.BLOCKER_HALF[2], abs=0.003)
    assert D.FRONT - 0.04 < s.blocker_pos[0] < D.FRONT
    assert abs(s.blocker_pos[1] - D.BOTTOM_HANDLE_Y) < 0.02
    assert s.bottom_drawer == pytest.approx(0.0, abs=0.005)
    assert s.top_drawer == pytest.approx(0.0, abs=0.005)


@pytest.mark.parametrize("condition", ["open_blocker_aside", "closed_blocker_aside", "closed_after_removal"])
def test_blocker_aside_conditions_stand_the_blocker_on_the_table_out_of_the_way(
    drawer_env: ManipulationEnv, condition: str
) -> None:
    positions = []
    for seed in SEEDS:
        obs = reset_to(drawer_env, seed, condition)
        s = drawer_env.scene_state()
        assert drawer_env.scene.blocker_clear(s)
        assert not s.blocker_held
        assert s.blocker_pos[2] == pytest.approx(D.BLOCKER_HALF[2], abs=0.003)  # upright on the table
        assert np.abs(s.blocker_pos[:2] - D.BLOCKER_ASIDE).max() <= D.BLOCKER_ASIDE_SPREAD + 0.002
        np.testing.assert_allclose(obs["privileged"][-3:], s.blocker_pos, atol=1e-6)  # reported where it stands
        assert drawer_env.scene.bottom_open(s) == (condition == "open_blocker_aside")
        positions.append(s.blocker_pos[:2])
    assert np.ptp(np.array(positions), axis=0).min() > 0.005  # spread, not one spot


def test_after_removal_starts_the_arm_where_a_removal_leaves_it_and_no_other_condition_does(
    drawer_env: ManipulationEnv,
) -> None:
    """`closed_after_removal` draws the TCP and yaw around the removal's end (open gripper, drawer closed); the other
    conditions keep the usual start box and yaw 0, which keeps their collected data as it was."""
    low, high = (np.array(corner) for corner in D.AFTER_REMOVAL_TCP)
    tcps, yaws = [], []
    for seed in range(8):
        reset_to(drawer_env, seed, "closed_after_removal")
        s = drawer_env.scene_state()
        assert np.all(s.tcp >= low - 0.005) and np.all(s.tcp <= high + 0.005), s.tcp
        assert abs(s.yaw) <= D.AFTER_REMOVAL_YAW + 0.01
        assert not s.gripper_closed and s.finger_gap > 0.06
        assert not drawer_env.scene.bottom_open(s) and s.bottom_drawer == pytest.approx(0.0, abs=0.005)
        tcps.append(s.tcp)
        yaws.append(s.yaw)
    assert np.ptp(np.array(tcps), axis=0).min() > 0.02 and np.ptp(yaws) > 0.3  # drawn, not one pose
    for condition in ("closed", "closed_blocker_aside"):
        reset_to(drawer_env, 0, condition)
        s = drawer_env.scene_state()
        assert s.tcp[1] >= -0.08 - 0.005 and s.yaw == pytest.approx(0.0, abs=1e-3), condition


@pytest.mark.parametrize("seed", SEEDS)
def test_in_gripper_condition_holds_object_under_a_closed_gripper(pick_place_env: ManipulationEnv, seed: int) -> None:
    reset_to(pick_place_env, seed, "in_gripper")
    s = pick_place_env.scene_state()
    assert s.object_held
    assert s.gripper_closed
    for _ in range(5):
        pick_place_env.step(STILL_CLOSED)
        s = pick_place_env.scene_state()
        assert s.object_held
        assert np.linalg.norm(s.object_pos - s.tcp) < 0.02  # still between the fingers, not dropped
    assert s.object_pos[2] > 0.06  # in the air, well above the table


@pytest.mark.parametrize("seed", SEEDS)
def test_on_table_condition_has_object_resting_on_table(pick_place_env: ManipulationEnv, seed: int) -> None:
    reset_to(pick_place_env, seed, "on_table")
    start = pick_place_env.scene_state()
    assert not start.object_held
    assert not start.gripper_closed
    assert start.object_pos[2] == pytest.approx(P.OBJECT_HALF, abs=0.002)
    assert abs(start.object_quat[0]) < 0.01 and abs(start.object_quat[1]) < 0.01  # flat on a face
    # Resting: it does not move while the arm stays still.
    for _ in range(3):
        pick_place_env.step(STILL_OPEN)
    np.testing.assert_allclose(pick_place_env.scene_state().object_pos, start.object_pos, atol=5e-4)
    # Outside the tray, so the task is not solved at the start.
    assert not pick_place_env.scene.success(start)


@pytest.mark.parametrize("condition", PickPlaceScene.initial_conditions)
def test_tray_stands_on_the_table(pick_place_env: ManipulationEnv, condition: str) -> None:
    reset_to(pick_place_env, 0, condition)
    (_, _, bottom), _ = pick_place_env.client.getAABB(pick_place_env.scene.tray, -1)
    assert bottom > -0.002


@pytest.mark.parametrize(
    "condition",
    ["blocked", "blocked_by_object"],
)
def test_blocked_conditions_keep_open_bottom_drawer_from_opening(drawer_env: ManipulationEnv, condition: str) -> None:
    for seed in SEEDS:
        run_skill_episode(drawer_env, "open_bottom_drawer", seed=seed, initial_condition=condition)
        assert drawer_env.scene_state().bottom_drawer < 0.03, f"seed {seed}"


def test_closed_condition_lets_open_bottom_drawer_open(drawer_env: ManipulationEnv) -> None:
    """The contrast to the blocked conditions: the same skill on the same seeds opens a drawer nothing blocks."""
    for seed in SEEDS:
        result = run_skill_episode(drawer_env, "open_bottom_drawer", seed=seed, initial_condition="closed")
        assert drawer_env.scene_state().bottom_drawer >= D.OPEN_THRESHOLD, f"seed {seed}"
        assert result.success


def press_and_close(env: ManipulationEnv, seed: int) -> tuple[float, float]:
    """From the open drawer: open gripper over the object, descend at full speed past it, then close while still
    pressing down (a policy's failing grasp). Returns (finger gap at the end, largest finger force on the cabinet)."""
    reset_to(env, seed, "open")

    def move_to(target: NDArray[np.float64], gripper: float, steps: int) -> None:
        for _ in range(steps):
            delta = np.clip((target - env.scene_state().tcp) / ACTION_SCALES[0], -1.0, 1.0)
            env.step(np.array([*delta, 0.0, gripper], dtype=np.float32))

    s = env.scene_state()
    move_to(np.array([*s.object_pos[:2], 0.12]), -1.0, 10)
    move_to(np.array([*s.object_pos[:2], -0.05]), -1.0, 6)  # aims below the floor: the arm presses on it
    force = 0.0
    for _ in range(8):
        env.step(np.array([0.0, 0.0, -0.3, 0.0, 1.0], dtype=np.float32))
        for finger in env.arm.finger_joints:
            contacts = env.client.getContactPoints(bodyA=env.arm.body, bodyB=env.scene.cabinet, linkIndexA=finger)
            force = max(force, sum(c[9] for c in contacts))
    return env.scene_state().finger_gap, force


def test_fingertips_stop_at_the_drawer_floor_and_close_on_the_object(make_env: EnvFactory) -> None:
    """v1 of the drawer: the arm cannot drive the fingertips into the drawer's floor, so a grasp that closes while
    pressing down still closes on the object. v0 (the table's floor) jams them: the contrast shows the test bites."""
    assert make_env("drawer").spec_record().workspace_low[2] == pytest.approx(D.DRAWER_FLOOR_Z + FINGERTIP_PAST_TCP)
    for seed in SEEDS:
        gap, force = press_and_close(make_env("drawer", include_image=False, privileged_state=True), seed)
        assert gap < 2 * D.OBJECT_HALF + 0.004 and force < 25.0, f"seed {seed}: gap {gap:.3f} m, force {force:.0f} N"
    gap, force = press_and_close(make_env("drawer", include_image=False, privileged_state=True, tcp_floor=0.015), 0)
    assert gap > 0.045 and force > 50.0, f"v0: gap {gap:.3f} m, force {force:.0f} N"


def test_drawer_v0_keeps_the_tables_floor() -> None:
    env = gym.make("robot_rl/Drawer-v0", include_image=False)
    try:
        assert env.unwrapped.spec_record().workspace_low[2] == 0.015  # type: ignore[attr-defined]
    finally:
        env.close()


@pytest.mark.parametrize("floor", [0.5, float("nan")])
def test_tcp_floor_above_the_workspace_or_nan_is_refused(floor: float) -> None:
    with pytest.raises(ValueError, match="tcp_floor"):
        ManipulationEnv("drawer", include_image=False, tcp_floor=floor)


# -- 4. reward, success, termination, truncation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scene", "condition", "skill"),
    [("drawer", "closed", "open_then_grasp"), ("pick_place", "on_table", "pick_then_place")],
)
def test_reward_is_one_exactly_on_success_steps(make_env: EnvFactory, scene: str, condition: str, skill: str) -> None:
    env = make_env(scene, include_image=False)
    traj = rollout(
        env, 0, condition, scripted_actions(scene, condition, skill, seed=0, steps=env.scene.horizons[condition])
    )
    for reward, success in zip(traj.rewards, traj.successes, strict=True):
        assert type(reward) is float
        assert reward == (1.0 if success else 0.0)
    # The episode passes through both kinds of step, so the check above saw both.
    assert traj.successes[0] is False
    assert traj.successes[-1] is True


@pytest.mark.parametrize("seed", SEEDS)
def test_grasp_from_drawer_ends_with_reward(drawer_env: ManipulationEnv, seed: int) -> None:
    rng = np.random.default_rng(seed)
    policy = ScriptedPolicy(make_skill("grasp_from_drawer", rng), rng, noise=0.1)
    reset_to(drawer_env, seed, "open")
    truncated, reward = False, 0.0
    while not truncated:
        _, reward, _, truncated, _ = drawer_env.step(policy(drawer_env.scene_state()))
    assert reward == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_random_actions_from_closed_get_no_reward(make_env: EnvFactory, seed: int) -> None:
    env = make_env("drawer", include_image=False)
    env.action_space.seed(seed)
    traj = rollout(env, seed, "closed", [env.action_space.sample() for _ in range(D.horizons["closed"])])
    assert traj.rewards == [0.0] * D.horizons["closed"]
    assert traj.truncated[-1]


@pytest.mark.parametrize("seed", SEEDS)
def test_place_in_tray_from_in_gripper_ends_with_reward(pick_place_env: ManipulationEnv, seed: int) -> None:
    rng = np.random.default_rng(seed)
    policy = ScriptedPolicy(make_skill("place_in_tray", rng), rng, noise=0.1)
    reset_to(pick_place_env, seed, "in_gripper")
    truncated, reward = False, 0.0
    while not truncated:
        _, reward, _, truncated, _ = pick_place_env.step(policy(pick_place_env.scene_state()))
    assert reward == 1.0
    assert not pick_place_env.scene_state().object_held


@pytest.mark.parametrize("seed", SEEDS)
def test_object_held_over_or_in_tray_gets_no_reward_until_released(pick_place_env: ManipulationEnv, seed: int) -> None:
    reset_to(pick_place_env, seed, "in_gripper")
    tray = pick_place_env.scene_state().tray_pos
    hovering = drive_to(pick_place_env, (tray[0], tray[1], 0.1), gripper=1.0, steps=12)
    lowered = drive_to(pick_place_env, (tray[0], tray[1], 0.025), gripper=1.0, steps=8)
    assert all(reward == 0.0 and not success for reward, success in hovering + lowered)
    # Held, and otherwise where success needs it: inside the tray's walls and down at its floor.
    s = pick_place_env.scene_state()
    assert s.object_held
    assert np.all(np.abs(s.object_pos[:2] - s.tray_pos[:2]) < P.TRAY_INNER_HALF - 0.01)
    assert s.object_pos[2] < 0.04
    # Letting go is all it takes.
    released = drive_to(pick_place_env, (s.tcp[0], s.tcp[1], s.tcp[2]), gripper=-1.0, steps=4)
    assert released[-1] == (1.0, True)


def test_terminate_on_success_ends_episode_on_first_success_step(make_env: EnvFactory) -> None:
    env = make_env("drawer", include_image=False, terminate_on_success=True)
    rng = np.random.default_rng(0)
    policy = ScriptedPolicy(make_skill("grasp_from_drawer", rng), rng, noise=0.1)
    reset_to(env, 0, "open")
    steps = 0
    while True:
        _, reward, terminated, truncated, info = env.step(policy(env.scene_state()))
        steps += 1
        assert terminated == info["success"], f"step {steps}"
        if terminated or truncated:
            break
    assert terminated and not truncated
    assert reward == 1.0
    assert steps < env.horizon


def test_without_terminate_on_success_success_does_not_terminate(make_env: EnvFactory) -> None:
    env = make_env("drawer", include_image=False)
    traj = rollout(env, 0, "open", scripted_actions("drawer", "open", "grasp_from_drawer", 0, D.horizons["open"]))
    assert any(traj.successes)
    assert not any(traj.terminated)
    assert traj.truncated[-1]


def steps_until_truncated(env: ManipulationEnv, seed: int, condition: str, limit: int = 200) -> int:
    """Step with still actions until `truncated`; asserts no step before it terminated or truncated."""
    reset_to(env, seed, condition)
    for step in range(1, limit + 1):
        _, _, terminated, truncated, info = env.step(STILL_OPEN)
        assert not terminated
        assert info["step"] == step
        if truncated:
            return step
    raise AssertionError(f"no truncation within {limit} steps")


@pytest.mark.parametrize(
    ("scene", "condition", "horizon"),
    [
        ("drawer", "open", 50),
        ("drawer", "closed", 50),
        ("drawer", "blocked", 80),
        ("drawer", "blocked_by_object", 80),
        ("pick_place", "on_table", 40),
        ("pick_place", "in_gripper", 40),
    ],
)
def test_truncation_at_the_initial_conditions_horizon(
    make_env: EnvFactory, scene: str, condition: str, horizon: int
) -> None:
    env = make_env(scene, include_image=False)
    assert steps_until_truncated(env, 0, condition) == horizon
    assert env.horizon == horizon


def test_horizon_follows_each_episodes_condition_in_one_env(drawer_env: ManipulationEnv) -> None:
    assert steps_until_truncated(drawer_env, 0, "closed") == 50
    assert steps_until_truncated(drawer_env, 0, "blocked") == 80
    assert steps_until_truncated(drawer_env, 0, "closed") == 50


@pytest.mark.parametrize("condition", ["closed", "blocked"])
def test_max_episode_steps_overrides_horizon(make_env: EnvFactory, condition: str) -> None:
    env = make_env("drawer", include_image=False, max_episode_steps=7)
    assert steps_until_truncated(env, 0, condition) == 7
    assert env.spec_record().horizons == dict.fromkeys(D.initial_conditions, 7)


def test_reset_without_option_draws_from_the_envs_conditions(make_env: EnvFactory) -> None:
    env = make_env("drawer", include_image=False, initial_conditions=["blocked", "open"])
    drawn = {env.reset(seed=seed)[1]["initial_condition"] for seed in range(20)}
    assert drawn == {"blocked", "open"}
    single = make_env("drawer", include_image=False, initial_conditions="blocked_by_object")
    assert {single.reset(seed=seed)[1]["initial_condition"] for seed in range(5)} == {"blocked_by_object"}


# -- 5. invalid arguments --------------------------------------------------------------------------------------------
def test_unknown_scene_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scene 'kitchen'"):
        ManipulationEnv("kitchen")


def test_unknown_initial_condition_is_rejected_by_constructor() -> None:
    with pytest.raises(ValueError, match="unknown initial condition 'in_gripper' for scene 'drawer'"):
        ManipulationEnv("drawer", initial_conditions=("open", "in_gripper"))
    with pytest.raises(ValueError, match="initial_conditions is empty"):
        ManipulationEnv("drawer", initial_conditions=())


def test_unknown_initial_condition_is_rejected_by_reset(drawer_env: ManipulationEnv) -> None:
    with pytest.raises(ValueError, match="unknown initial condition 'half_open'"):
        drawer_env.reset(seed=0, options={"initial_condition": "half_open"})


def test_unknown_reset_option_is_rejected(drawer_env: ManipulationEnv) -> None:
    with pytest.raises(ValueError, match=r"unknown reset options \['condition'\]"):
        drawer_env.reset(seed=0, options={"condition": "open"})


@pytest.mark.parametrize("image_size", [0, 8, 5000, (48,), "48", (48, 8), (48, 48, 3)])
def test_bad_image_size_is_rejected(image_size: Any) -> None:
    with pytest.raises(ValueError, match="image_size must be"):
        ManipulationEnv("drawer", image_size=image_size)


def test_bad_max_episode_steps_and_render_mode_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_episode_steps must be >= 1"):
        ManipulationEnv("drawer", max_episode_steps=0)
    with pytest.raises(ValueError, match="render_mode must be"):
        ManipulationEnv("drawer", render_mode="human")


@pytest.mark.parametrize("action", [np.zeros(4), np.zeros(6), np.zeros((1, 5)), np.zeros(())])
def test_action_of_wrong_shape_is_rejected(drawer_env: ManipulationEnv, action: NDArray[np.float64]) -> None:
    reset_to(drawer_env, 0, "closed")
    with pytest.raises(ValueError, match=r"action must have shape \(5,\)"):
        drawer_env.step(action.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_action_with_nan_or_inf_is_rejected(drawer_env: ManipulationEnv, bad: float) -> None:
    reset_to(drawer_env, 0, "closed")
    action = np.zeros(5, dtype=np.float32)
    action[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        drawer_env.step(action)


def test_step_before_reset_is_rejected(make_env: EnvFactory) -> None:
    env = make_env("drawer", include_image=False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(STILL_OPEN)
    with pytest.raises(RuntimeError, match="reset"):
        env.scene_state()


def test_out_of_range_actions_are_clipped_not_rejected(make_env: EnvFactory) -> None:
    """Actions beyond [-1, 1] move the arm exactly as far as the bound does."""
    big, unit = make_env("drawer", include_image=False), make_env("drawer", include_image=False)
    for env, scale in ((big, 5.0), (unit, 1.0)):
        reset_to(env, 0, "closed")
        env.step(np.array([scale, 0, 0, 0, 0], dtype=np.float32))
    assert np.array_equal(big.scene_state().tcp, unit.scene_state().tcp)


# -- 6. observations and the spec record -----------------------------------------------------------------------------
@pytest.mark.parametrize(("image_size", "shape"), [(64, (64, 64, 3)), ((40, 56), (40, 56, 3)), (48, (48, 48, 3))])
def test_image_honours_image_size(
    make_env: EnvFactory, image_size: int | tuple[int, int], shape: tuple[int, ...]
) -> None:
    env = make_env("drawer", image_size=image_size)
    assert env.observation_space["image"].shape == shape
    obs = reset_to(env, 0, "open")
    for o in (obs, env.step(STILL_OPEN)[0]):
        assert o["image"].dtype == np.uint8
        assert o["image"].shape == shape
        assert env.observation_space.contains(o)
        assert len(np.unique(o["image"].reshape(-1, 3), axis=0)) > 3  # a scene, not a blank frame


@pytest.mark.parametrize(
    ("scene", "condition", "privileged_len"),
    [("drawer", "open", 12), ("drawer", "blocked", 12), ("pick_place", "on_table", 10)],  # drawers apart: order shows
)
def test_state_and_privileged_vectors(make_env: EnvFactory, scene: str, condition: str, privileged_len: int) -> None:
    plain = make_env(scene)
    obs = plain.reset(seed=0)[0]
    assert set(obs) == {"image", "state"}
    assert obs["state"].dtype == np.float32
    assert obs["state"].shape == (len(STATE_NAMES),) == (5,)

    env = make_env(scene, privileged_state=True, include_image=False)
    obs = reset_to(env, 0, condition)
    assert set(obs) == {"state", "privileged"}
    assert obs["privileged"].dtype == np.float32
    assert obs["privileged"].shape == (privileged_len,) == (len(env.scene.privileged_names),)
    assert env.observation_space.contains(obs)
    # The vectors say what their names claim.
    s = env.scene_state()
    np.testing.assert_allclose(obs["state"], [*s.tcp, s.yaw, s.finger_gap], atol=1e-6)
    named = dict(zip(env.scene.privileged_names, obs["privileged"], strict=True))
    np.testing.assert_allclose([named["object_x"], named["object_y"], named["object_z"]], s.object_pos, atol=1e-6)
    if scene == "drawer":
        assert named["bottom_drawer"] == pytest.approx(s.bottom_drawer, abs=1e-6)
        assert named["top_drawer"] == pytest.approx(s.top_drawer, abs=1e-6)
        np.testing.assert_allclose(
            [named["blocker_x"], named["blocker_y"], named["blocker_z"]], s.blocker_pos, atol=1e-6
        )
    else:
        np.testing.assert_allclose([named["tray_x"], named["tray_y"], named["tray_z"]], s.tray_pos, atol=1e-6)


def test_spec_record_is_json_and_describes_the_env(make_env: EnvFactory) -> None:
    env = make_env("pick_place", image_size=(40, 56), privileged_state=True)
    record = env.spec_record().to_dict()
    decoded = json.loads(json.dumps(record))
    assert decoded["action_names"] == ["dx", "dy", "dz", "dyaw", "gripper"] == list(ACTION_NAMES)
    assert decoded["action_scales"] == list(ACTION_SCALES)
    assert len(decoded["action_units"]) == len(ACTION_NAMES)
    assert decoded["state_names"] == list(STATE_NAMES)
    assert decoded["image_shape"] == [40, 56, 3]
    assert decoded["privileged_names"] == list(P.privileged_names)
    assert decoded["horizons"] == {"on_table": 40, "in_gripper": 40}
    assert decoded["scene"] == "pick_place"

    bare = make_env("drawer", include_image=False).spec_record().to_dict()
    assert bare["image_shape"] is None
    assert bare["privileged_names"] is None
    assert json.loads(json.dumps(bare))["horizons"] == D.horizons


def test_render_gives_frames_only_in_rgb_array_mode(make_env: EnvFactory) -> None:
    env = make_env("drawer", include_image=False, render_mode="rgb_array", render_size=96)
    env.reset(seed=0)
    frame = env.render()
    assert frame is not None
    assert frame.dtype == np.uint8
    assert frame.shape == (96, 96, 3)
    quiet = make_env("drawer", include_image=False)
    quiet.reset(seed=0)
    assert quiet.render() is None


# -- 7. camera -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_object_visible_in_open_drawer_and_hidden_in_closed(make_env: EnvFactory, seed: int) -> None:
    env = make_env("drawer", image_size=48)
    assert red_pixels(reset_to(env, seed, "open")["image"]) >= 2
    assert red_pixels(reset_to(env, seed, "closed")["image"]) == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_object_visible_on_table(make_env: EnvFactory, seed: int) -> None:
    env = make_env("pick_place", image_size=48)
    assert red_pixels(reset_to(env, seed, "on_table")["image"]) >= 5


@pytest.mark.parametrize("seed", SEEDS)
def test_blocker_visible_only_when_blocking(make_env: EnvFactory, seed: int) -> None:
    env = make_env("drawer", image_size=48)
    assert blue_pixels(reset_to(env, seed, "blocked_by_object")["image"]) >= 3
    assert blue_pixels(reset_to(env, seed, "closed")["image"]) == 0


@pytest.mark.parametrize(
    ("episodes", "steps"),
    [(8, 25), pytest.param(60, None, marks=pytest.mark.slow)],  # the long one caught a 4-in-60 history dependence
)
def test_episodes_do_not_depend_on_the_history_of_the_env(episodes: int, steps: int | None) -> None:
    """Randomised histories: each episode in a long-lived env equals the same episode in a fresh env.

    Collection spreads episodes over workers differently for different worker counts, so an episode must depend on
    its seed and actions alone. Scripted skills with suboptimal actions make contact-rich, varied histories.
    """
    rng = np.random.default_rng(0)
    skills = [name for name, s in SKILLS.items() if s.scene == "drawer"]

    def episode(env: ManipulationEnv, seed: int, skill: str, condition: str) -> list[bytes]:
        policy_rng = np.random.default_rng(seed)
        policy = ScriptedPolicy(make_skill(skill, policy_rng), policy_rng, noise=0.1, suboptimal_prob=0.2)
        obs = reset_to(env, seed, condition)
        out = [obs["state"].tobytes() + obs["privileged"].tobytes()]
        for _ in range(steps or env.horizon):
            obs, *_ = env.step(policy(env.scene_state()))
            out.append(obs["state"].tobytes() + obs["privileged"].tobytes())
        return out

    long_lived = ManipulationEnv("drawer", include_image=False, privileged_state=True)
    try:
        for _ in range(episodes):
            skill = skills[int(rng.integers(len(skills)))]
            condition = DrawerScene.initial_conditions[int(rng.integers(4))]
            seed = int(rng.integers(1000))
            fresh = ManipulationEnv("drawer", include_image=False, privileged_state=True)
            try:
                expected = episode(fresh, seed, skill, condition)
            finally:
                fresh.close()
            assert episode(long_lived, seed, skill, condition) == expected, (skill, condition, seed)
    finally:
        long_lived.close()

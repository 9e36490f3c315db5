"""Evaluation rollouts through gymnasium ids, in one process and in workers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from numpy.typing import NDArray

from robot_rl.train.evaluate import (
    EVAL_SEED,
    EpisodeOutcome,
    EvalConfig,
    EvalResult,
    evaluate,
    evaluate_parallel,
    make_env,
    run_episode,
)
from sim_envs import ENV_IDS
from sim_envs.scenes import DrawerScene, SceneState
from sim_envs.skills import CLOSE, TRAVEL_Z, OpenBottomDrawer, Skill, SkillChain, Waypoint

PLACE = EvalConfig(
    env_id="robot_rl/PickPlace-v0",
    env_kwargs={"privileged_state": True, "image_size": 32},
    initial_condition="in_gripper",
    episodes=4,
    workers=2,
    videos=1,
)


class ZeroPolicy:
    def act(self, observation: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        return np.zeros(5, np.float32)


class CarryToTray:
    """Reads only the observation: moves the TCP over the tray (privileged tray x, y), lowers it, lets go."""

    def act(self, observation: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        tcp, tray = observation["state"][:3], observation["privileged"][7:10]
        target = np.array([tray[0], tray[1], 0.07])
        action = np.zeros(5, np.float32)
        action[:3] = np.clip((target - tcp) / 0.03, -1, 1)
        action[4] = -1.0 if np.linalg.norm(target - tcp) < 0.015 else 1.0
        return action


def make(kind: str) -> Any:
    return {"zero": ZeroPolicy, "carry": CarryToTray}[kind]()


def test_success_is_measured_at_the_final_step(tmp_path: Path) -> None:
    good = evaluate(CarryToTray(), PLACE, out=tmp_path)
    assert good.success_rate == 1.0 and good.ever_success_rate == 1.0
    assert all(e.steps == 40 and e.episode_return > 0 for e in good.episodes)
    assert len(good.videos) == 1 and Path(good.videos[0]).stat().st_size > 0
    idle = evaluate(ZeroPolicy(), PLACE)
    assert idle.success_rate == 0.0 and idle.mean_return == 0.0
    assert [e.seed for e in idle.episodes] == list(range(PLACE.seed, PLACE.seed + 4))


def test_workers_give_the_same_outcomes_as_one_process() -> None:
    one = evaluate(CarryToTray(), PLACE)
    two = evaluate_parallel(functools.partial(make, "carry"), PLACE)
    assert [(e.seed, e.success, e.steps, e.episode_return) for e in two.episodes] == [
        (e.seed, e.success, e.steps, e.episode_return) for e in one.episodes
    ]
    assert two.summary()["eval/success"] == one.success_rate


class Scripted:
    """Runs a scripted skill on the env's privileged scene state; once the skill is done, stays put."""

    def __init__(self, env: Any, skill: Skill) -> None:
        self.env, self.skill = env, skill

    def act(self, observation: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        return self.skill.act(self.env.unwrapped.scene_state()).astype(np.float32)


class PushBottomShut(Skill):
    """From above, go down in front of the open bottom drawer's face, beside its handle, and push it shut."""

    PUSH_Y = DrawerScene.CENTER_Y + 0.04

    def waypoint(self, s: SceneState) -> Waypoint | None:
        x = DrawerScene.FRONT - 0.045 - s.bottom_drawer  # 3.5 cm in front of the face
        match self.phase:
            case 0:
                return Waypoint(np.array([x, self.PUSH_Y, TRAVEL_Z]), CLOSE, tol=0.012)
            case 1:
                return Waypoint(np.array([x, self.PUSH_Y, 0.05]), CLOSE, tol=0.01)
            case 2:
                push_to = np.array([DrawerScene.FRONT - 0.008, self.PUSH_Y, 0.05])
                return Waypoint(push_to, CLOSE, until=s.bottom_drawer < 0.03)
        return None


def test_milestones_say_where_failed_episodes_stopped() -> None:
    cfg = EvalConfig(env_id=ENV_IDS["drawer"], env_kwargs={"include_image": False}, initial_condition="closed")
    env = make_env(cfg)
    try:
        opened = run_episode(env, Scripted(env, OpenBottomDrawer()), EVAL_SEED, "closed", None)
        idle = run_episode(env, ZeroPolicy(), EVAL_SEED + 1, "closed", None)
        blocked = run_episode(env, ZeroPolicy(), EVAL_SEED, "blocked", None)
    finally:
        env.close()
    assert opened.reached == {"bottom_open": True, "object_held": False, "success": False}
    assert opened.stopped_at == "object_held"
    assert idle.stopped_at == "bottom_open" and not any(idle.reached.values())
    assert list(blocked.reached) == ["top_closed", "bottom_open", "object_held", "success"]
    assert blocked.stopped_at == "top_closed"

    result = EvalResult("closed", [opened, idle, idle], [])
    assert result.reached_rates() == {"bottom_open": 1 / 3, "object_held": 0.0, "success": 0.0}
    assert result.stopped_at() == {"bottom_open": 2, "object_held": 1, "success": 0}
    assert result.summary()["eval/reached/bottom_open"] == 1 / 3
    # when: the scripted opening holds the drawer open from some step on, before the horizon; idle episodes never
    assert 0 < opened.first_step["bottom_open"] < opened.steps and set(opened.first_step) == {"bottom_open"}
    assert idle.first_step == {}
    assert result.first_steps() == {"bottom_open": opened.first_step["bottom_open"]}
    assert result.to_dict()["first_step"] == result.first_steps()


def test_a_milestone_reached_and_then_undone_is_counted_as_undone() -> None:
    cfg = EvalConfig(env_id=ENV_IDS["drawer"], env_kwargs={"include_image": False}, initial_condition="closed")
    env = make_env(cfg)
    try:
        open_then_shut = Scripted(env, SkillChain("open_then_shut", [OpenBottomDrawer(), PushBottomShut()]))
        undone = run_episode(env, open_then_shut, EVAL_SEED, "closed", None)
        kept = run_episode(env, Scripted(env, OpenBottomDrawer()), EVAL_SEED, "closed", None)
    finally:
        env.close()
    assert undone.reached["bottom_open"] and not undone.final["bottom_open"]
    assert kept.reached["bottom_open"] and kept.final["bottom_open"]
    result = EvalResult("closed", [undone, kept], [])
    assert result.undone_rates() == {"bottom_open": 0.5, "object_held": 0.0, "success": 0.0}
    # Both stopped before the grasp: where an episode stopped does not tell the two apart, the undone rate does.
    assert undone.stopped_at == kept.stopped_at == "object_held"
    assert result.to_dict()["undone"] == result.undone_rates()


def test_an_episode_that_loses_its_success_stopped_after_it() -> None:
    lost = EpisodeOutcome(0, False, True, 40, 3.0, {"picked": True, "success": True})
    kept = EpisodeOutcome(1, True, True, 40, 5.0, {"picked": True, "success": True})
    assert lost.stopped_at == "success_lost" and kept.stopped_at is None
    assert EvalResult("on_table", [lost, kept], []).stopped_at() == {"picked": 0, "success": 0, "success_lost": 1}


class MalformedMilestones(gym.Wrapper[Any, Any, Any, Any]):
    """An env whose info reports milestones as a list, not a dict of name -> bool."""

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "milestones": ["bottom_open"]}


def test_malformed_milestones_from_an_env_are_refused_by_name() -> None:
    cfg = EvalConfig(env_id=ENV_IDS["drawer"], env_kwargs={"include_image": False}, initial_condition="closed")
    env = MalformedMilestones(make_env(cfg))
    try:
        with pytest.raises(ValueError, match=r"info\['milestones'\] must map milestone names to bools"):
            run_episode(env, ZeroPolicy(), EVAL_SEED, "closed", None)
    finally:
        env.close()

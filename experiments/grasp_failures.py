"""Why a drawer or pick-place policy's episodes fail: steps a deployed policy and sorts each episode by what happened.

`robot-rl eval` reports which milestone a failed episode never reached (drawer opened, object held, success) and
which it reached and then lost. This script looks inside the grasp, from the privileged scene state, on the same
evaluation seeds (1,000,000 + i):

- success;
- never closed at the object: the gripper never closed with the TCP within 25 mm of the object in x-y and less than
  15 mm above its centre, split by what the bottom drawer did: never opened (never past the scene's open threshold,
  0.11 m); opened, then pushed back in (it ends more than 1 cm in from the furthest it was opened: the arm pushed it,
  and the object moved back in with it); or opened and left open;
- fingers stalled open: after closing at the object the opening stays above 45 mm and moves by less than 3 mm
  (the fingers jam, e.g. on the drawer floor while the arm keeps pressing down);
- closed beside the object: the fingers close to under 20 mm without holding it;
- held, then dropped: the object was held at some step and is not held at the end;
- held at the end, not lifted out in time;
- other.

A pick-place policy (`robot_rl/PickPlace-v0`, from `on_table` by default) is sorted by the pick and the place instead:

- success;
- never held, closed beside it: the gripper closed with the TCP within 25 mm of the object in x-y and less than
  15 mm above its centre, and never held it;
- never held, closed away from it: the gripper closed, never that near (the x-y distance at the first close is
  printed);
- never closed: hovered at it (the TCP came that near, open), or never came near it;
- held, never lifted above the pick height (6 cm) by the end (too slow, or dropped on the way up);
- picked, then dropped outside the tray;
- picked, still held at the end (out of time), with the object over the tray or not;
- let go over the tray, not resting inside it (on a wall, bounced out): "released at the tray".

and prints the step of the pick (mean over the episodes that picked, successes and failures apart): with 40 steps
for the whole task, a slow pick leaves the place too little time. For each class whose episodes closed the gripper
it prints in how many the gripper closed, reopened and closed again (a retried grasp; the closed state is the
commanded one, so a close on the object counts).

For the successes and the stalls it prints the mean z command over the three steps after the grasp closes, the
TCP's height relative to the object's centre at that step, and the range over episodes of the largest normal force
a fingertip takes from the cabinet (the drawer floor) from then on (pybullet's contact points). Torch runs on one
thread, as in the evaluation workers: the thread count changes the actions' rounding, and that alone flips a few of
50 episodes' outcomes.

    python experiments/grasp_failures.py RUN [RUN ...] [--initial-condition COND] [--episodes 50] [--env-id ID]
"""

from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import sim_envs  # noqa: F401  (registers the environments)
from robot_rl.policy import Policy
from sim_envs.env import ManipulationEnv

ENV_IDS = ("robot_rl/Drawer-v0", "robot_rl/Drawer-v1", "robot_rl/PickPlace-v0")
EVAL_SEED = 1_000_000
"""Evaluation seeds are EVAL_SEED + i, as in the trainer's evaluations."""


def finger_press(scene_env: Any) -> float:
    """The larger of the two fingers' total normal force (N) from contacts with the cabinet (drawers included)."""
    client, arm, cabinet = scene_env.client, scene_env.arm, scene_env.scene.cabinet
    return max(
        float(sum(c[9] for c in client.getContactPoints(bodyA=arm.body, bodyB=cabinet, linkIndexA=finger)))
        for finger in arm.finger_joints
    )


PUSHED_BACK = 0.01
"""A drawer that ends more than this (m) in from the furthest it was opened was pushed back in."""


def never_closed(scene_env: Any, drawer: list[float]) -> str:
    """The class of an episode that never closed the gripper at the object, by its bottom drawer's openings."""
    if max(drawer) < scene_env.scene.OPEN_THRESHOLD:
        return "never closed at the object: drawer never opened"
    if drawer[-1] < max(drawer) - PUSHED_BACK:
        return "never closed at the object: drawer opened, pushed back in"
    return "never closed at the object: drawer left open"


def classify(policy: Policy, env: gym.Env[Any, Any], seed: int, condition: str) -> tuple[str, float, float, float]:
    """One episode: (its class, mean z command over the 3 steps after closing at the object, TCP z - object z there,
    the largest finger-on-cabinet force from then to the end)."""
    obs, info = env.reset(seed=seed, options={"initial_condition": condition})  # as `robot-rl eval` resets
    scene_env: Any = env.unwrapped  # the ManipulationEnv under gymnasium's wrappers
    gaps, closed_near, held, dz, rel_z, press_n, drawer = [], [], [], [], [], [], []
    success = False
    for _ in range(scene_env.horizon):
        action = policy.act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        s = scene_env.scene_state()
        offset = s.tcp - s.object_pos
        near = bool(np.hypot(offset[0], offset[1]) < 0.025 and offset[2] < 0.015)
        gaps.append(s.finger_gap)
        closed_near.append(s.gripper_closed and near)
        held.append(s.object_held)
        dz.append(float(action[2]))
        rel_z.append(float(offset[2]))
        press_n.append(finger_press(scene_env))
        drawer.append(s.bottom_drawer)
        success = success or bool(info.get("success", False))
        if success or terminated or truncated:  # as the evaluations, which end an episode at its success
            break
    if not any(closed_near):
        return ("success" if success else never_closed(scene_env, drawer)), float("nan"), float("nan"), float("nan")
    k = closed_near.index(True)
    press, height, force = float(np.mean(dz[k : k + 3])), rel_z[k], max(press_n[k:])
    after = np.array(gaps[k + 3 : k + 8])
    if success:
        kind = "success"
    elif any(held):
        kind = "held at the end, not lifted out in time" if held[-1] else "held, then dropped"
    elif len(after) >= 3 and np.ptp(after) < 0.003 and after[-1] > 0.045:
        kind = "fingers stalled open"
    elif min(gaps[k:]) < 0.02:
        kind = "closed beside the object"
    else:
        kind = "other"
    return kind, press, height, force


PICK_CONDITION = "on_table"


def classify_pick_place(
    policy: Policy, env: gym.Env[Any, Any], seed: int, condition: str
) -> tuple[str, float, float, int]:
    """One pick-place episode: (its class, the step at which the object was first picked, the TCP's x-y distance
    from the object when the gripper first closed, nan where it never did; how many times the gripper closed, a
    close after a reopening counting again)."""
    obs, info = env.reset(seed=seed, options={"initial_condition": condition})
    scene_env: Any = env.unwrapped
    scene = scene_env.scene
    closed_near, reached, held, picked, in_tray_xy, closed_at = [], [], [], [], [], []
    success = False
    for _ in range(scene_env.horizon):
        obs, _, terminated, truncated, info = env.step(policy.act(obs))
        s = scene_env.scene_state()
        offset = s.tcp - s.object_pos
        near = bool(np.hypot(offset[0], offset[1]) < 0.025 and offset[2] < 0.015)
        reached.append(near)
        closed_near.append(s.gripper_closed and near)
        closed_at.append(float(np.hypot(offset[0], offset[1])) if s.gripper_closed else math.nan)
        held.append(s.object_held)
        picked.append(scene.picked(s))
        in_tray_xy.append(bool(np.all(np.abs(s.object_pos[:2] - s.tray_pos[:2]) < scene.TRAY_INNER_HALF)))
        success = success or bool(info.get("success", False))
        if success or terminated or truncated:
            break
    pick_step = float(picked.index(True) + 1) if any(picked) else math.nan
    first_close = next((d for d in closed_at if math.isfinite(d)), math.nan)
    closed = [math.isfinite(d) for d in closed_at]
    closures = sum(now and not before for before, now in zip([False, *closed[:-1]], closed, strict=True))
    if success:
        kind = "success"
    elif not any(picked):
        if any(held):
            kind = "held, never lifted to the pick height"
        elif any(closed_near):
            kind = "never held, closed beside it"
        elif math.isfinite(first_close):
            kind = "never held, closed away from it"
        else:
            kind = "never closed: hovered at it" if any(reached) else "never closed: never came near it"
    elif held[-1]:
        kind = f"picked, still held at the end ({'over the tray' if in_tray_xy[-1] else 'not over the tray'})"
    else:
        kind = "released at the tray, not resting inside" if in_tray_xy[-1] else "picked, then dropped outside the tray"
    return kind, pick_step, first_close, closures


def report_pick_place(policy: Policy, env: gym.Env[Any, Any], run: Path, condition: str, episodes: int) -> None:
    results = [classify_pick_place(policy, env, EVAL_SEED + i, condition) for i in range(episodes)]
    counts = collections.Counter(kind for kind, *_ in results)
    print(f"{run} from {condition}, {episodes} episodes:")
    for kind, count in counts.most_common():
        line = f"  {kind:<58} {count:3d}"
        if kind == "never held, closed away from it":
            distances = [1000 * d for k, _, d, _ in results if k == kind]
            line += f"   first closed {min(distances):.0f}-{max(distances):.0f} mm from it in x-y"
        closures = [c for k, _, _, c in results if k == kind and c > 0]
        if closures:  # a retry: the gripper reopened after closing and closed again
            line += f"   closed again after reopening in {sum(c > 1 for c in closures)} of {len(closures)}"
        print(line)
    for label, chosen in (("successes", lambda k: k == "success"), ("failures", lambda k: k != "success")):
        steps = [step for kind, step, *_ in results if chosen(kind) and np.isfinite(step)]
        if steps:
            print(f"  picked at step {np.mean(steps):.1f} on average ({min(steps):.0f}-{max(steps):.0f}) in the "
                  f"{len(steps)} {label} that picked (of {scene_horizon(env)} steps)")  # fmt: skip


def scene_horizon(env: gym.Env[Any, Any]) -> int:
    return int(env.unwrapped.horizon)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (their policy/ is stepped)")
    parser.add_argument("--initial-condition", help="default: closed (drawer), on_table (pick-place)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--env-id", help="default: the drawer environment the policy records it was trained in")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    torch.set_num_threads(1)  # as the evaluation workers (see the module docstring)
    for run in args.runs:
        try:
            policy = Policy.load(run / "policy")
        except (OSError, ValueError) as error:  # CheckpointError is a ValueError; a missing folder an OSError
            parser.error(f"{run}: cannot load its deployed policy: {error}")
        env_id = args.env_id or policy.info.get("env_id")
        if env_id not in ENV_IDS:
            parser.error(f"{run}: give --env-id, one of {ENV_IDS} (the policy records {env_id!r})")
        scene = "pick_place" if env_id == "robot_rl/PickPlace-v0" else "drawer"
        condition = args.initial_condition or (PICK_CONDITION if scene == "pick_place" else "closed")
        conditions = ManipulationEnv.conditions_of(scene)
        if condition not in conditions:
            parser.error(f"--initial-condition {condition!r} is not one of the {scene} scene's {conditions}")
        env = gym.make(env_id, privileged_state=True, include_image=False)
        if scene == "pick_place":
            report_pick_place(policy, env, run, condition, args.episodes)
            env.close()
            continue
        results = [classify(policy, env, EVAL_SEED + i, condition) for i in range(args.episodes)]
        env.close()
        counts = collections.Counter(kind for kind, *_ in results)
        print(f"{run} from {condition}, {args.episodes} episodes:")
        for kind, count in counts.most_common():
            line = f"  {kind:<58} {count:3d}"
            if kind in ("success", "fingers stalled open"):
                press = np.nanmean([p for k, p, _, _ in results if k == kind])
                height = np.nanmean([h for k, _, h, _ in results if k == kind])
                forces = [f for k, _, _, f in results if k == kind]
                line += f"   z command after closing {press:+.2f}, TCP - object z at closing {1000 * height:+.1f} mm"
                line += f", finger on cabinet up to {min(forces):.0f}-{max(forces):.0f} N"
            print(line)


if __name__ == "__main__":
    main()

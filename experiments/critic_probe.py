"""What a COG/CQL run's critic thinks along its own policy's rollouts: Q of the action taken against alternatives.

Steps a run's deployed actor (from `checkpoints/latest`, the learner the run would resume) on the evaluation seeds
(1,000,000 + i) from the initial condition the run evaluates from, and prints, per step, the TCP's offset from the
object (mm), the gripper command, and the critic's Q (min over its members, as in the TD target) of

- the policy's action,
- the same action with the gripper command set to close (+1) and to open (-1),
- the same action with the x-y command aimed straight at the object (as far as one step reaches),
- the same gripper command with the motion replaced by a straight rise (x, y, yaw 0, z +1): what the scripted
  opening's back-off does, against which a policy that heads for the object from the handle (pushing the drawer
  back in) can be read.

Each printed step also shows the bottom drawer's opening (m) before the step.

A policy that hovers beside the object with the gripper open, while its critic scores that state as a few steps from
success and ranks the alternatives within its own TD error, fails because its critic cannot tell the actions apart
there, not because the actor cannot reach the critic's choice. Each episode ends with one summary line. Torch runs
on one thread, as the evaluation workers do.

    python experiments/critic_probe.py RUN [--episodes 0 1 2] [--initial-condition NAME] [--every 1] [--binary-gripper]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import sim_envs  # noqa: F401  (registers the environments)
from robot_rl.algos.cql import CQL
from robot_rl.data.episodes import DatasetInfo
from robot_rl.train.finetune import load_agents, policy_state, run_config
from robot_rl.train.offline import TrainingError, eval_condition
from sim_envs.env import ACTION_SCALES

EVAL_SEED = 1_000_000
"""Evaluation seeds are EVAL_SEED + i, as in the trainer's evaluations."""


def load_agent(run: Path) -> tuple[CQL, DatasetInfo, str]:
    """The run's learner at its latest checkpoint, its task data's info, and the initial condition it evaluates from."""
    cfg = run_config(run)  # refuses folders that are not CQL-family runs with a checkpoint
    if cfg.observation != "state":
        raise TrainingError(f"{run}: an {cfg.observation!r} run; the probe reads state-mode critics")
    (agent,), data = load_agents([run], [cfg], torch.device("cpu"))
    condition = eval_condition(cfg.eval_condition, data.info.recipe.get("task"))
    return agent, data.info, condition


def alternatives(action: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(5, A): the action; gripper close; gripper open; x-y aimed at the object (offset: TCP - object, metres); a
    straight rise with the action's gripper command (actions are x, y, z, yaw, gripper)."""
    close, opened, aimed, rise = action.copy(), action.copy(), action.copy(), action.copy()
    close[-1], opened[-1] = 1.0, -1.0
    aimed[:2] = np.clip(-offset[:2] / np.array(ACTION_SCALES[:2]), -1.0, 1.0)
    rise[:4] = (0.0, 0.0, 1.0, 0.0)
    return np.stack([action, close, opened, aimed, rise]).astype(np.float32)


def probe(agent: CQL, env: gym.Env[Any, Any], seed: int, condition: str, every: int, binary_gripper: bool) -> None:
    obs, _ = env.reset(seed=seed, options={"initial_condition": condition})
    scene_env: Any = env.unwrapped
    actor = agent.deployed_actor
    outcome, held_any = "time out", False
    print(f"episode seed {seed} from {condition}:")
    print("  step  TCP-object mm (x, y, z)  grip  gap mm  drawer   Q(pi)  Q(close)  Q(open)  Q(aim xy)  Q(rise)  held")
    for t in range(scene_env.horizon):
        state = torch.as_tensor(policy_state(obs))[None]
        before = scene_env.scene_state()
        offset = before.tcp - before.object_pos
        with torch.inference_mode():
            action = actor.deterministic(actor.encode(None, state)).numpy()[0]
            if binary_gripper:  # as `robot-rl eval --binary-actions gripper`
                action[-1] = 1.0 if action[-1] >= 0 else -1.0
            candidates = torch.as_tensor(alternatives(action, offset))[None]  # (1, 5, A)
            q = agent.q.q(agent.q.encode(None, state), candidates).min(0).values[0].numpy()  # (5,)
        obs, _, terminated, truncated, info = env.step(action)
        after = scene_env.scene_state()
        held_any = held_any or after.object_held
        if t % every == 0 or info.get("success") or terminated or truncated:
            mm = np.round(1000 * offset).astype(int)
            print(f"  {t:4d}  {mm[0]:6d} {mm[1]:6d} {mm[2]:6d}       {action[-1]:+.2f}  {1000 * before.finger_gap:5.1f}"
                  f"  {before.bottom_drawer:6.3f}  {q[0]:6.1f}  {q[1]:8.1f}  {q[2]:7.1f}  {q[3]:9.1f}  {q[4]:7.1f}"
                  f"  {after.object_held}")  # fmt: skip
        if info.get("success"):
            outcome = "success"
            break
        if terminated or truncated:
            break
    print(f"  -> {outcome}{'' if outcome == 'success' or not held_any else ' (held the object at some step)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="an offline COG/CQL run folder (state observations)")
    parser.add_argument("--episodes", type=int, nargs="+", default=[0], help="evaluation episode indices")
    parser.add_argument("--initial-condition", help="default: the one the run evaluates from")
    parser.add_argument("--every", type=int, default=1, help="print every k-th step (and the last)")
    parser.add_argument("--binary-gripper", action="store_true", help="command the gripper at +-1 by its sign")
    args = parser.parse_args()
    if args.every < 1 or min(args.episodes) < 0:
        parser.error("--every must be >= 1 and --episodes non-negative")
    torch.set_num_threads(1)
    try:
        agent, info, condition = load_agent(args.run)
    except (TrainingError, OSError, ValueError) as error:
        parser.error(str(error) if str(args.run) in str(error) else f"{args.run}: {error}")
    condition = args.initial_condition or condition
    env = gym.make(info.env_id, privileged_state=True, include_image=False)
    conditions: tuple[str, ...] = env.unwrapped.scene.initial_conditions  # type: ignore[attr-defined]
    if condition not in conditions:
        parser.error(f"--initial-condition {condition!r} is not one of {info.env_id}'s {conditions}")
    for i in args.episodes:
        probe(agent, env, EVAL_SEED + i, condition, args.every, args.binary_gripper)
    env.close()


if __name__ == "__main__":
    main()

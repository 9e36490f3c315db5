"""A saved policy's first commands of one action component, per evaluation episode: what it decides at the start.

Steps a policy folder (`RUN/policy`, `RUN/policies/step<k>`, an average from average_policies.py) from an initial
condition on the evaluation seeds (1,000,000 + i, as training's and `robot-rl eval`'s) and prints, per episode, the
tanh of the mean of the named component (default: the gripper) at each of the first `--steps` steps, while the
episode is stepped with the policy's own deterministic actions (its `binary_actions` applied, or those of
`--binary-actions`). Used on the drawer blocked by an object: a failed episode whose first gripper commands are
+1 is the pull tried with the blocker in place (the scripted opening closes the gripper before it reaches the
handle, the removal opens it), not a removal that went wrong.

    python experiments/first_actions.py POLICY --initial-condition blocked_by_object --episodes 7 8 10 \
        [--component gripper] [--steps 12] [--binary-actions gripper]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import gymnasium as gym
import torch

import sim_envs  # noqa: F401  (registers the environments)
from robot_rl.policy import Policy
from robot_rl.train.evaluate import EVAL_SEED


def first_commands(policy: Policy, env: gym.Env, seed: int, condition: str, component: int, steps: int) -> list[float]:
    """The tanh of the mean of `component` at each of the first `steps` steps (fewer if the episode ends)."""
    plain = Policy(dataclasses.replace(policy.spec, binary_actions=()), policy.actor)  # the mean, before any +-1
    obs, _ = env.reset(seed=seed, options={"initial_condition": condition})
    commands = []
    for _ in range(steps):
        commands.append(float(plain.act(obs)[component]))
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        if terminated or truncated:
            break
    return commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("policy", type=Path, help="a policy folder (policy.json + policy.safetensors)")
    parser.add_argument("--initial-condition", required=True)
    parser.add_argument("--episodes", type=int, nargs="+", default=[0], help="evaluation episode indices")
    parser.add_argument("--component", default="gripper", help="an action name of the policy")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--binary-actions", nargs="*", help="step with these components at +-1 (as robot-rl eval)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:  # a missing or damaged folder (CheckpointError is a ValueError), or --binary-actions it does not have
        policy = Policy.load(args.policy)
        if args.binary_actions is not None:
            policy = Policy(dataclasses.replace(policy.spec, binary_actions=tuple(args.binary_actions)), policy.actor)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if args.component not in policy.spec.action_names:
        parser.error(f"--component {args.component!r} is not one of {policy.spec.action_names}")
    if args.steps < 1 or min(args.episodes) < 0:
        parser.error("--steps must be >= 1 and --episodes non-negative")
    env_id = policy.info.get("env_id", "robot_rl/Drawer-v1")
    env = gym.make(env_id, privileged_state=True, include_image=policy.spec.image_shape is not None)
    conditions: tuple[str, ...] = env.unwrapped.scene.initial_conditions  # type: ignore[attr-defined]
    if args.initial_condition not in conditions:
        parser.error(f"--initial-condition {args.initial_condition!r} is not one of {env_id}'s {conditions}")
    component = policy.spec.action_names.index(args.component)
    for i in args.episodes:
        commands = first_commands(policy, env, EVAL_SEED + i, args.initial_condition, component, args.steps)
        print(f"episode {i} (seed {EVAL_SEED + i}): " + " ".join(f"{c:+.2f}" for c in commands))
    env.close()


if __name__ == "__main__":
    main()

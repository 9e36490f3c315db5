"""experiments/first_actions.py: a policy's first commands of one component, read before any +-1 is applied."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import torch

import sim_envs  # noqa: F401  (registers the environments)
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.checkpoints import export_policy
from robot_rl.policy import Policy

ScriptLoader = Callable[[str], ModuleType]  # conftest's `experiment_script` fixture


def test_the_commands_are_the_means_along_the_binary_rollout(tmp_path: Path, experiment_script: ScriptLoader) -> None:
    env = gym.make("robot_rl/Drawer-v1", privileged_state=True, include_image=False)
    try:
        torch.manual_seed(0)
        agent = CQL(CQLConfig(hidden=(8,)), None, 5, 5)  # the env's 5 state and 5 action components
        env_spec = env.unwrapped.spec_record().to_dict()  # type: ignore[attr-defined]
        folder = export_policy(agent, env_spec, binary_actions=("gripper",)).save(tmp_path / "policy")
        policy = Policy.load(folder)
        plain = Policy(dataclasses.replace(policy.spec, binary_actions=()), policy.actor)
        commands = experiment_script("first_actions").first_commands(policy, env, 1_000_000, "closed", 4, 5)
        assert len(commands) == 5
        # Replay the same episode: each command is the mean's gripper component at the state the +-1 policy reached.
        obs, _ = env.reset(seed=1_000_000, options={"initial_condition": "closed"})
        for command in commands:
            assert abs(command) < 1.0 and command == float(plain.act(obs)[4])
            stepped = policy.act(obs)
            assert stepped[4] in (-1.0, 1.0)  # the rollout itself commands the gripper at +-1
            obs, *_ = env.step(stepped)
    finally:
        env.close()

"""experiments/average_policies.py: the mean of a run's exported policies, and what it refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.checkpoints import export_policy
from robot_rl.policy import Policy

ScriptLoader = Callable[[str], ModuleType]  # conftest's `experiment_script` fixture
ENV_SPEC = {
    "action_names": ["dx", "dy", "dz", "dyaw", "gripper"],
    "action_scales": [0.03, 0.03, 0.03, 0.25, 1.0],
    "action_units": ["m/step", "m/step", "m/step", "rad/step", "command"],
    "control_period_s": 0.1,
    "image_shape": None,
    "state_names": ["tcp_x", "tcp_y", "tcp_z", "yaw", "gripper_opening"],
    "privileged_names": [],
}


def exported(tmp_path: Path, seed: int, hidden: tuple[int, ...] = (8,)) -> Path:
    torch.manual_seed(seed)
    agent = CQL(CQLConfig(hidden=hidden), None, 5, 5)
    return export_policy(agent, ENV_SPEC).save(tmp_path / f"policy{seed}-{len(hidden)}")


def test_the_average_is_the_mean_of_every_weight_and_acts(tmp_path: Path, experiment_script: ScriptLoader) -> None:
    folders = [exported(tmp_path, seed) for seed in (0, 1, 2)]
    policies = [Policy.load(folder) for folder in folders]
    averaged = Policy.load(experiment_script("average_policies").average_policies(folders).save(tmp_path / "average"))
    for key, value in averaged.actor.state_dict().items():
        expected = torch.stack([p.actor.state_dict()[key].double() for p in policies]).mean(dim=0).float()
        torch.testing.assert_close(value, expected)
    first = policies[0].actor.state_dict()
    assert any(not torch.equal(v, first[k]) for k, v in averaged.actor.state_dict().items())  # not just the first
    assert averaged.info["averaged_from"] == [str(folder) for folder in folders]
    action = averaged.act({"state": torch.zeros(5).numpy()})
    assert action.shape == (5,)


def test_policies_of_different_specs_are_refused(tmp_path: Path, experiment_script: ScriptLoader) -> None:
    folders = [exported(tmp_path, 0), exported(tmp_path, 1, hidden=(8, 8))]
    with pytest.raises(ValueError, match="another spec"):
        experiment_script("average_policies").average_policies(folders)
    with pytest.raises(ValueError, match="no policies"):
        experiment_script("average_policies").average_policies([])

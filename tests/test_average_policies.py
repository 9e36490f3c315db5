"""Checkpoint averaging (`robot_rl.policy.average_policies`, and its script experiments/average_policies.py): the
mean of a run's exported policies, and what it refuses."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.checkpoints import export_policy
from robot_rl.policy import Policy, average_policies

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


def test_the_average_is_the_mean_of_every_weight_and_acts(tmp_path: Path) -> None:
    policies = [Policy.load(exported(tmp_path, seed)) for seed in (0, 1, 2)]
    averaged = Policy.load(average_policies(policies, {"note": "x"}).save(tmp_path / "average"))
    for key, value in averaged.actor.state_dict().items():
        expected = torch.stack([p.actor.state_dict()[key].double() for p in policies]).mean(dim=0).float()
        torch.testing.assert_close(value, expected)
    last = policies[-1].actor.state_dict()
    assert any(not torch.equal(v, last[k]) for k, v in averaged.actor.state_dict().items())  # not just the last
    assert averaged.info == {**policies[-1].info, "note": "x"}
    assert averaged.act({"state": np.zeros(5, np.float32)}).shape == (5,)
    # the inputs are left as they were
    torch.testing.assert_close(Policy.load(tmp_path / "policy2-1").actor.state_dict(), last)


def test_policies_of_different_specs_are_refused(tmp_path: Path) -> None:
    policies = [Policy.load(exported(tmp_path, 0)), Policy.load(exported(tmp_path, 1, hidden=(8, 8)))]
    with pytest.raises(ValueError, match="policy 0 of 2 has another spec"):
        average_policies(policies)
    with pytest.raises(ValueError, match="no policies"):
        average_policies([])


def test_the_script_averages_a_runs_exports_by_step(
    tmp_path: Path, experiment_script: ScriptLoader, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    for step, seed in ((10, 0), (20, 1)):
        Policy.load(exported(tmp_path, seed)).save(run / "policies" / f"step{step}")
    script = experiment_script("average_policies")
    monkeypatch.setattr(sys, "argv", ["average_policies.py", str(run), str(tmp_path / "avg"), "10", "20"])
    script.main()
    averaged = Policy.load(tmp_path / "avg")
    assert averaged.info["averaged_from"] == [str(run / "policies" / f"step{k}") for k in (10, 20)]
    monkeypatch.setattr(sys, "argv", ["average_policies.py", str(run), str(tmp_path / "avg2"), "10", "30"])
    with pytest.raises(SystemExit):
        script.main()
    assert "no exported policy at" in capsys.readouterr().err and not (tmp_path / "avg2").exists()

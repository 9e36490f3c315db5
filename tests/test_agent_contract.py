"""The contract every agent passes: it learns (every parameter moves), saves and loads, resumes exactly, and its
exported policy acts as its actor does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_rl.algos.batch import TorchBatch, to_torch
from robot_rl.algos.bc import BC, BCConfig
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.checkpoints import export_policy, load_learner, save_learner
from robot_rl.data.replay import Batch, Observation
from robot_rl.networks import ConvConfig
from robot_rl.policy import Policy

IMAGE = (12, 12, 3)
CONV = ConvConfig(channels=(4, 4, 4))
Agent = CQL | BC
AGENTS: dict[str, Callable[[], Agent]] = {
    "cql_image": lambda: CQL(CQLConfig(hidden=(16,), conv=CONV, sampled_actions=2), IMAGE, 5, 5),
    "cql_state": lambda: CQL(CQLConfig(hidden=(16, 16), lagrange=True), None, 5, 5),
    "cql_state_layer_norm": lambda: CQL(CQLConfig(hidden=(16, 16), critic_layer_norm=True), None, 5, 5),
    "bc_image": lambda: BC(BCConfig(hidden=(16,), conv=CONV), IMAGE, 5, 5),
}
SPEC = {
    "scene": "drawer",
    "action_names": ["dx", "dy", "dz", "dyaw", "gripper"],
    "action_scales": [0.03, 0.03, 0.03, 0.25, 1.0],
    "action_units": ["m/step"] * 3 + ["rad/step", "command"],
    "control_period_s": 0.1,
    "state_names": ["tcp_x", "tcp_y", "tcp_z", "yaw", "gripper_opening"],
    "privileged_names": None,
    "image_shape": list(IMAGE),
}


def numpy_batch(seed: int, size: int = 8, image: bool = True) -> Batch:
    rng = np.random.default_rng(seed)

    def obs() -> Observation:
        images = rng.integers(0, 256, (size, *IMAGE), dtype=np.uint8) if image else None
        return Observation(images, rng.standard_normal((size, 5)).astype(np.float32), None)

    actions = rng.uniform(-0.9, 0.9, (size, 5)).astype(np.float32)
    return Batch(obs(), actions, rng.integers(0, 2, size).astype(np.float32), obs(), np.zeros(size, bool),
                 np.zeros(size, bool))  # fmt: skip


def batch_for(agent: Agent, seed: int) -> TorchBatch:
    has_image = agent.actor.encoder.conv is not None
    return to_torch(numpy_batch(seed, image=has_image), torch.device("cpu"), augment_pad=2 if has_image else 0)


def trainable(agent: Agent) -> dict[str, torch.Tensor]:
    modules = {"actor": agent.actor} if isinstance(agent, BC) else {"actor": agent.actor, "q": agent.q}
    return {f"{m}.{n}": p.detach().clone() for m, module in modules.items() for n, p in module.named_parameters()}


@pytest.mark.parametrize("name", AGENTS)
def test_a_few_updates_move_every_trainable_parameter(name: str) -> None:
    torch.manual_seed(0)
    agent = AGENTS[name]()
    before = trainable(agent)
    for step in range(3):
        metrics = agent.update(batch_for(agent, step))
        assert all(np.isfinite(v) for v in metrics.values())
    after = trainable(agent)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged


@pytest.mark.parametrize("name", AGENTS)
def test_save_load_and_resume_continue_exactly(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = AGENTS[name]()
    for step in range(2):
        first.update(batch_for(first, step))
    save_learner(tmp_path / "ckpt", first)
    expected = [first.update(batch_for(first, step)) for step in (2, 3)]

    torch.manual_seed(123)  # a different init and RNG stream: the checkpoint must restore both
    second = AGENTS[name]()
    load_learner(tmp_path / "ckpt", second)
    resumed = [second.update(batch_for(second, step)) for step in (2, 3)]
    for want, got in zip(expected, resumed, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("name", AGENTS)
def test_exported_policy_acts_as_the_actor(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = AGENTS[name]()
    agent.update(batch_for(agent, 0))
    has_image = agent.actor.encoder.conv is not None
    spec = {**SPEC, "image_shape": list(IMAGE) if has_image else None}
    policy = Policy.load(export_policy(agent, spec).save(tmp_path / "policy"))
    batch = numpy_batch(7, size=5, image=has_image)
    observations = {"state": batch.obs.state, **({"image": batch.obs.image} if has_image else {})}
    torch_obs = to_torch(batch, torch.device("cpu")).obs
    with torch.no_grad():
        expected = agent.actor.deterministic(agent.actor.encode(torch_obs.image, torch_obs.state)).numpy()
    np.testing.assert_allclose(policy.act_batch(observations), expected, atol=1e-6)
    single = {key: value[0] for key, value in observations.items()}
    np.testing.assert_allclose(policy.act(single), expected[0], atol=1e-6)

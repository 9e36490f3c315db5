"""Tests of `robot_rl.checkpoints` and `robot_rl.policy`: exact round trips and resumption of the learner, the
exported policy acting as the learner's actor does (also on a real env's observation), and the refusals that keep
a tampered, foreign or pickled file from being loaded and a bad observation from being acted on.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import Tensor

import robot_rl.policy
from robot_rl.algos.batch import TorchBatch, to_torch
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.checkpoints import LEARNER_JSON, LEARNER_WEIGHTS, export_policy, load_learner, save_learner
from robot_rl.data.replay import Batch, Observation
from robot_rl.networks import ConvConfig
from robot_rl.policy import POLICY_JSON, POLICY_WEIGHTS, CheckpointError, ObservationError, Policy, previous_folder

IMAGE = (12, 12, 3)
ENV_SPEC: dict[str, Any] = {
    "action_names": ["dx", "dy", "dz", "dyaw", "gripper"],
    "action_scales": [0.03, 0.03, 0.03, 0.25, 1.0],
    "action_units": ["m/step", "m/step", "m/step", "rad/step", "command"],
    "control_period_s": 0.1,
    "image_shape": list(IMAGE),
    "state_names": ["tcp_x", "tcp_y", "tcp_z", "yaw", "gripper_opening"],
    "privileged_names": ["object_x", "object_y", "drawer"],
}
"""An env's spec record, as `spec_record().to_dict()` gives it (JSON-like lists)."""
S, P, A, N, B = 5, 3, 5, 32, 8
"""State, privileged and action sizes, transitions in the fake dataset, batch size."""
KINDS = ["state", "privileged", "image"]
"""state only; state with the privileged state appended; image and state."""


# -- helpers -------------------------------------------------------------------------------------------------------
def make_agent(kind: str, seed: int, **overrides: Any) -> CQL:
    """A tiny agent; the BC warm start ends at step 4, between the save (after 3 updates) and the end."""
    torch.manual_seed(seed)
    cfg = CQLConfig(hidden=(8,), conv=ConvConfig(channels=(4, 4, 4)), bc_warm_start_steps=4, **overrides)
    return CQL(cfg, IMAGE if kind == "image" else None, S + (P if kind == "privileged" else 0), A)


class FakeData:
    """A fixed small dataset of uint8 frames and float32 vectors, sampled like a replay buffer (numpy Generator)."""

    def __init__(self, kind: str) -> None:
        rng = np.random.default_rng(123)
        self.kind = kind
        self.images = rng.integers(0, 256, (N + 1, *IMAGE), dtype=np.uint8) if kind == "image" else None
        self.states = rng.normal(size=(N + 1, S)).astype(np.float32)
        self.privileged = rng.normal(size=(N + 1, P)).astype(np.float32) if kind == "privileged" else None
        self.actions = rng.uniform(-0.99, 0.99, (N, A)).astype(np.float32)
        self.rewards = rng.integers(0, 2, N).astype(np.float32)

    def observation(self, index: np.ndarray) -> Observation:
        image = self.images[index] if self.images is not None else None
        privileged = self.privileged[index] if self.privileged is not None else None
        return Observation(image, self.states[index], privileged)

    def sample(self, rng: np.random.Generator, generator: torch.Generator) -> TorchBatch:
        index = rng.integers(0, N, B)
        batch = Batch(
            obs=self.observation(index),
            action=self.actions[index],
            reward=self.rewards[index],
            next_obs=self.observation(index + 1),
            terminated=index == N - 1,
            truncated=np.zeros(B, dtype=bool),
        )
        pad = 1 if self.kind == "image" else 0
        return to_torch(batch, torch.device("cpu"), pad, generator, use_privileged=self.kind == "privileged")

    def policy_observations(self) -> dict[str, np.ndarray]:
        """The first 6 observations as the env returns them (with a leading batch dimension)."""
        obs: dict[str, np.ndarray[Any, Any]] = {"state": self.states[:6]}
        if self.images is not None:
            obs["image"] = self.images[:6]
        if self.privileged is not None:
            obs["privileged"] = self.privileged[:6]
        return obs


def learner_actions(agent: CQL, data: FakeData) -> Tensor:
    """The learner's deterministic actions on the first 6 observations, preprocessed by the training path."""
    index = np.arange(6)
    batch = Batch(
        data.observation(index),
        data.actions[:6],
        data.rewards[:6],
        data.observation(index),
        *[np.zeros(6, dtype=bool)] * 2,
    )
    obs = to_torch(batch, torch.device("cpu"), use_privileged=data.kind == "privileged").obs
    with torch.no_grad():
        return agent.actor.deterministic(agent.actor.encode(obs.image, obs.state))


def train(
    agent: CQL, data: FakeData, rng: np.random.Generator, generator: torch.Generator, n: int
) -> list[dict[str, float]]:
    return [agent.update(data.sample(rng, generator)) for _ in range(n)]


def assert_same_learner(a: CQL, b: CQL) -> None:
    for module_a, module_b in [(a.q, b.q), (a.q_target, b.q_target), (a.actor, b.actor)]:
        for (name, ta), (_, tb) in zip(module_a.state_dict().items(), module_b.state_dict().items(), strict=True):
            assert torch.equal(ta, tb), name
    assert torch.equal(a.log_alpha, b.log_alpha) and torch.equal(a.log_cql_weight, b.log_cql_weight)
    for opt_a, opt_b in [
        (a.critic_optimizer, b.critic_optimizer),
        (a.actor_optimizer, b.actor_optimizer),
        (a.alpha_optimizer, b.alpha_optimizer),
        (a.cql_weight_optimizer, b.cql_weight_optimizer),
    ]:
        sa, sb = opt_a.state_dict(), opt_b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for index, entries in sa["state"].items():
            assert entries.keys() == sb["state"][index].keys()
            for key, value in entries.items():
                assert torch.equal(value, sb["state"][index][key]), (index, key)
    assert a.steps == b.steps


def rewrite_json(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def replace_weights(folder: Path, json_name: str, weights_name: str, data: bytes) -> None:
    """Replace the weights file and record its sha256, as a forger who also edits the JSON would."""
    (folder / weights_name).write_bytes(data)
    rewrite_json(folder / json_name, lambda r: r.update(safetensors_sha256=robot_rl.policy.sha256_of(data)))


def saved_policy(tmp_path: Path, kind: str = "image") -> tuple[CQL, Path]:
    agent = make_agent(kind, 0)
    folder = export_policy(agent, ENV_SPEC, use_privileged=kind == "privileged").save(tmp_path / "policy")
    return agent, folder


# -- the learner -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_restores_every_tensor_optimiser_state_and_rng(tmp_path: Path, kind: str) -> None:
    data = FakeData(kind)
    a = make_agent(kind, 0, lagrange=True)
    train(a, data, np.random.default_rng(1), torch.Generator().manual_seed(2), 3)
    save_learner(tmp_path / "ckpt", a)
    after_save = (torch.rand(3), random.random(), np.random.rand())

    b = make_agent(kind, 1, lagrange=True)
    assert not torch.equal(a.actor.state_dict()["head.net.0.weight"], b.actor.state_dict()["head.net.0.weight"])
    torch.rand(7), random.random(), np.random.rand()  # move every global generator on
    assert load_learner(tmp_path / "ckpt", b) == {}
    assert_same_learner(a, b)
    after_load = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after_save[0], after_load[0]) and after_save[1:] == after_load[1:]


def test_the_averaged_actor_is_saved_and_restored(tmp_path: Path) -> None:
    data = FakeData("state")
    a = make_agent("state", 0, actor_average=0.3)
    train(a, data, np.random.default_rng(1), torch.Generator().manual_seed(2), 3)
    save_learner(tmp_path / "ckpt", a)
    b = make_agent("state", 1, actor_average=0.3)
    load_learner(tmp_path / "ckpt", b)
    assert a.actor_average is not None and b.actor_average is not None
    for (name, ta), (_, tb) in zip(
        a.actor_average.state_dict().items(), b.actor_average.state_dict().items(), strict=True
    ):
        assert torch.equal(ta, tb), name
    assert_same_learner(a, b)
    exported = export_policy(a, ENV_SPEC, actor=a.actor_average).save(tmp_path / "average")
    with torch.no_grad():
        states = torch.from_numpy(data.states[:6])
        expected = a.actor_average.deterministic(a.actor_average.encode(None, states)).numpy()
    actions = Policy.load(exported).act_batch(data.policy_observations())
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    assert not np.allclose(actions, learner_actions(a, data).numpy(), atol=1e-4)  # not the live actor's


@pytest.mark.parametrize("kind", KINDS)
def test_resumed_run_continues_exactly_as_the_uninterrupted_one(tmp_path: Path, kind: str) -> None:
    """A: 3 updates, save, 3 more. B: fresh, load, the same 3. Batch sampling (numpy Generator), augmentation
    (torch.Generator) and CQL's action samples (torch's global generator) all come from restored states, and the
    BC warm start ends in the second half, so `steps` must be restored too."""
    data = FakeData(kind)
    a = make_agent(kind, 0, lagrange=kind == "state")
    rng, generator = np.random.default_rng(1), torch.Generator().manual_seed(2)
    train(a, data, rng, generator, 3)
    save_learner(tmp_path / "ckpt", a, {"sampler": rng, "augment": generator, "epoch": 1})
    expected = train(a, data, rng, generator, 3)

    b = make_agent(kind, 1, lagrange=kind == "state")
    torch.rand(5)
    extra = load_learner(tmp_path / "ckpt", b)
    assert extra["epoch"] == 1
    resumed = train(b, data, extra["sampler"], extra["augment"], 3)
    for metrics_a, metrics_b in zip(expected, resumed, strict=True):
        assert metrics_b == pytest.approx(metrics_a, rel=1e-6, abs=1e-7)
    for pa, pb in zip(a.q.parameters(), b.q.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_of_the_unfused_adam_resumes_fused_with_moments_in_the_weights_layout(tmp_path: Path) -> None:
    """Checkpoints written before the fused Adam (or by another implementation) resume on the fused one, and its
    moments take the channels-last layout of the conv weights (the fused kernel reads them as flat memory)."""
    data = FakeData("image")
    a = make_agent("image", 0)
    for name in ("critic_optimizer", "actor_optimizer"):
        old = getattr(a, name)
        setattr(a, name, torch.optim.Adam(old.param_groups[0]["params"], lr=old.param_groups[0]["lr"], fused=False))
    train(a, data, np.random.default_rng(1), torch.Generator().manual_seed(2), 3)
    save_learner(tmp_path / "ckpt", a)

    b = make_agent("image", 1)
    load_learner(tmp_path / "ckpt", b)
    assert all(group["fused"] for group in b.critic_optimizer.param_groups + b.actor_optimizer.param_groups)
    conv = b.q.encoder.conv
    assert conv is not None
    weight = conv.net[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    moments = b.critic_optimizer.state[weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert moments[key].stride() == weight.stride(), key
        torch.testing.assert_close(moments[key], a.critic_optimizer.state[a.q.encoder.conv.net[0].weight][key])
    # And the two continue alike: the unfused and the fused update are the same rule.
    for pa, pb in zip(a.q.parameters(), b.q.parameters(), strict=True):
        assert torch.equal(pa, pb)
    torch.manual_seed(7)  # CQL's action samples come from the global generator
    expected = train(a, data, np.random.default_rng(5), torch.Generator().manual_seed(6), 2)
    torch.manual_seed(7)
    resumed = train(b, data, np.random.default_rng(5), torch.Generator().manual_seed(6), 2)
    for metrics_a, metrics_b in zip(expected, resumed, strict=True):
        assert metrics_b == pytest.approx(metrics_a, rel=1e-5, abs=1e-6)


def test_extra_round_trips_json_tensors_and_every_generator_kind(tmp_path: Path) -> None:
    generators = {name: np.random.Generator(cls(7)) for name, cls in robot_rl.checkpoints._NUMPY_BIT_GENERATORS.items()}
    for g in generators.values():
        g.normal(size=3)  # a cached half-draw (has_uint32, gauss) must survive as well
        g.integers(0, 10, 3, dtype=np.uint32)
    torch_generator = torch.Generator().manual_seed(3)
    torch.rand(4, generator=torch_generator)
    extra = {**generators, "aug": torch_generator, "counts": torch.arange(4), "meta": {"epoch": 2, "tags": ["a"]}}
    save_learner(tmp_path / "ckpt", make_agent("state", 0), extra)
    restored = load_learner(tmp_path / "ckpt", make_agent("state", 1))
    assert restored.keys() == extra.keys()
    for name, g in generators.items():
        assert np.array_equal(restored[name].integers(0, 2**62, 8), g.integers(0, 2**62, 8)), name
        assert np.array_equal(restored[name].normal(size=3), g.normal(size=3)), name
    assert torch.equal(torch.rand(5, generator=restored["aug"]), torch.rand(5, generator=torch_generator))
    assert torch.equal(restored["counts"], torch.arange(4)) and restored["meta"] == {"epoch": 2, "tags": ["a"]}


def test_extra_that_json_cannot_hold_is_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"extra\['bad'\]"):
        save_learner(tmp_path / "ckpt", make_agent("state", 0), {"bad": object()})
    with pytest.raises(ValueError, match="without '/'"):
        save_learner(tmp_path / "ckpt", make_agent("state", 0), {"a/b": 1})


def test_a_different_config_is_refused_unless_asked_for(tmp_path: Path) -> None:
    save_learner(tmp_path / "ckpt", make_agent("state", 0))
    with pytest.raises(CheckpointError, match=r"different config.*actor_lr"):
        load_learner(tmp_path / "ckpt", make_agent("state", 1, actor_lr=1e-3))
    load_learner(tmp_path / "ckpt", make_agent("state", 1, actor_lr=1e-3), check_config=False)


def test_a_checkpoint_older_than_a_config_option_loads_when_the_option_is_at_its_default(tmp_path: Path) -> None:
    """A field added to the config since (here bc_weight, as a checkpoint from before it existed) is no
    difference while the new agent keeps its default, the old behaviour; set to anything else, it is one."""
    save_learner(tmp_path / "ckpt", make_agent("state", 0))
    record_path = tmp_path / "ckpt" / "learner.json"
    record = json.loads(record_path.read_text())
    del record["agent"]["config"]["bc_weight"]
    record_path.write_text(json.dumps(record))
    load_learner(tmp_path / "ckpt", make_agent("state", 1))
    with pytest.raises(CheckpointError, match=r"different config.*bc_weight"):
        load_learner(tmp_path / "ckpt", make_agent("state", 1, bc_weight=0.1))


def test_a_learner_of_other_sizes_is_refused_before_the_agent_changes(tmp_path: Path) -> None:
    save_learner(tmp_path / "ckpt", make_agent("privileged", 0))
    agent = make_agent("state", 1)
    before = [p.clone() for p in agent.q.parameters()]
    with pytest.raises(CheckpointError, match=r"learner.safetensors: mis-shaped tensors"):
        load_learner(tmp_path / "ckpt", agent)
    assert all(torch.equal(p, q) for p, q in zip(before, agent.q.parameters(), strict=True))


# -- refusals of files that are not ours ------------------------------------------------------------------------------
ARTIFACTS = {
    "learner": (LEARNER_JSON, LEARNER_WEIGHTS),
    "policy": (POLICY_JSON, POLICY_WEIGHTS),
}


def save_artifact(tmp_path: Path, artifact: str) -> tuple[Path, Callable[[], object]]:
    """A saved learner or policy folder and a function that loads it."""
    agent = make_agent("image", 0)
    folder = tmp_path / artifact
    if artifact == "learner":
        save_learner(folder, agent)
        return folder, lambda: load_learner(folder, make_agent("image", 1))
    export_policy(agent, ENV_SPEC).save(folder)
    return folder, lambda: Policy.load(folder)


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_a_flipped_byte_is_refused_as_tampered(tmp_path: Path, artifact: str) -> None:
    folder, load = save_artifact(tmp_path, artifact)
    path = folder / ARTIFACTS[artifact][1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path.name}: sha256 .* tampered"):
        load()


@pytest.mark.parametrize("artifact", ARTIFACTS)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("format"), "not a robot_rl checkpoint \\(no format marker"),
        (lambda r: r.update(format="someone.else"), "format 'someone.else' is not"),
        (lambda r: r.update(format_version=2), "format_version 2 is not one this code reads"),
        (lambda r: r.pop("safetensors_sha256"), "no safetensors_sha256"),
    ],
)
def test_a_json_that_is_not_ours_is_refused(
    tmp_path: Path, artifact: str, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    folder, load = save_artifact(tmp_path, artifact)
    rewrite_json(folder / ARTIFACTS[artifact][0], change)
    with pytest.raises(CheckpointError, match=rf"{ARTIFACTS[artifact][0]}: {message}"):
        load()


def test_other_json_files_are_refused(tmp_path: Path) -> None:
    folder, _ = save_artifact(tmp_path, "learner")
    (folder / POLICY_JSON).write_text((folder / LEARNER_JSON).read_text())  # a learner's JSON where a policy's goes
    with pytest.raises(CheckpointError, match=r"format 'robot_rl.learner' is not 'robot_rl.policy'"):
        Policy.load(folder)
    (folder / POLICY_JSON).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a robot_rl checkpoint"):
        Policy.load(folder)
    (folder / POLICY_JSON).write_bytes(b"\x80\x04not json")
    with pytest.raises(CheckpointError, match="not a JSON file"):
        Policy.load(folder)
    with pytest.raises(CheckpointError, match=r"policy.json: no such file"):
        Policy.load(tmp_path / "nowhere")


class _Payload:
    """Unpickling this touches `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("artifact", ARTIFACTS)
@pytest.mark.parametrize("forged_sha", [False, True])
def test_a_pickle_renamed_to_safetensors_is_never_unpickled(tmp_path: Path, artifact: str, forged_sha: bool) -> None:
    folder, load = save_artifact(tmp_path, artifact)
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.exists()  # the payload works when unpickled

    marker = tmp_path / "marker"
    payload = pickle.dumps({"actor": _Payload(marker)})
    json_name, weights_name = ARTIFACTS[artifact]
    if forged_sha:
        replace_weights(folder, json_name, weights_name, payload)
    else:
        (folder / weights_name).write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a valid safetensors file" if forged_sha else "sha256"):
        load()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update(extra=torch.zeros(2)), "unexpected tensors \\['extra'\\]"),
        (lambda t: t.pop("head.net.0.bias"), "missing tensors \\['head.net.0.bias'\\]"),
        (lambda t: t.update({"head.net.0.bias": torch.zeros(1, 1, 9)}), "mis-shaped tensors: head.net.0.bias"),
        (lambda t: t.update({"head.net.0.bias": torch.zeros(1, 1, 8, dtype=torch.float64)}), "mis-shaped"),
        (lambda t: t.update({"head.net.0.bias": torch.full((1, 1, 8), float("nan"))}), "non-finite"),
    ],
)
def test_policy_tensors_that_do_not_fit_are_refused(
    tmp_path: Path, edit: Callable[[dict[str, Tensor]], Any], message: str
) -> None:
    """The forger also fixed the sha256: the tensors themselves are checked against the spec's actor."""
    _, folder = saved_policy(tmp_path)
    tensors = safetensors.torch.load((folder / POLICY_WEIGHTS).read_bytes())
    edit(tensors)
    replace_weights(folder, POLICY_JSON, POLICY_WEIGHTS, safetensors.torch.save(tensors))
    with pytest.raises(CheckpointError, match=rf"policy.safetensors: {message}"):
        Policy.load(folder)


def test_a_spec_that_does_not_match_the_weights_is_refused(tmp_path: Path) -> None:
    _, folder = saved_policy(tmp_path)
    rewrite_json(folder / POLICY_JSON, lambda r: r["spec"].update(image_shape=[16, 16, 3]))
    with pytest.raises(CheckpointError, match=r"policy.safetensors: mis-shaped tensors: head.net.0.weight"):
        Policy.load(folder)
    rewrite_json(folder / POLICY_JSON, lambda r: r["spec"].update(image_shape=[12, 12], colour=True))
    with pytest.raises(CheckpointError, match=r"policy.json: spec: unknown keys \['colour'\]"):
        Policy.load(folder)


# -- atomic writes ---------------------------------------------------------------------------------------------------
def crash_at_replace(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the `call`-th os.replace (1-based) raise, as a crash at that point would stop the save."""
    real, calls = os.replace, [0]

    def replace(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == call:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, folder = FakeData("state"), tmp_path / "ckpt"
    a = make_agent("state", 0)
    save_learner(folder, a)
    saved = make_agent("state", 2)
    load_learner(folder, saved)
    train(a, data, np.random.default_rng(0), torch.Generator(), 2)

    with monkeypatch.context() as m:  # before the swap: the old folder is untouched
        crash_at_replace(m, 1)
        with pytest.raises(OSError, match="simulated"):
            save_learner(folder, a)
    b = make_agent("state", 1)
    load_learner(folder, b)
    assert_same_learner(saved, b)

    with monkeypatch.context() as m:  # between the two renames: the old version waits, complete, beside it
        crash_at_replace(m, 2)
        with pytest.raises(OSError, match="simulated"):
            save_learner(folder, a)
    with pytest.raises(CheckpointError, match=r"interrupted.*rename that back"):
        load_learner(folder, b)
    previous_folder(folder).rename(folder)
    load_learner(folder, b)
    assert_same_learner(saved, b)

    save_learner(folder, a)  # a later save cleans up and succeeds
    load_learner(folder, b)
    assert_same_learner(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_learner_and_policy_share_a_folder_and_other_folders_are_not_replaced(tmp_path: Path) -> None:
    agent, folder = make_agent("state", 0), tmp_path / "step_3"
    save_learner(folder, agent)
    export_policy(agent, ENV_SPEC).save(folder)
    save_learner(folder, agent)  # saving again keeps the policy beside it
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [LEARNER_JSON, LEARNER_WEIGHTS, POLICY_JSON, POLICY_WEIGHTS]
    )
    Policy.load(folder)
    load_learner(folder, make_agent("state", 1))
    (tmp_path / "run" / "logs").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"holds subfolders \['logs'\]"):
        save_learner(tmp_path / "run", agent)
    assert (tmp_path / "run" / "logs").is_dir()


# -- the policy ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_exported_policy_acts_as_the_learners_actor_after_save_and_load(tmp_path: Path, kind: str) -> None:
    data = FakeData(kind)
    agent = make_agent(kind, 0)
    train(agent, data, np.random.default_rng(0), torch.Generator(), 2)
    policy = export_policy(agent, ENV_SPEC, use_privileged=kind == "privileged", info={"run": "test"})
    expected = learner_actions(agent, data).numpy()
    observations = data.policy_observations()
    np.testing.assert_allclose(policy.act_batch(observations), expected, rtol=0, atol=1e-6)

    train(agent, data, np.random.default_rng(0), torch.Generator(), 1)  # the export is a snapshot
    loaded = Policy.load(policy.save(tmp_path / "policy"))
    actions = loaded.act_batch(observations)
    assert actions.dtype == np.float32 and actions.shape == (6, A)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    single = loaded.act({key: value[2] for key, value in observations.items()})
    np.testing.assert_allclose(single, expected[2], rtol=0, atol=1e-6)
    assert loaded.spec == policy.spec and loaded.info == {"run": "test", "learner_steps": 2}
    assert loaded.spec.use_privileged == (kind == "privileged")
    assert loaded.versions == policy.versions and {"torch", "safetensors", "git_commit"} <= loaded.versions.keys()

    torch.manual_seed(5)
    sampled = loaded.act_batch(observations, deterministic=False)
    assert np.all(np.abs(sampled) <= 1) and not np.allclose(sampled, actions)
    torch.manual_seed(5)
    np.testing.assert_array_equal(loaded.act_batch(observations, deterministic=False), sampled)


def test_binary_actions_are_commanded_at_plus_or_minus_one_by_the_sign_of_the_mean(tmp_path: Path) -> None:
    data = FakeData("state")
    agent = make_agent("state", 0)
    train(agent, data, np.random.default_rng(0), torch.Generator(), 2)
    observations = data.policy_observations()
    plain = export_policy(agent, ENV_SPEC).act_batch(observations)
    assert np.all(np.abs(plain[:, 4]) < 1)  # an untrained actor's tanh means
    folder = export_policy(agent, ENV_SPEC, binary_actions=("gripper",)).save(tmp_path / "binary")
    loaded = Policy.load(folder)
    assert loaded.spec.binary_actions == ("gripper",)
    assert json.loads((folder / POLICY_JSON).read_text())["spec"]["binary_actions"] == ["gripper"]
    actions = loaded.act_batch(observations)
    np.testing.assert_array_equal(actions[:, 4], np.where(plain[:, 4] >= 0, 1.0, -1.0))
    np.testing.assert_allclose(actions[:, :4], plain[:, :4], rtol=0, atol=1e-6)  # the other components as before
    single = loaded.act({key: value[1] for key, value in observations.items()})
    assert single[4] == (1.0 if plain[1, 4] >= 0 else -1.0)
    torch.manual_seed(3)
    sampled = loaded.act_batch(observations, deterministic=False)
    assert not np.all(np.abs(sampled[:, 4]) == 1)  # samples are left as drawn
    with pytest.raises(ValueError, match="binary_actions must be distinct action names"):
        export_policy(agent, ENV_SPEC, binary_actions=("grip",))


def test_a_policy_saved_before_binary_actions_loads_without_them(tmp_path: Path) -> None:
    _, folder = saved_policy(tmp_path, "state")

    def drop(record: dict[str, Any]) -> dict[str, Any]:
        del record["spec"]["binary_actions"]
        return record

    rewrite_json(folder / POLICY_JSON, drop)
    assert Policy.load(folder).spec.binary_actions == ()

    def misspell(record: dict[str, Any]) -> dict[str, Any]:
        record["spec"]["binary_actions"] = ["claw"]
        return record

    rewrite_json(folder / POLICY_JSON, misspell)
    with pytest.raises(CheckpointError, match="binary_actions must be distinct action names"):
        Policy.load(folder)


def test_policy_json_records_the_spec_for_the_robot_side(tmp_path: Path) -> None:
    _, folder = saved_policy(tmp_path)
    record = json.loads((folder / POLICY_JSON).read_text())
    spec = record["spec"]
    assert spec["action_names"] == ENV_SPEC["action_names"] and spec["action_scales"] == ENV_SPEC["action_scales"]
    assert spec["image_shape"] == [12, 12, 3] and spec["preprocessing"] == "uint8 HWC / 255 -> float CHW"
    assert spec["control_period_s"] == 0.1 and spec["use_privileged"] is False and spec["privileged_names"] == []
    assert spec["conv"]["channels"] == [4, 4, 4] and spec["hidden"] == [8]
    assert {"python", "torch", "numpy", "safetensors"} <= record["versions"].keys()


def test_act_refuses_observations_that_do_not_fit_the_spec(tmp_path: Path) -> None:
    _, folder = saved_policy(tmp_path)
    policy = Policy.load(folder)
    image = np.zeros(IMAGE, np.uint8)
    state = np.zeros(S, np.float32)
    policy.act({"image": image, "state": state, "privileged": np.zeros(P, np.float32)})  # extra keys are ignored
    with pytest.raises(ObservationError, match=r"'image' has shape \(16, 16, 3\), but the policy was trained on"):
        policy.act({"image": np.zeros((16, 16, 3), np.uint8), "state": state})
    with pytest.raises(ObservationError, match="'image' has dtype float32; the policy takes uint8"):
        policy.act({"image": image.astype(np.float32), "state": state})
    with pytest.raises(ObservationError, match="has no 'state'"):
        policy.act({"image": image})
    with pytest.raises(ObservationError, match=r"'state' has shape \(4,\)"):
        policy.act({"image": image, "state": state[:4]})
    for bad in (np.nan, np.inf):
        broken = state.copy()
        broken[3] = bad
        with pytest.raises(ObservationError, match=r"NaN or inf values \(in \['yaw'\]\); refusing"):
            policy.act({"image": image, "state": broken})
    with pytest.raises(ObservationError, match=r"'image' has shape \(12, 12, 3\), but the policy was trained on \(B"):
        policy.act_batch({"image": image, "state": state[None]})
    with pytest.raises(ObservationError, match="disagree on the batch size"):
        policy.act_batch({"image": np.stack([image] * 2), "state": np.stack([state] * 3)})


def test_exported_policy_acts_on_a_real_env_observation() -> None:
    """The contract with the env: its spec record exports, and its observations are acted on as they come."""
    from sim_envs.env import ManipulationEnv

    env = ManipulationEnv("drawer", image_size=16, privileged_state=True)  # the smallest it renders
    try:
        spec = env.spec_record().to_dict()
        agent = CQL(
            CQLConfig(hidden=(8,), conv=ConvConfig(channels=(4, 4, 4))),
            (16, 16, 3),
            S + len(spec["privileged_names"]),
            A,
        )
        policy = export_policy(agent, spec, use_privileged=True)
        assert policy.spec.action_names == tuple(spec["action_names"]) and policy.spec.control_period_s == 0.1
        obs, _ = env.reset(seed=0)
        action = policy.act(obs)
        assert action.shape == env.action_space.shape and env.action_space.contains(action)
        env.step(action)
    finally:
        env.close()


def test_export_refuses_a_spec_that_does_not_fit_the_agent() -> None:
    agent = make_agent("image", 0)
    with pytest.raises(ValueError, match="no image_shape"):
        export_policy(agent, {**ENV_SPEC, "image_shape": None})
    with pytest.raises(CheckpointError, match="actor: mis-shaped tensors"):
        export_policy(agent, {**ENV_SPEC, "image_shape": [16, 16, 3]})
    with pytest.raises(ValueError, match=r"state_dim 5 != 5 state names \+ 3 privileged names"):
        export_policy(agent, ENV_SPEC, use_privileged=True)
    with pytest.raises(ValueError, match="env_spec lacks 'action_units'"):
        export_policy(agent, {k: v for k, v in ENV_SPEC.items() if k != "action_units"})


def test_the_policy_module_loads_without_the_training_code() -> None:
    """ros_nodes loads only the policy artifact (DESIGN.md): robot_rl.policy pulls in no algos, data or runs."""
    code = "import sys, robot_rl.policy; print(sorted(m for m in sys.modules if m.startswith('robot_rl')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.replace("'", '"')) == [
        "robot_rl",
        "robot_rl.networks",
        "robot_rl.networks.modules",
        "robot_rl.policy",
    ]

"""Online fine-tuning end to end on the real sim env and tiny real datasets and COG runs: every replay mode, the
ensemble and the single agent, exact resume without losing online data, bad input; and the pieces it is made of
(the ensemble agent's TD targets and parameters, the online store) against known answers."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robot_rl.algos.batch import to_torch
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.algos.density_ratio import DensityRatioConfig
from robot_rl.algos.ensemble import agent_min_q
from robot_rl.algos.pessimistic import PessimisticEnsemble, PessimisticEnsembleConfig, ensemble_critic_loss
from robot_rl.data.replay import Batch, Observation
from robot_rl.networks import ConvConfig
from robot_rl.replay.online import OnlineStore
from robot_rl.train import finetune as finetune_module
from robot_rl.train.finetune import FinetuneConfig, check_runs, finetune, load_agents
from robot_rl.train.logger import read_metrics
from robot_rl.train.offline import OfflineConfig, TrainingError, train_offline
from sim_envs.collect import SCALES, collect, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "datasets" / "recipes"
HIDDEN = (16, 16)


def closed_drawer_cog_runs(root: Path, observation: str, steps: int, batch_size: int) -> dict[str, Any]:
    """Task and prior datasets of the closed drawer (3 episodes each; 24x24 images in image mode, none in state mode)
    and two COG runs of `steps` steps on them (seeds 0 and 1)."""
    torch.set_num_threads(1)
    image = observation == "image"
    env_kwargs = {"image_size": 24} if image else {"include_image": False}
    data = {}
    for key, file in (("task", "drawer-closed-task"), ("prior", "drawer-closed-prior")):
        recipe = load_recipe(RECIPES / f"{file}.yaml")
        recipe = dataclasses.replace(recipe, episodes=dict.fromkeys(SCALES, 3), env_kwargs=env_kwargs)
        data[key] = collect(recipe, "smoke", root / "datasets", workers=1, progress=False).folder
    cql = CQLConfig(hidden=HIDDEN, conv=ConvConfig(channels=(4, 4, 4))) if image else CQLConfig(hidden=HIDDEN)
    runs = []
    for seed in (0, 1):
        cfg = OfflineConfig(task=data["task"], prior=data["prior"], observation=observation,  # type: ignore[arg-type]
                            steps=steps, batch_size=batch_size, eval_every=0, eval_episodes=1, eval_workers=1,
                            eval_videos=0, checkpoint_every=steps, log_every=steps // 2, threads=1, progress=False,
                            seed=seed, out=root / f"cog{seed}", cql=cql)  # fmt: skip
        runs.append(train_offline(cfg))
    return {"runs": tuple(runs), **data}


@pytest.fixture(scope="module")
def cog_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """State-mode COG runs of 10 steps (see `closed_drawer_cog_runs`)."""
    return closed_drawer_cog_runs(tmp_path_factory.mktemp("finetune"), "state", steps=10, batch_size=16)


def config(runs: tuple[Path, ...], out: Path, **changes: Any) -> FinetuneConfig:
    """30 online steps in episodes of 10; 3 burst updates after the first 10 steps, then one per step."""
    base = FinetuneConfig(
        runs=runs,
        online_steps=30,
        max_episode_steps=10,
        first_batch=10,
        burst_updates=3,
        updates_per_step=1,
        batch_size=16,
        log_every=5,
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=10,
        threads=1,
        progress=False,
        out=out,
        density_ratio=DensityRatioConfig(hidden=HIDDEN, online_batch_size=16, offline_batch_size=16),
    )
    return dataclasses.replace(base, **changes)


def saved_online(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / "latest" / "online.npz", allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def crash_after(updates: int, cfg: FinetuneConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `cfg` until its update number `updates` + 1, where a KeyboardInterrupt stops it (as a killed process);
    the ensemble's update is restored afterwards."""
    original = PessimisticEnsemble.update
    calls = {"n": 0}

    def interrupted(self: PessimisticEnsemble, batch: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] > updates:
            raise KeyboardInterrupt
        return original(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(PessimisticEnsemble, "update", interrupted)
        with pytest.raises(KeyboardInterrupt):
            finetune(cfg)


# -- end to end ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("replay", "ensemble"), [("balanced", True), ("uniform", True), ("online_only", True), ("balanced", False)]
)
def test_finetune_runs_in_every_replay_mode(cog_runs: dict[str, Any], tmp_path: Path, replay: str,
                                            ensemble: bool) -> None:  # fmt: skip
    run = finetune(config(cog_runs["runs"], tmp_path / "ft", replay=replay, ensemble=ensemble))
    record = json.loads((run / "run.json").read_text())
    assert record["command"] == "finetune" and record["config"]["replay"] == replay
    rows = read_metrics(run / "metrics.jsonl")
    assert all("online_steps" in r for r in rows)
    train_rows = [r for r in rows if "train/updates" in r]
    assert [r["online_steps"] for r in train_rows] == [5, 10, 15, 20, 25, 30]
    assert train_rows[-1]["train/updates"] == 3 + 20 and train_rows[-1]["train/episodes"] == 3
    fractions = [r["train/offline_fraction"] for r in train_rows if "train/offline_fraction" in r]
    assert len(fractions) == 5  # from step 10, the first update
    assert all(0.0 <= f <= 1.0 for f in fractions)
    if replay == "online_only":
        assert fractions == [0.0] * 5
    else:  # 300 offline transitions against at most 30 online ones: most of each batch is offline at first
        assert fractions[0] > 0.3
    if replay == "balanced":
        assert all("density_ratio/js_bound" in r for r in train_rows[1:])
    else:
        assert not any("density_ratio/js_bound" in r for r in rows)
    assert rows[-1]["eval/episodes"] == 1.0 and rows[-1]["online_steps"] == 30
    assert len(saved_online(run)["actions"]) == 30
    agent_record = json.loads((run / "checkpoints" / "latest" / "finetune.json").read_text())["agent"]
    assert agent_record["agents"] == (2 if ensemble else 1) and agent_record["steps"] == 23
    assert (run / "learning_curves.png").exists()


@pytest.mark.parametrize(
    ("first_batch", "updates_before_crash", "saved"),
    [
        (10, 3 + 16, 20),  # crash at online step 27, after the checkpoint of step 20 (an episode end), the row of 25
        (15, 0, 10),  # crash at step 15, the first update; the checkpoint of step 10 precedes the first batch
    ],
)
def test_an_interrupted_run_resumes_exactly_with_its_online_data(
    cog_runs: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_batch: int,
    updates_before_crash: int,
    saved: int,
) -> None:
    whole = finetune(config(cog_runs["runs"], tmp_path / "whole", first_batch=first_batch))

    cut = tmp_path / "cut"
    crash_after(updates_before_crash, config(cog_runs["runs"], cut, first_batch=first_batch), monkeypatch)
    before = saved_online(cut)
    assert len(before["actions"]) == saved and len(before["episode_starts"]) == saved // 10

    restored_sizes = []
    load = finetune_module.load_checkpoint

    def spy(*args: Any, **kwargs: Any) -> finetune_module.Restored:
        restored = load(*args, **kwargs)
        restored_sizes.append(len(restored.online))
        return restored

    monkeypatch.setattr(finetune_module, "load_checkpoint", spy)
    finetune(FinetuneConfig(resume=cut, out=tmp_path / "ignored", online_steps=1))  # other fields: from run.json
    assert not (tmp_path / "ignored").exists()
    assert restored_sizes == [saved]  # the buffer after resume is the one saved: no online data lost
    after = saved_online(cut)
    assert len(after["actions"]) == 30
    for name, array in before.items():
        if name != "episode_starts":
            np.testing.assert_array_equal(after[name][: len(array)], array, err_msg=name)

    def losses(run: Path) -> dict[float, float]:
        rows = read_metrics(run / "metrics.jsonl")
        return {r["online_steps"]: r["critic/td_loss"] for r in rows if "critic/td_loss" in r}

    expected, resumed = losses(whole), losses(cut)
    for step in (25.0, 30.0):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
    # rows logged after the checkpoint were dropped on resume: one row per step and kind, as in the whole run
    kinds = [[(r["step"], "eval/success" in r) for r in read_metrics(run / "metrics.jsonl")] for run in (whole, cut)]
    assert kinds[1] == kinds[0]
    np.testing.assert_array_equal(saved_online(whole)["states"], after["states"])


def test_a_checkpoint_follows_the_burst_whatever_the_checkpoint_interval(
    cog_runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The burst is the costliest stretch of a run (10k updates by default): its result is saved at the next episode
    end even when `checkpoint_every` is far away, so a crash after it does not redo it."""
    cut = tmp_path / "cut"
    # The burst (3 updates) at step 15, then one update per step: a crash at step 27.
    crash_after(3 + 12, config(cog_runs["runs"], cut, first_batch=15, checkpoint_every=1000), monkeypatch)
    assert len(saved_online(cut)["actions"]) == 20  # saved at the episode end after the burst, not only at the end


def test_bad_runs_are_refused(cog_runs: dict[str, Any], tmp_path: Path) -> None:
    first, second = cog_runs["runs"]

    def edited(name: str, **changes: Any) -> Path:
        copy = tmp_path / name
        shutil.copytree(second, copy)
        record = json.loads((copy / "run.json").read_text())
        record["config"].update({k: str(v) if isinstance(v, Path) else v for k, v in changes.items()})
        (copy / "run.json").write_text(json.dumps(record))
        return copy

    cases = [
        ((first, tmp_path), "not an offline run folder"),
        ((first, edited("bc", algo="bc")), "a 'bc' run; fine-tuning needs CQL critics"),
        ((first, edited("image", observation="image")), "must see the same observations"),
        ((first, edited("other_data", prior=cog_runs["task"])), "trained on different datasets"),
        ((first, first), "more than once"),
        ((), "no offline runs"),
    ]
    for runs, message in cases:
        with pytest.raises(TrainingError, match=message):
            finetune(config(runs, tmp_path / "refused"))
        assert not (tmp_path / "refused").exists()  # refused before a run folder is made
    with pytest.raises(TrainingError, match="not a fine-tuning run"):
        finetune(FinetuneConfig(resume=first))


def test_fine_tuning_keeps_the_members_reward_definition(
    cog_runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members trained with reward_scale 100 and success_terminal get the same TD targets online: the agent sees
    rewards in {0, 100}, terminal where rewarded; members that disagree are refused unless the flags choose."""
    shaped = []
    for seed, run in enumerate(cog_runs["runs"]):
        copy = tmp_path / f"shaped{seed}"
        shutil.copytree(run, copy)
        record = json.loads((copy / "run.json").read_text())
        record["config"].update(reward_scale=100.0, success_terminal=True)
        (copy / "run.json").write_text(json.dumps(record))
        shaped.append(copy)
    with pytest.raises(TrainingError, match="different reward_scale"):
        finetune(config((shaped[0], cog_runs["runs"][1]), tmp_path / "mixed"))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    update = PessimisticEnsemble.update

    def recording(self: PessimisticEnsemble, batch: Any) -> dict[str, float]:
        seen.append((batch.reward.clone(), batch.terminated.clone()))
        return update(self, batch)

    monkeypatch.setattr(PessimisticEnsemble, "update", recording)
    run = finetune(config(tuple(shaped), tmp_path / "ft"))
    recorded = json.loads((run / "run.json").read_text())["config"]
    assert recorded["reward_scale"] == 100.0 and recorded["success_terminal"] is True
    members_discount = json.loads((shaped[0] / "run.json").read_text())["config"]["cql"]["discount"]
    assert recorded["agent"]["discount"] == members_discount  # recorded resolved (None before joining)
    rewards = torch.cat([r for r, _ in seen])
    terminated = torch.cat([t for _, t in seen]).bool()
    assert set(rewards.unique().tolist()) == {0.0, 100.0}
    assert bool(terminated[rewards > 0].all())
    seen.clear()
    finetune(config(tuple(shaped), tmp_path / "override", reward_scale=1.0, success_terminal=False))
    assert set(torch.cat([r for r, _ in seen]).unique().tolist()) == {0.0, 1.0}


# -- the agent ---------------------------------------------------------------------------------------------------------
def test_the_joined_ensemble_moves_every_member_and_starts_from_the_members(cog_runs: dict[str, Any]) -> None:
    runs = cog_runs["runs"]
    members, offline_data = load_agents(runs, check_runs(runs), torch.device("cpu"))
    torch.manual_seed(0)
    agent = PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig())
    assert (agent.agents, agent.critics_per_agent) == (2, 2)
    assert agent.log_alpha.exp().item() == pytest.approx(
        float(np.exp(np.mean([m.log_alpha.item() for m in members]))), rel=1e-6
    )
    rng = np.random.default_rng(0)
    batch = to_torch(offline_data.sample(rng, 16), torch.device("cpu"), use_privileged=True)
    # Before any update: critic i*M + m of the ensemble is critic m of run i.
    q_ensemble = agent.q(batch.obs.image, batch.obs.state, batch.action)  # (4, B)
    q_members = torch.cat([m.q(batch.obs.image, batch.obs.state, batch.action) for m in members])  # (4, B)
    torch.testing.assert_close(q_ensemble, q_members)

    modules = {"actor": agent.actor, "q": agent.q}
    before = {f"{m}.{n}": p.detach().clone() for m, mod in modules.items() for n, p in mod.named_parameters()}
    alpha_before = agent.log_alpha.item()
    for _ in range(3):
        metrics = agent.update(to_torch(offline_data.sample(rng, 16), torch.device("cpu"), use_privileged=True))
        assert all(np.isfinite(v) for v in metrics.values())
    after = {f"{m}.{n}": p.detach() for m, mod in modules.items() for n, p in mod.named_parameters()}
    unchanged = []
    for name, old in before.items():
        members_of = agent.agents if name.startswith("actor") else agent.agents * agent.critics_per_agent
        for k, (a, b) in enumerate(zip(old.chunk(members_of), after[name].chunk(members_of), strict=True)):
            if torch.equal(a, b):
                unchanged.append(f"{name}[member {k}]")
    assert not unchanged
    assert agent.log_alpha.item() != alpha_before
    assert not any(torch.equal(p, t) for p, t in zip(agent.q.parameters(), agent.q_target.parameters(), strict=True))


def test_single_agent_ensemble_acts_as_its_cql_agent(cog_runs: dict[str, Any]) -> None:
    run = cog_runs["runs"][:1]
    (member,), offline_data = load_agents(run, check_runs(run), torch.device("cpu"))
    agent = PessimisticEnsemble.from_cql_agents([member], PessimisticEnsembleConfig(init_alpha=0.5))
    assert agent.log_alpha.exp().item() == pytest.approx(0.5)
    batch = offline_data.sample(np.random.default_rng(1), 8)
    state = np.concatenate([batch.obs.state, batch.obs.privileged], axis=1)  # type: ignore[list-item]
    with torch.no_grad():
        expected = member.actor.deterministic(member.actor.encode(None, torch.from_numpy(state))).numpy()
    np.testing.assert_allclose(agent.act(state, deterministic=True), expected, rtol=1e-6, atol=1e-6)


def test_fine_tuning_starts_from_the_actor_a_run_deploys() -> None:
    """With an averaged actor (`cql.actor_average`), the run's policy is the average: the ensemble starts from it."""
    torch.manual_seed(0)
    member = CQL(CQLConfig(hidden=(8,), actor_average=0.5), None, 3, 2)
    assert member.actor_average is not None
    with torch.no_grad():
        for p in member.actor_average.parameters():
            p.add_(0.5 * torch.randn_like(p))  # as if averaging had moved it away from the live actor
    agent = PessimisticEnsemble.from_cql_agents([member], PessimisticEnsembleConfig())
    state = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        average = member.actor_average.deterministic(member.actor_average.encode(None, torch.from_numpy(state)))
        live = member.actor.deterministic(member.actor.encode(None, torch.from_numpy(state)))
    np.testing.assert_allclose(agent.act(state, deterministic=True), average.numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(agent.act(state, deterministic=True), live.numpy(), atol=1e-3)


def test_each_agent_bootstraps_from_its_own_twin_min_at_one_shared_action() -> None:
    """The critic loss against the module docstring's equations, recomputed by hand with the same random draws."""
    torch.manual_seed(0)
    members = [CQL(CQLConfig(hidden=(8,)), None, 3, 2) for _ in range(3)]
    agent = PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig(init_alpha=0.3))
    with torch.no_grad():  # make the targets differ from the critics and between agents
        for p in agent.q_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = 6
    batch = to_torch(
        Batch(
            Observation(None, np.random.default_rng(0).standard_normal((b, 3), np.float32), None),
            np.random.default_rng(1).uniform(-0.9, 0.9, (b, 2)).astype(np.float32),
            np.array([0, 1, 0, 1, 0, 1], np.float32),
            Observation(None, np.random.default_rng(2).standard_normal((b, 3), np.float32), None),
            np.array([0, 0, 0, 1, 0, 0], bool),
            np.zeros(b, bool),
        ),
        torch.device("cpu"),
    )
    alpha = agent.log_alpha.exp().detach()
    features = agent.actor.encode(None, batch.obs.state)
    torch.manual_seed(5)
    loss, _, _ = ensemble_critic_loss(agent.q, agent.q_target, agent.actor, features, batch, alpha, 3, agent.cfg)

    torch.manual_seed(5)
    with torch.no_grad():
        next_action, next_log_prob = agent.actor.sample_moment_matched(agent.actor.encode(None, batch.next_obs.state))
        next_q = agent.q_target(None, batch.next_obs.state, next_action[:, 0])  # (6, B): 3 agents x 2 critics
        expected = torch.tensor(0.0)
        for i in range(3):
            own_min = torch.minimum(next_q[2 * i], next_q[2 * i + 1])  # (B,): agent i's twin only
            y = batch.reward + 0.99 * (1 - batch.terminated) * (own_min - alpha * next_log_prob[:, 0])
            q_data = agent.q(None, batch.obs.state, batch.action)
            expected = expected + (q_data[2 * i] - y).pow(2).mean() + (q_data[2 * i + 1] - y).pow(2).mean()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(agent_min_q(next_q, 3, 2)[1], torch.minimum(next_q[2], next_q[3]))


def test_the_ensemble_bootstraps_with_the_members_discount_unless_told_otherwise() -> None:
    """Critics trained with gamma 0.95 keep it online (0.99 would raise every value at once); members that disagree
    are refused by name; a discount in the config overrides."""
    torch.manual_seed(0)
    members = [CQL(CQLConfig(hidden=(8,), discount=0.95), None, 3, 2) for _ in range(2)]
    assert PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig()).cfg.discount == 0.95
    assert PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig(discount=0.9)).cfg.discount == 0.9
    mixed = [members[0], CQL(CQLConfig(hidden=(8,), discount=0.99), None, 3, 2)]
    with pytest.raises(ValueError, match=r"different discounts \[0.95, 0.99\]"):
        PessimisticEnsemble.from_cql_agents(mixed, PessimisticEnsembleConfig())
    agent = PessimisticEnsemble.from_cql_agents(
        members, PessimisticEnsembleConfig(init_alpha=0.3, backup="deterministic")
    )
    b = 4
    rng = np.random.default_rng(0)
    batch = to_torch(
        Batch(
            Observation(None, rng.standard_normal((b, 3)).astype(np.float32), None),
            rng.uniform(-0.9, 0.9, (b, 2)).astype(np.float32),
            np.array([0, 1, 0, 0], np.float32),
            Observation(None, rng.standard_normal((b, 3)).astype(np.float32), None),
            np.zeros(b, bool),
            np.zeros(b, bool),
        ),
        torch.device("cpu"),
    )
    features = agent.actor.encode(None, batch.obs.state)
    torch.manual_seed(5)
    loss, _, _ = ensemble_critic_loss(agent.q, agent.q_target, agent.actor, features, batch, agent.log_alpha.exp(), 2,
                                      agent.cfg)  # fmt: skip
    torch.manual_seed(5)
    with torch.no_grad():
        next_action, _ = agent.actor.sample_moment_matched(agent.actor.encode(None, batch.next_obs.state))
        next_q = agent.q_target(None, batch.next_obs.state, next_action[:, 0])  # (4, B): 2 agents x 2 critics
        q_data = agent.q(None, batch.obs.state, batch.action)
        expected = torch.tensor(0.0)
        for i in range(2):
            y = batch.reward + 0.95 * torch.minimum(next_q[2 * i], next_q[2 * i + 1])
            expected = expected + (q_data[2 * i] - y).pow(2).mean() + (q_data[2 * i + 1] - y).pow(2).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_bf16_autocast_updates_the_ensemble_like_fp32_and_keeps_fp32_parameters(
    assert_fp32_training_state: Callable[..., None], fp32_and_bf16_updates: Callable[..., tuple[Any, Any]]
) -> None:
    """`autocast_dtype` bf16: the same update as fp32 up to bf16 rounding (so bf16 was in use), with fp32 parameters
    and optimiser states, and the critics' output at fp32 resolution (Q near 100 is not rounded to bf16's 0.5)."""
    torch.manual_seed(0)
    members = [CQL(CQLConfig(hidden=(32, 32)), None, 3, 2) for _ in range(2)]
    full = PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig())
    with torch.no_grad():
        full.q.head.net[-1].bias.fill_(100.3)
        full.q_target.head.net[-1].bias.fill_(100.3)
    half = copy.deepcopy(full)
    half.autocast_dtype = torch.bfloat16
    rng = np.random.default_rng(0)
    b = 32
    batch = to_torch(
        Batch(
            Observation(None, rng.standard_normal((b, 3), np.float32), None),
            rng.uniform(-0.9, 0.9, (b, 2)).astype(np.float32),
            (rng.random(b) < 0.3).astype(np.float32),
            Observation(None, rng.standard_normal((b, 3), np.float32), None),
            np.zeros(b, bool),
            np.zeros(b, bool),
        ),
        torch.device("cpu"),
    )
    expected, got = fp32_and_bf16_updates(full, half, batch, "critic/q_data")
    assert abs(got["critic/q_data"] - expected["critic/q_data"]) < 0.1  # not bf16's 0.5 steps at 100
    for key in ("critic/td_loss", "actor/loss", "actor/entropy"):
        assert got[key] == pytest.approx(expected[key], rel=0.05, abs=0.05), key
    assert_fp32_training_state([half.q, half.q_target, half.actor], [half.critic_optimizer, half.actor_optimizer])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fine_tuning_precision_is_used_and_recorded(
    cog_runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    used: list[torch.dtype | None] = []
    real_update = PessimisticEnsemble.update
    monkeypatch.setattr(
        PessimisticEnsemble, "update", lambda self, batch: used.append(self.autocast_dtype) or real_update(self, batch)
    )
    run = finetune(config(cog_runs["runs"], tmp_path / "ft", online_steps=12, precision=precision))
    assert json.loads((run / "run.json").read_text())["config"]["precision"] == precision
    assert used == [torch.bfloat16 if precision == "bf16" else None] * (3 + 2)


def test_keep_cql_adds_the_weighted_conservative_term_to_the_td_loss() -> None:
    """The ablation "CQL term kept during fine-tuning": the same TD loss (same draws for the targets) plus
    w_cql times the conservative gap of every critic (the gap's formula is `cql.conservative_gap`, checked against
    the CQL(H) equation in test_cql.py)."""
    torch.manual_seed(0)
    members = [CQL(CQLConfig(hidden=(8,)), None, 3, 2) for _ in range(2)]
    plain = PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig(init_alpha=0.3))
    rng = np.random.default_rng(0)
    obs = Observation(None, rng.standard_normal((6, 3)).astype(np.float32), None)
    batch = to_torch(
        Batch(obs, rng.uniform(-0.9, 0.9, (6, 2)).astype(np.float32), np.ones(6, np.float32), obs,
              np.zeros(6, bool), np.zeros(6, bool)),
        torch.device("cpu"),
    )  # fmt: skip
    alpha = plain.log_alpha.exp().detach()
    features = plain.actor.encode(None, batch.obs.state)
    losses = {}
    for keep in (False, True):
        cfg = dataclasses.replace(plain.cfg, keep_cql=keep, cql_weight=0.7)
        torch.manual_seed(5)
        losses[keep] = ensemble_critic_loss(plain.q, plain.q_target, plain.actor, features, batch, alpha, 2, cfg)
    (without, _, _), (with_cql, _, metrics) = losses[False], losses[True]
    assert "critic/cql_gap" in metrics and "critic/cql_gap" not in losses[False][2]
    gap_sum = 4 * metrics["critic/cql_gap"]  # 2 agents x 2 critics
    assert with_cql.item() == pytest.approx(without.item() + 0.7 * gap_sum, rel=1e-5, abs=1e-5)
    assert abs(gap_sum) > 1e-3  # the term is not trivially zero


# -- the online store --------------------------------------------------------------------------------------------------
def test_online_store_layout_growth_and_round_trip() -> None:
    store = OnlineStore(state_dim=2, action_dim=1, privileged_dim=1, image_shape=(2, 2, 3), capacity=1)

    def obs(t: float) -> dict[str, np.ndarray]:
        return {"state": np.array([t, -t], np.float32), "privileged": np.array([10 * t], np.float32),
                "image": np.full((2, 2, 3), int(t), np.uint8)}  # fmt: skip

    with pytest.raises(RuntimeError, match="start_episode"):
        store.add([0.0], 0.0, False, False, obs(1))
    store.start_episode(obs(0))
    for t in (1, 2, 3):  # an episode of 3 steps, terminated at the last
        store.add([t / 10], float(t == 3), t == 3, False, obs(t))
    store.start_episode(obs(100))
    store.add([0.5], 0.0, False, False, obs(101))  # a second episode, cut short after one step
    assert (len(store), store.num_frames, store.num_episodes) == (4, 6, 2)
    batch = store.sample_indices([3, 0, 2])
    np.testing.assert_array_equal(batch.obs.state[:, 0], [100, 0, 2])
    np.testing.assert_array_equal(batch.next_obs.state[:, 0], [101, 1, 3])
    np.testing.assert_array_equal(batch.next_obs.privileged[:, 0], [1010, 10, 30])  # type: ignore[index]
    np.testing.assert_array_equal(batch.obs.image[:, 0, 0, 0], [100, 0, 2])  # type: ignore[index]
    np.testing.assert_array_equal(batch.terminated, [False, False, True])
    np.testing.assert_allclose(batch.action[:, 0], [0.5, 0.1, 0.3])

    buffer = io.BytesIO()
    np.savez(buffer, **store.arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    copy = OnlineStore.from_arrays(arrays, capacity=8)
    assert (len(copy), copy.num_frames, copy.num_episodes) == (4, 6, 2)
    for name, array in store.arrays().items():
        np.testing.assert_array_equal(copy.arrays()[name], array)
    copy.start_episode(obs(200))
    copy.add([0.0], 0.0, False, True, obs(201))
    assert copy.sample_indices([4]).next_obs.state[0, 0] == 201

    broken = dict(arrays, obs_index=np.array([0, 1, 2, 3], np.int64))  # transition 3 would cross into episode 2
    with pytest.raises(ValueError, match="episode boundary"):
        OnlineStore.from_arrays(broken)
    with pytest.raises(ValueError, match="dtype"):
        OnlineStore.from_arrays(dict(arrays, rewards=arrays["rewards"].astype(np.float64)))


def test_fine_tuning_runs_are_reported_with_start_drop_and_area(cog_runs: dict[str, Any], tmp_path: Path) -> None:
    from robot_rl.report import find_runs, write_report

    for replay in ("balanced", "uniform"):
        finetune(config(cog_runs["runs"], tmp_path / "ft" / replay, replay=replay, eval_every=10))
    runs = find_runs([tmp_path / "ft"])
    assert sorted(r.method for r in runs) == ["balanced", "uniform"]
    for run in runs:
        assert run.kind == "finetune" and run.finished and run.task == "closed_drawer"
        assert run.observation == "state"  # the members' observation mode
        assert [step for step, _ in run.curve] == [0, 10, 20, 30]  # before any online step, then every 10
        values = [v for _, v in run.curve]
        assert run.initial == values[0] and run.drop == max(0.0, values[0] - min(values))
        assert run.auc == pytest.approx((values[0] / 2 + values[1] + values[2] + values[3] / 2) / 3)
    text = write_report([tmp_path / "ft"], tmp_path / "report").read_text()
    assert "## Fine-tuning (x = online environment steps)" in text
    assert (
        "| closed_drawer | balanced |" in text and (tmp_path / "report" / "finetune_curves_closed_drawer.png").exists()
    )


def test_the_ensemble_exports_one_deployable_policy_that_acts_as_the_ensemble(
    cog_runs: dict[str, Any], tmp_path: Path
) -> None:
    from robot_rl.checkpoints import export_policy
    from robot_rl.policy import CheckpointError, Policy

    runs = cog_runs["runs"]
    members, offline_data = load_agents(runs, check_runs(runs), torch.device("cpu"))
    agent = PessimisticEnsemble.from_cql_agents(members, PessimisticEnsembleConfig())
    spec = offline_data.info.env_spec
    folder = export_policy(agent, spec, use_privileged=True).save(tmp_path / "policy")
    policy = Policy.load(folder)
    assert policy.spec.members == 2
    assert json.loads((folder / "policy.json").read_text())["actor"] == "EnsembleActor"
    batch = offline_data.sample(np.random.default_rng(3), 8)
    observations = {"state": batch.obs.state, "privileged": batch.obs.privileged}
    state = np.concatenate([batch.obs.state, batch.obs.privileged], axis=1)  # type: ignore[list-item]
    np.testing.assert_allclose(
        policy.act_batch(observations), agent.act(state, deterministic=True), rtol=1e-6, atol=1e-6
    )
    # it is the moment-matched action, not member 0's
    with torch.no_grad():
        first = members[0].actor.deterministic(members[0].actor.encode(None, torch.from_numpy(state))).numpy()
    assert not np.allclose(policy.act_batch(observations), first, atol=1e-4)
    # the recorded actor class must agree with the spec's members
    record = json.loads((folder / "policy.json").read_text())
    record["actor"] = "TanhGaussianActor"
    (folder / "policy.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match the spec"):
        Policy.load(folder)


def test_a_fine_tuning_run_leaves_its_ensemble_policy(cog_runs: dict[str, Any], tmp_path: Path) -> None:
    from robot_rl.policy import Policy

    run = finetune(config(cog_runs["runs"], tmp_path / "ft", online_steps=10, first_batch=10, eval_every=10))
    policy = Policy.load(run / "policy")
    assert policy.spec.members == 2 and policy.info["online_steps"] == 10
    # each evaluation's policy is kept: the joined agents before any online step, and after the 10 steps
    assert sorted(p.name for p in (run / "policies").iterdir()) == ["step0", "step10"]
    assert [Policy.load(run / "policies" / s).info["online_steps"] for s in ("step0", "step10")] == [0, 10]


# -- image runs ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """Image-mode COG runs of 6 steps on 24x24 images (see `closed_drawer_cog_runs`)."""
    runs: tuple[Path, ...] = closed_drawer_cog_runs(tmp_path_factory.mktemp("finetune_image"), "image", 6, 8)["runs"]
    return runs


def test_image_runs_fine_tune_on_images_and_resume_exactly(
    image_runs: tuple[Path, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image members: the online store keeps the camera frames, the density ratio trains on the first critic's
    features, the deployable policy acts on images, and a resume continues as the uninterrupted run."""
    from robot_rl.policy import Policy

    def image_config(out: Path) -> FinetuneConfig:
        ratio = DensityRatioConfig(hidden=HIDDEN, online_batch_size=8, offline_batch_size=8)
        return config(image_runs, out, batch_size=8, eval_every=30, density_ratio=ratio)

    ratio_inputs: list[int] = []
    update = finetune_module.DensityRatio.update

    def recording(self: Any, *args: Any) -> dict[str, float]:
        ratio_inputs.append(args[0].shape[1])
        return update(self, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(finetune_module.DensityRatio, "update", recording)
    whole = finetune(image_config(tmp_path / "whole"))
    members, _ = load_agents(image_runs, check_runs(image_runs), torch.device("cpu"))
    assert set(ratio_inputs) == {members[0].q.encoder.output_dim}  # critic features, not the 8-wide state
    online = saved_online(whole)
    assert online["images"].shape[1:] == (24, 24, 3) and online["images"].dtype == np.uint8
    assert len(online["images"]) == 30 + 3 and online["images"].std() > 0  # 3 episodes of 10 steps, 11 frames each
    assert "privileged" not in online
    rows = read_metrics(whole / "metrics.jsonl")
    assert [r["eval/episodes"] for r in rows if "eval/episodes" in r] == [1.0, 1.0]  # step 0 and the end
    policy = Policy.load(whole / "policy")
    assert policy.spec.members == 2 and policy.spec.image_shape is not None
    action = policy.act({"image": online["images"][0], "state": online["states"][0]})
    assert action.shape == (members[0].actor.action_dim,) and np.all(np.abs(action) <= 1)

    cut = tmp_path / "cut"
    crash_after(3 + 14, image_config(cut), monkeypatch)  # crash at online step 25, after the checkpoint of step 20
    finetune(FinetuneConfig(resume=cut))

    def losses(run: Path) -> dict[float, float]:
        return {
            r["online_steps"]: r["critic/td_loss"] for r in read_metrics(run / "metrics.jsonl") if "critic/td_loss" in r
        }

    assert losses(cut)[30.0] == pytest.approx(losses(whole)[30.0], rel=1e-5)
    np.testing.assert_array_equal(saved_online(cut)["images"], online["images"])


def test_the_report_says_when_each_seed_first_reached_the_target() -> None:
    from robot_rl.report import RunSummary, _finetune_section

    def run(seed: int, curve: list[tuple[int, float]]) -> RunSummary:
        return RunSummary(Path(f"s{seed}"), "closed_drawer", "balanced", seed, 7500, True, curve[-1][1], None, 20,
                          curve=curve, kind="finetune")  # fmt: skip

    climbs = run(0, [(0, 0.85), (2500, 0.75), (5000, 0.95), (7500, 0.9)])
    stalls = run(1, [(0, 0.5), (2500, 0.6), (5000, 0.9), (7500, 0.94)])
    assert climbs.steps_to(0.95) == 5000 and stalls.steps_to(0.95) is None and stalls.steps_to(0.5) == 0
    assert climbs.drop == pytest.approx(0.10)
    rows = [line for line in _finetune_section([climbs, stalls]) if line.startswith("| closed_drawer")]
    assert rows == [rows[0]] and rows[0].endswith("| 5000, never |")

"""Offline training runs end to end on tiny real datasets: every algorithm, resume, and bad input."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robot_rl.algos.cql import CQLConfig
from robot_rl.checkpoints import load_learner
from robot_rl.data.episodes import DatasetError, read_info
from robot_rl.data.replay import Batch, load_dataset
from robot_rl.networks import ConvConfig
from robot_rl.policy import Policy
from robot_rl.train import offline
from robot_rl.train.logger import read_metrics
from robot_rl.train.offline import OfflineConfig, TrainingError, make_agent, train_offline
from sim_envs.collect import SCALES, collect, load_recipe
from sim_envs.env import ManipulationEnv

RECIPES = Path(__file__).resolve().parents[1] / "datasets" / "recipes"
TINY_NET = {"hidden": (32, 32), "conv": ConvConfig(channels=(4, 4, 4))}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for key, file in (("task", "drawer-closed-task"), ("prior", "drawer-closed-prior"), ("pick", "pickplace-task")):
        recipe = load_recipe(RECIPES / f"{file}.yaml")
        recipe = dataclasses.replace(recipe, episodes=dict.fromkeys(SCALES, 3), env_kwargs={"image_size": 24})
        out[key] = collect(recipe, "smoke", root, workers=1, progress=False).folder
    return out


def config(datasets: dict[str, Path], out: Path, **changes: Any) -> OfflineConfig:
    base = OfflineConfig(
        task=datasets["task"],
        prior=datasets["prior"],
        observation="state",
        steps=20,
        batch_size=16,
        eval_every=0,
        eval_episodes=2,
        eval_workers=1,
        eval_videos=1,
        checkpoint_every=10,
        log_every=5,
        threads=1,
        progress=False,
        out=out,
        cql=CQLConfig(**TINY_NET),  # type: ignore[arg-type]
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("algo", ["cog", "cql", "sac", "bc"])
def test_every_algorithm_runs_and_writes_its_run_folder(datasets: dict[str, Path], tmp_path: Path, algo: str) -> None:
    run = train_offline(config(datasets, tmp_path / algo, algo=algo, bc=offline.BCConfig(hidden=(32, 32))))
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["algo"] == algo and record["versions"]["torch"]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if "actor/loss" in r] == [5, 10, 15, 20]
    final = [r for r in rows if "eval/success" in r]
    assert len(final) == 1 and final[0]["eval/episodes"] == 2.0
    for name in ("checkpoints/latest", "policy", "learning_curves.png"):
        assert (run / name).exists(), name
    assert list((run / "videos").rglob("*.mp4"))
    if algo == "cog":
        assert all(r["train/task_fraction"] == 0.5 for r in rows if "train/task_fraction" in r)
        assert all("critic/cql_gap" in r for r in rows if "actor/loss" in r)


def test_awr_actor_extraction_trains_end_to_end(datasets: dict[str, Path], tmp_path: Path) -> None:
    """`--cql.actor-objective awr`: after the warm start the actor's rows carry the AWR metrics, before it none."""
    cql = CQLConfig(**TINY_NET, actor_objective="awr", bc_warm_start_steps=10)  # type: ignore[arg-type]
    run = train_offline(config(datasets, tmp_path / "awr", cql=cql))
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "actor/loss" in r]
    assert [r["step"] for r in rows if "actor/awr_max_share" in r] == [15, 20]  # updates 11..20 are AWR's
    assert all(0 < r["actor/awr_max_share"] <= 1 for r in rows if "actor/awr_max_share" in r)
    assert json.loads((run / "run.json").read_text())["config"]["cql"]["actor_objective"] == "awr"


def test_image_observations(datasets: dict[str, Path], tmp_path: Path) -> None:
    run = train_offline(config(datasets, tmp_path / "image", observation="image", steps=4, log_every=2))
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[-1]["eval/episodes"] == 2.0


def test_a_resumed_run_continues_exactly(
    datasets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train_offline(config(datasets, tmp_path / "whole"))
    original = offline.CogMixSampler.sample
    calls = {"n": 0}

    def interrupted(self: offline.CogMixSampler, rng: np.random.Generator, batch_size: int) -> Batch:
        calls["n"] += 1
        if calls["n"] > 17:  # after the checkpoint at step 10 and the row of step 15
            raise KeyboardInterrupt
        return original(self, rng, batch_size)

    monkeypatch.setattr(offline.CogMixSampler, "sample", interrupted)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_offline(config(datasets, cut))
    monkeypatch.setattr(offline.CogMixSampler, "sample", original)
    train_offline(config(datasets, cut), resume=cut)

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["critic/td_loss"] for r in read_metrics(run / "metrics.jsonl") if "critic/td_loss" in r}

    expected, resumed = losses(whole), losses(cut)
    for step in (15, 20):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
    # the row of step 15 logged before the crash was dropped on resume: one row per step, as in the whole run
    steps = [[r["step"] for r in read_metrics(run / "metrics.jsonl")] for run in (whole, cut)]
    assert steps[1] == steps[0]


def test_evaluating_leaves_training_as_it_would_be_without(datasets: dict[str, Path], tmp_path: Path) -> None:
    """Evaluations (which build policies) in the middle of training do not move training's random draws: the losses
    equal a run that evaluates only at the end, so a resume from the checkpoint taken before an evaluation is exact."""
    quiet = train_offline(config(datasets, tmp_path / "quiet", eval_videos=0))
    busy = train_offline(config(datasets, tmp_path / "busy", eval_every=5, eval_videos=0))

    def losses(run: Path) -> list[float]:
        return [r["critic/td_loss"] for r in read_metrics(run / "metrics.jsonl") if "critic/td_loss" in r]

    assert len([r for r in read_metrics(busy / "metrics.jsonl") if "eval/success" in r]) == 4
    assert losses(busy) == pytest.approx(losses(quiet), rel=1e-6)
    # every evaluated policy is kept: the step-5 policy differs from the final one, which equals policy/
    assert sorted(p.name for p in (busy / "policies").iterdir()) == ["step10", "step15", "step20", "step5"]
    final = Policy.load(busy / "policy").actor.state_dict()
    kept = {s: Policy.load(busy / "policies" / s).actor.state_dict() for s in ("step5", "step20")}
    assert all(torch.equal(final[k], kept["step20"][k]) for k in final)
    assert not all(torch.equal(final[k], kept["step5"][k]) for k in final)


def test_nan_in_a_batch_stops_training_and_keeps_the_last_good_checkpoint(
    datasets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = offline.CogMixSampler.sample
    calls = {"n": 0}

    def poisoned(self: offline.CogMixSampler, rng: np.random.Generator, batch_size: int) -> Batch:
        calls["n"] += 1
        batch = original(self, rng, batch_size)
        if calls["n"] == 14:
            batch.action[0, 0] = np.nan
        return batch

    monkeypatch.setattr(offline.CogMixSampler, "sample", poisoned)
    run = tmp_path / "nan"
    cfg = config(datasets, run)
    with pytest.raises(TrainingError, match="non-finite action in the batch of step 13"):
        train_offline(cfg)
    # The checkpoint of step 10 is intact and loads into a fresh agent.
    agent = offline.make_agent(cfg, load_dataset(datasets["task"], keys=("state", "privileged")), torch.device("cpu"))
    extra = load_learner(run / "checkpoints" / "latest", agent)
    assert extra["step"] == 10 and agent.steps == 10


def test_datasets_that_do_not_match_are_refused(datasets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot combine"):
        train_offline(config(datasets, tmp_path / "mismatch", prior=datasets["pick"]))
    with pytest.raises(TrainingError, match="needs a prior dataset"):
        train_offline(config(datasets, tmp_path / "noprior", prior=None))


def test_train_and_eval_commands(datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robot_rl.cli import main

    out = tmp_path / "cli"
    args = ["train", "--task", str(datasets["task"]), "--prior", str(datasets["prior"]), "--observation", "state"]
    args += ["--steps", "6", "--batch-size", "8", "--eval-episodes", "2", "--eval-workers", "1", "--log-every", "3"]
    args += ["--checkpoint-every", "3", "--threads", "1", "--no-progress", "--out", str(out), "--cql.hidden", "16"]
    main(args)
    assert "evaluation at step 6" in capsys.readouterr().out
    main(["train", "--resume", str(out), "--no-progress"])  # already complete: resumes at step 6 and stops
    assert "run: " in capsys.readouterr().out
    main(["eval", str(out / "policy"), "--initial-condition", "closed", "--episodes", "2", "--workers", "1"])
    main_out = capsys.readouterr().out
    assert "success" in main_out
    result = json.loads((out / "eval-closed" / "eval.json").read_text())
    assert result["eval/episodes"] == 2.0 and len(result["per_episode"]) == 2
    assert Policy.load(out / "policy").info["env_id"] == read_info(datasets["task"])[0].env_id  # what eval stepped
    # A shorter horizon than the closed drawer's 50 steps ends every episode there (a 6-step policy succeeds in none).
    main(["eval", str(out / "policy"), "--episodes", "2", "--workers", "1", "--max-episode-steps", "3", "--out",
          str(tmp_path / "short")])  # fmt: skip
    short = json.loads((tmp_path / "short" / "eval.json").read_text())
    assert [e["steps"] for e in short["per_episode"]] == [3, 3]
    assert [e["steps"] for e in result["per_episode"]] == [50, 50]
    with pytest.raises(SystemExit, match="--max-episode-steps must be >= 1"):
        main(["eval", str(out / "policy"), "--max-episode-steps", "0"])
    # --binary-actions evaluates (and keeps beside the results) the policy with the gripper commanded at +-1.
    main(["eval", str(out / "policy"), "--episodes", "1", "--workers", "1", "--binary-actions", "gripper", "--out",
          str(tmp_path / "binary")])  # fmt: skip
    assert Policy.load(tmp_path / "binary" / "policy").spec.binary_actions == ("gripper",)
    assert Policy.load(out / "policy").spec.binary_actions == ()  # the run's own policy is left as it was
    with pytest.raises(SystemExit, match="binary_actions must be distinct action names"):
        main(["eval", str(out / "policy"), "--binary-actions", "claw", "--out", str(tmp_path / "claw")])


def test_a_run_with_binary_actions_exports_and_evaluates_policies_that_command_them_at_plus_or_minus_one(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    run = train_offline(config(datasets, tmp_path / "binary", steps=2, log_every=1, binary_actions=("gripper",)))
    policy = Policy.load(run / "policy")
    assert policy.spec.binary_actions == ("gripper",)
    task = load_dataset(datasets["task"], keys=("state", "privileged"))
    assert task.privileged is not None
    obs = {"state": task.states[:4], "privileged": task.privileged[:4]}
    assert set(np.abs(policy.act_batch(obs)[:, 4]).tolist()) == {1.0}
    with pytest.raises(TrainingError, match=r"binary_actions \['claw'\] are not action names"):
        train_offline(config(datasets, tmp_path / "claw", binary_actions=("claw",)))
    assert not (tmp_path / "claw" / "checkpoints").exists()  # refused before training


def test_eval_command_needs_an_env_id_for_a_policy_that_records_none(datasets: dict[str, Path], tmp_path: Path) -> None:
    from robot_rl.cli import main

    run = train_offline(config(datasets, tmp_path / "old", steps=2, log_every=1))
    policy = Policy.load(run / "policy")
    policy.info.pop("env_id")  # as policies exported before the env was recorded
    old = policy.save(tmp_path / "old-policy")
    with pytest.raises(SystemExit, match="give --env-id"):
        main(["eval", str(old), "--episodes", "1", "--workers", "1"])


def test_state_standardisation_comes_from_the_training_data_and_ships_with_the_policy(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    run = train_offline(config(datasets, tmp_path / "norm", steps=2, log_every=1))
    task = load_dataset(datasets["task"], keys=("state", "privileged"))
    prior = load_dataset(datasets["prior"], keys=("state", "privileged"))
    mean, std = offline.state_statistics([task, prior], True, 0.01)
    states = np.concatenate([np.concatenate([s.states, s.privileged], axis=1) for s in (task, prior)])  # type: ignore[list-item]
    np.testing.assert_allclose(mean.numpy(), states.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert float(std.min()) == pytest.approx(0.01)  # floored: constant coordinates (a parked blocker) do not blow up
    weights = Policy.load(run / "policy").actor.state_dict()
    torch.testing.assert_close(weights["encoder.state_mean"], mean)
    torch.testing.assert_close(weights["encoder.state_std"], std)


@pytest.mark.parametrize("algo", ["cog", "bc"])
def test_bf16_precision_trains_and_is_recorded(datasets: dict[str, Path], tmp_path: Path, algo: str) -> None:
    run = train_offline(config(datasets, tmp_path / algo, algo=algo, steps=4, log_every=2, precision="bf16"))
    assert json.loads((run / "run.json").read_text())["config"]["precision"] == "bf16"
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "actor/loss" in r]
    assert len(rows) == 2 and all(np.isfinite(r["actor/loss"]) for r in rows)


def test_an_averaged_actor_is_the_deployed_policy_and_the_live_one_is_evaluated_beside_it(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    cql_cfg = CQLConfig(**TINY_NET, actor_average=0.1)  # type: ignore[arg-type]
    run = train_offline(config(datasets, tmp_path / "run", steps=10, eval_every=10, eval_videos=0, cql=cql_cfg))
    row = next(r for r in read_metrics(run / "metrics.jsonl") if "eval/success" in r)
    assert row["eval/episodes"] == row["eval_live/episodes"] == 2
    agent = make_agent(config(datasets, tmp_path / "unused", cql=cql_cfg), load_dataset(datasets["task"]), "cpu")
    load_learner(run / "checkpoints" / "latest", agent)
    assert agent.actor_average is not None
    obs = {"state": np.zeros(5, np.float32), "privileged": np.zeros(12, np.float32)}
    deployed = Policy.load(run / "policy").act(obs)
    live = Policy.load(run / "policies" / "step10-live").act(obs)
    assert not np.allclose(deployed, live)
    stats = dict(agent.actor_average.encoder.named_buffers())
    torch.testing.assert_close(stats["state_std"], dict(agent.actor.encoder.named_buffers())["state_std"])
    assert not torch.equal(stats["state_std"], torch.ones_like(stats["state_std"]))  # standardised like the actor


def test_averaged_exports_are_the_deployed_policy_and_the_latest_export_is_evaluated_beside_it(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    run = train_offline(config(datasets, tmp_path / "run", steps=15, eval_every=5, eval_videos=0, average_exports=2))
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success" in r]
    assert [r["step"] for r in rows] == [5, 10, 15]
    assert all(r["eval_export/episodes"] == r["eval/episodes"] == 2 for r in rows)
    weights = {name: Policy.load(run / "policies" / name).actor.state_dict() for name in ("step5", "step10", "step15")}
    first = Policy.load(run / "policies" / "step5-avg")
    assert first.info["averaged_exports"] == [5]
    torch.testing.assert_close(first.actor.state_dict(), weights["step5"])  # the average of one export is itself
    assert rows[0]["eval_export/success"] == rows[0]["eval/success"]
    final = Policy.load(run / "policy")
    assert final.info["averaged_exports"] == [10, 15] and final.info["learner_steps"] == 15
    for key, value in final.actor.state_dict().items():
        expected = (weights["step10"][key].double() + weights["step15"][key].double()) / 2
        torch.testing.assert_close(value, expected.float())
    assert any(not torch.equal(v, weights["step15"][k]) for k, v in final.actor.state_dict().items())
    assert offline.train_result(run)["step"] == 15  # the run's final success is the average's (eval/*)


def test_zero_evaluation_episodes_exports_the_policies_and_evaluates_nothing(
    datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--eval-episodes 0` used to log NaN success rows, and `robot-rl train` then failed formatting them."""
    from robot_rl.cli import main

    out = tmp_path / "run"
    main(["train", "--task", str(datasets["task"]), "--prior", str(datasets["prior"]), "--observation", "state",
          "--steps", "10", "--batch-size", "8", "--eval-every", "5", "--eval-episodes", "0", "--threads", "1",
          "--average-exports", "2", "--log-every", "5", "--cql.hidden", "16", "16", "--out", str(out),
          "--no-progress"])  # fmt: skip
    rows = read_metrics(out / "metrics.jsonl")
    assert rows and not [r for r in rows if any(k.startswith("eval") for k in r)]
    assert Policy.load(out / "policy").info["averaged_exports"] == [5, 10]
    assert (out / "policies" / "step5").is_dir() and not (out / "videos").exists()
    printed = capsys.readouterr().out
    assert f"run: {out}" in printed and "evaluation at step" not in printed


def test_the_exports_averaged_are_the_latest_up_to_the_step(tmp_path: Path) -> None:
    for name in ("step5", "step10", "step15", "step20", "step15-avg", "step15-live"):
        (tmp_path / name).mkdir()
    (tmp_path / "step25").write_text("not a folder")
    assert offline.last_exports(tmp_path, 15, 2) == [10, 15]  # step20: past the step a resumed run stands at
    assert offline.last_exports(tmp_path, 20, 3) == [10, 15, 20]
    assert offline.last_exports(tmp_path, 5, 3) == [5]


def test_native_bf16_is_read_from_the_cpus_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_tile amx_bf16\n\nprocessor\t: 1\n")
    assert offline.cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not offline.cpu_has_native_bf16(info)
    assert not offline.cpu_has_native_bf16(tmp_path / "missing")


@pytest.mark.parametrize("native", [True, False])
def test_native_precision_trains_in_bf16_only_where_the_cpu_has_it(
    datasets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(offline, "cpu_has_native_bf16", lambda: native)
    used: list[torch.dtype | None] = []
    real_update = offline.CQL.update
    monkeypatch.setattr(
        offline.CQL, "update", lambda self, batch: used.append(self.autocast_dtype) or real_update(self, batch)
    )
    train_offline(config(datasets, tmp_path / "run", steps=2, precision="native"))
    assert used == [torch.bfloat16 if native else None] * 2


@pytest.mark.parametrize("native", [True, False])
def test_bf16_asked_for_on_a_cpu_that_emulates_it_warns(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(offline, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert offline.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16  # still what was asked for
        assert offline.autocast_dtype("native", torch.device("cpu")) is (torch.bfloat16 if native else None)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == (0 if native else 1)
    assert all("emulates it" in m and "native" in m for m in messages)


def test_success_terminal_and_reward_scale_shape_what_the_learner_sees() -> None:
    rng = np.random.default_rng(0)
    reward = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    terminated = np.array([False, False, True, False])
    batch = Batch(None, rng.normal(size=(4, 5)).astype(np.float32), reward, None, terminated, np.zeros(4, bool))  # type: ignore[arg-type]
    shaped = offline.shape_rewards(batch, 100.0, success_terminal=True)
    np.testing.assert_array_equal(shaped.reward, [0.0, 100.0, 0.0, 100.0])
    np.testing.assert_array_equal(shaped.terminated, [False, True, True, True])  # rewarded ones end; others kept
    assert shaped.reward.dtype == np.float32 and shaped.terminated.dtype == np.bool_
    plain = offline.shape_rewards(batch, 2.0, success_terminal=False)
    np.testing.assert_array_equal(plain.terminated, terminated)
    np.testing.assert_array_equal(plain.reward, [0.0, 2.0, 0.0, 2.0])
    np.testing.assert_array_equal(batch.reward, [0.0, 1.0, 0.0, 1.0])  # the sampled batch itself is not changed


@pytest.fixture()
def seen_batches(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every batch the CQL agent updates on, in order (its update is wrapped, not replaced)."""
    from robot_rl.algos.cql import CQL

    seen: list[Any] = []
    update = CQL.update

    def spy(self: CQL, batch: Any) -> dict[str, float]:
        seen.append(batch)
        return update(self, batch)

    monkeypatch.setattr(CQL, "update", spy)
    return seen


def test_training_with_success_terminal_feeds_shaped_batches(
    datasets: dict[str, Path], tmp_path: Path, seen_batches: list[Any]
) -> None:
    cfg = config(datasets, tmp_path / "term", algo="cql", steps=6, success_terminal=True, reward_scale=100.0)
    train_offline(cfg)
    rewards = torch.cat([b.reward for b in seen_batches])
    terminated = torch.cat([b.terminated for b in seen_batches])
    assert set(rewards.unique().tolist()) <= {0.0, 100.0} and bool((rewards == 100.0).any())
    assert bool((terminated[rewards > 0] == 1).all())
    with pytest.raises(TrainingError, match="reward_scale"):
        train_offline(config(datasets, tmp_path / "bad", reward_scale=float("nan")))


@pytest.mark.parametrize("mixing", ["ratio", "pooled"])
def test_n_step_training_feeds_per_transition_discounts(
    datasets: dict[str, Path], tmp_path: Path, seen_batches: list[Any], mixing: str
) -> None:
    seen = seen_batches
    cfg = config(datasets, tmp_path / mixing, steps=8, n_step=4, mixing=mixing, success_terminal=True)
    run = train_offline(cfg)
    assert json.loads((run / "run.json").read_text())["config"]["n_step"] == 4
    discounts = torch.cat([b.discount for b in seen])
    gamma = cfg.cql.discount
    allowed = torch.tensor([gamma**m for m in range(1, 5)])
    assert bool(torch.isclose(discounts[:, None], allowed[None, :]).any(dim=1).all())  # gamma^m, 1 <= m <= 4
    assert bool((discounts < gamma**3 + 1e-6).any())  # most windows are 4 steps long
    assert bool((discounts[torch.cat([b.terminated for b in seen]) == 0] > 0).all())
    one_step = train_offline(config(datasets, tmp_path / "one", steps=2))
    assert json.loads((one_step / "run.json").read_text())["config"]["n_step"] == 1
    assert seen[-1].discount is None  # one-step batches bootstrap with the agent's own gamma
    with pytest.raises(TrainingError, match="n_step must be >= 1"):
        train_offline(config(datasets, tmp_path / "bad", n_step=0))


def test_n_step_on_prior_data_only(datasets: dict[str, Path], tmp_path: Path, seen_batches: list[Any]) -> None:
    seen = seen_batches
    cfg = config(datasets, tmp_path / "prior", steps=4, n_step=4, n_step_data="prior")
    train_offline(cfg)
    gamma, half = cfg.cql.discount, cfg.batch_size // 2
    task_discounts = torch.cat([b.discount[:half] for b in seen])  # the mix puts task transitions first
    prior_discounts = torch.cat([b.discount[half:] for b in seen])
    assert torch.allclose(task_discounts, torch.full_like(task_discounts, gamma))  # one-step targets
    assert bool((prior_discounts < gamma**3 + 1e-6).any())  # n-step returns
    with pytest.raises(TrainingError, match="n_step_data='prior' needs"):
        train_offline(config(datasets, tmp_path / "bad", n_step=4, n_step_data="prior", mixing="pooled"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("checkpoint_every", 0, "checkpoint_every must be >= 1, got 0"), ("steps", -5, "steps must be >= 1, got -5"),
     ("task_fraction", 1.5, "task_fraction must be in"), ("eval_episodes", -1, "eval_episodes must be >= 0"),
     ("cql", CQLConfig(bc_weight=-0.1), r"cql.bc_weight must be a finite number >= 0, got -0.1"),
     ("cql", CQLConfig(awr_temperature=-1.0), r"cql.awr_temperature must be a finite number > 0, got -1.0"),
     ("n_step", 0, "n_step must be >= 1"), ("average_exports", 0, "average_exports must be >= 1, got 0")],
)  # fmt: skip
def test_a_config_that_cannot_run_is_refused_before_the_run_folder_exists(
    datasets: dict[str, Path], tmp_path: Path, field: str, value: float, message: str
) -> None:
    """A zero checkpoint interval used to fail with ZeroDivisionError at the first logged step."""
    with pytest.raises(TrainingError, match=message):
        train_offline(config(datasets, tmp_path / "bad", **{field: value}))
    assert not (tmp_path / "bad").exists()


def test_extending_a_finished_run_gives_the_longer_run(datasets: dict[str, Path], tmp_path: Path) -> None:
    """`robot-rl train --resume RUN --extend-to N` trains a finished run on to N steps, as if N had been its budget,
    and records the new budget; a budget that does not grow, or --extend-to without --resume, is refused."""
    from robot_rl.cli import main

    longer = train_offline(config(datasets, tmp_path / "longer", steps=20))
    short = train_offline(config(datasets, tmp_path / "short", steps=10))
    with pytest.raises(SystemExit, match="must exceed the run's budget of 10 steps"):
        main(["train", "--resume", str(short), "--extend-to", "10"])
    with pytest.raises(SystemExit, match="with --resume"):
        main(["train", "--extend-to", "30"])
    main(["train", "--resume", str(short), "--extend-to", "20", "--no-progress"])

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["critic/td_loss"] for r in read_metrics(run / "metrics.jsonl") if "critic/td_loss" in r}

    expected, extended = losses(longer), losses(short)
    assert sorted(extended) == sorted(expected) == [5, 10, 15, 20]
    for step in (15, 20):
        assert extended[step] == pytest.approx(expected[step], rel=1e-5), step
    recorded = json.loads((short / "run.json").read_text())["config"]
    assert recorded["steps"] == 20 and recorded["extend_to"] is None


def test_eval_condition_is_the_configured_one_else_the_tasks_hard_start() -> None:
    assert offline.eval_condition("open", "closed_drawer") == "open"
    assert offline.eval_condition(None, "pick_place") == "on_table"
    assert offline.eval_condition(None, "blocked_drawer") == "blocked"
    assert offline.eval_condition(None, "a task of my own", "unknown") == "unknown"
    for task, condition in offline.EVAL_CONDITION.items():  # each hard start exists in the task's scene
        assert condition in ManipulationEnv.conditions_of("pick_place" if task == "pick_place" else "drawer"), task
    recipes = sorted((Path(__file__).parents[1] / "datasets" / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:  # and every recipe's task has one
        assert load_recipe(recipe).task in offline.EVAL_CONDITION, recipe.name

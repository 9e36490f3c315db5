"""Tests of `robot_rl.algos.cql`: the CQL(H) critic loss against a hand computation of its equation, the agent's
update contract (every parameter moves, targets by the Polyak rule, the Lagrange weight's direction, the BC warm
start) and a one-step bandit whose Q-values are known.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from robot_rl.algos import cql
from robot_rl.algos.batch import TorchBatch, TorchObs
from robot_rl.algos.cql import CQL, CQLConfig, actor_loss, critic_loss
from robot_rl.algos.optim import frozen
from robot_rl.networks import ConvConfig, QEnsemble, TanhGaussianActor

S, A, B, K = 2, 1, 6, 2
"""State and action dimensions, batch size and sampled actions per observation of the hand-checked loss."""
SampleFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]


# -- helpers -------------------------------------------------------------------------------------------------------
def make_batch(
    size: int = B,
    state_dim: int = S,
    action_dim: int = A,
    image: tuple[int, int, int] | None = None,
    terminated: list[float] | None = None,
    truncated: list[float] | None = None,
) -> TorchBatch:
    """A random batch; s and s' differ, so that a mix-up of the two shows."""

    def obs() -> TorchObs:
        pixels = torch.rand(size, image[2], image[0], image[1]) if image is not None else None
        return TorchObs(pixels, torch.randn(size, state_dim))

    return TorchBatch(
        obs=obs(),
        action=torch.rand(size, action_dim) * 2 - 1,
        reward=torch.randn(size),
        next_obs=obs(),
        terminated=torch.tensor(terminated if terminated is not None else [0.0] * size),
        truncated=torch.tensor(truncated if truncated is not None else [0.0] * size),
    )


def state_networks(members: int = 2) -> tuple[QEnsemble, QEnsemble, TanhGaussianActor]:
    """Tiny state-only critic, a target critic that differs from it, and an actor."""
    q = QEnsemble(members, None, S, A, hidden=(4,))
    q_target = copy.deepcopy(q)
    with torch.no_grad():
        for p in q_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return q, q_target, TanhGaussianActor(None, S, A, hidden=(4,))


class Draws:
    """Fixed stand-ins for the loss's random draws: the actor's samples at s and s' (by K) and the uniform actions.

    `sample` recognises s and s' by their features (a state-only actor's features are the state), so the stand-in
    does not depend on the order in which the loss draws.
    """

    def __init__(self, batch: TorchBatch) -> None:
        self.batch = batch
        self.uniform01 = torch.rand(B, K, A)  # what torch.rand returns; the loss maps it to 2u - 1
        self.policy = {
            (where, k): (torch.rand(B, k, A) * 1.8 - 0.9, torch.rand(B, k) * 3 - 1)  # actions, log pi
            for where in ("s", "s'")
            for k in (1, K)
        }

    def sample(self, features: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if torch.equal(features, self.batch.obs.state):
            return self.policy[("s", k)]
        assert torch.equal(features, self.batch.next_obs.state), "sampled at neither s nor s'"
        return self.policy[("s'", k)]

    def rand(self, *size: int, **kwargs: Any) -> Tensor:
        assert tuple(size) == (B, K, A), size
        return self.uniform01.clone()


def patched_critic_loss(
    monkeypatch: pytest.MonkeyPatch,
    draws: Draws,
    q: QEnsemble,
    q_target: QEnsemble,
    actor: TanhGaussianActor,
    batch: TorchBatch,
    alpha: float,
    weight: float,
    cfg: CQLConfig,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """`critic_loss` with its random draws replaced by `draws`: (loss, conservative term (N,), metrics)."""
    with monkeypatch.context() as m:
        m.setattr(actor, "sample", draws.sample)
        m.setattr(torch, "rand", draws.rand)
        features = actor.encode(batch.obs.image, batch.obs.state)
        loss, conservative, _, metrics = critic_loss(
            q, q_target, actor, features, batch, torch.tensor(alpha), torch.tensor(weight), cfg
        )
    return loss, conservative, metrics


def reference_critic_loss(
    draws: Draws,
    q: QEnsemble,
    q_target: QEnsemble,
    batch: TorchBatch,
    alpha: float,
    weight: float,
    cfg: CQLConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """The module docstring's L_critic, one action at a time through the networks' forward: (loss, conservative
    term (N,), target y (B,))."""
    s, s_next = batch.obs.state, batch.next_obs.state
    with torch.no_grad():
        next_action, next_log_prob = draws.policy[("s'", 1)]
        next_v = q_target(None, s_next, next_action[:, 0]).min(dim=0).values  # (B,)
        if cfg.backup == "entropy":
            next_v = next_v - alpha * next_log_prob[:, 0]
        y = batch.reward + cfg.discount * (1 - batch.terminated) * next_v
    q_data = q(None, s, batch.action)  # (N, B)
    uniform = draws.uniform01 * 2 - 1
    policy, policy_log_prob = draws.policy[("s", K)]
    next_policy, next_policy_log_prob = draws.policy[("s'", K)]
    terms = []  # Q(s, a_j) - log w_j, every a_j evaluated at s
    for j in range(K):
        terms.append(q(None, s, uniform[:, j]) - (-A * math.log(2)))
        terms.append(q(None, s, policy[:, j]) - policy_log_prob[:, j])
        terms.append(q(None, s, next_policy[:, j]) - next_policy_log_prob[:, j])
    if not cfg.importance_sampling:  # log of the mean of exp Q over the 3K samples
        terms = [q(None, s, a[:, j]) - math.log(3 * K) for j in range(K) for a in (uniform, policy, next_policy)]
    logsumexp = torch.logsumexp(torch.stack(terms, dim=-1), dim=-1)  # (N, B)
    conservative = logsumexp.mean(dim=1) - q_data.mean(dim=1)  # (N,)
    td = ((q_data - y) ** 2).mean(dim=1)  # (N,)
    return (td + weight * conservative).sum(), conservative, y


def snapshot(agent: CQL) -> dict[str, dict[str, Tensor]]:
    return {
        "q": {k: v.detach().clone() for k, v in agent.q.named_parameters()},
        "q_target": {k: v.detach().clone() for k, v in agent.q_target.named_parameters()},
        "actor": {k: v.detach().clone() for k, v in agent.actor.named_parameters()},
        "log_alpha": {"": agent.log_alpha.detach().clone()},
        "log_cql_weight": {"": agent.log_cql_weight.detach().clone()},
    }


# -- the critic loss against its equation --------------------------------------------------------------------------
@pytest.mark.parametrize(("members", "importance_sampling"), [(1, True), (2, True), (2, False)])
def test_critic_loss_equals_the_equation(
    monkeypatch: pytest.MonkeyPatch, members: int, importance_sampling: bool
) -> None:
    q, q_target, actor = state_networks(members)
    batch = make_batch(terminated=[1, 0, 0, 1, 0, 0], truncated=[0, 1, 0, 1, 0, 1])
    draws = Draws(batch)
    cfg = CQLConfig(discount=0.9, sampled_actions=K, importance_sampling=importance_sampling)
    loss, conservative, metrics = patched_critic_loss(monkeypatch, draws, q, q_target, actor, batch, 0.3, 0.7, cfg)
    expected, expected_conservative, y = reference_critic_loss(draws, q, q_target, batch, 0.3, 0.7, cfg)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conservative, expected_conservative, rtol=1e-5, atol=1e-5)
    assert metrics["critic/target"] == pytest.approx(y.mean().item(), abs=1e-5)
    # The same gradient, too (a detach in the wrong place would keep the value), and none into the target critic.
    params = list(q.parameters())
    grads = torch.autograd.grad(loss, params)
    expected_grads = torch.autograd.grad(expected, params)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in q_target.parameters())


def test_terminated_stops_the_bootstrap_and_truncated_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    q, q_target, actor = state_networks()
    cfg = CQLConfig(discount=0.9, sampled_actions=K)
    base = make_batch()
    draws = Draws(base)

    def run(terminated: float, truncated: float) -> tuple[Tensor, dict[str, float]]:
        batch = base._replace(terminated=torch.full((B,), terminated), truncated=torch.full((B,), truncated))
        loss, _, metrics = patched_critic_loss(monkeypatch, draws, q, q_target, actor, batch, 0.3, 0.7, cfg)
        expected, _, _ = reference_critic_loss(draws, q, q_target, batch, 0.3, 0.7, cfg)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        return loss, metrics

    with torch.no_grad():
        next_v = q_target(None, base.next_obs.state, draws.policy[("s'", 1)][0][:, 0]).min(dim=0).values
    bootstrapped = (base.reward + 0.9 * next_v).mean().item()
    loss_plain, plain = run(terminated=0, truncated=0)
    loss_truncated, truncated = run(terminated=0, truncated=1)
    loss_terminated, terminated = run(terminated=1, truncated=0)
    # Truncation changes nothing: the target still bootstraps.
    assert loss_truncated.item() == loss_plain.item()
    assert plain["critic/target"] == truncated["critic/target"] == pytest.approx(bootstrapped, abs=1e-5)
    # Termination leaves the reward alone as the target, and so changes the loss.
    assert terminated["critic/target"] == pytest.approx(base.reward.mean().item(), abs=1e-6)
    assert abs(terminated["critic/target"] - bootstrapped) > 0.01
    assert abs(loss_terminated.item() - loss_plain.item()) > 1e-3


def test_entropy_backup_subtracts_alpha_log_pi(monkeypatch: pytest.MonkeyPatch) -> None:
    q, q_target, actor = state_networks()
    batch = make_batch(terminated=[1, 0, 0, 0, 1, 0])
    draws = Draws(batch)
    alpha, gamma = 0.3, 0.9
    targets = {}
    for backup in ("deterministic", "entropy"):
        cfg = CQLConfig(discount=gamma, sampled_actions=K, backup=backup)
        loss, _, metrics = patched_critic_loss(monkeypatch, draws, q, q_target, actor, batch, alpha, 0.7, cfg)
        expected, _, _ = reference_critic_loss(draws, q, q_target, batch, alpha, 0.7, cfg)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        targets[backup] = metrics["critic/target"]
    next_log_prob = draws.policy[("s'", 1)][1][:, 0]
    shift = -(gamma * (1 - batch.terminated) * alpha * next_log_prob).mean().item()
    assert abs(shift) > 0.01
    assert targets["entropy"] - targets["deterministic"] == pytest.approx(shift, abs=1e-5)


def test_lagrange_penalty_is_offset_by_the_target_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    q, q_target, actor = state_networks()
    batch = make_batch()
    draws = Draws(batch)
    fixed = CQLConfig(sampled_actions=K)
    lagrange = CQLConfig(sampled_actions=K, lagrange=True, target_gap=2.5)
    loss_fixed, _, _ = patched_critic_loss(monkeypatch, draws, q, q_target, actor, batch, 0.3, 0.7, fixed)
    loss_lagrange, _, _ = patched_critic_loss(monkeypatch, draws, q, q_target, actor, batch, 0.3, 0.7, lagrange)
    # sum_n w (L_CQL(Q_n) - tau) = sum_n w L_CQL(Q_n) - N w tau
    torch.testing.assert_close(loss_lagrange, loss_fixed - 2 * 0.7 * 2.5, rtol=1e-5, atol=1e-5)


def test_critic_loss_with_seeded_draws_matches_the_stand_ins() -> None:
    """The stand-ins above replace exactly the loss's random draws: with real sampling, reseeding before the loss
    and drawing in the same order gives the same numbers."""
    q, q_target, actor = state_networks()
    batch = make_batch()
    cfg = CQLConfig(sampled_actions=K)
    features = actor.encode(None, batch.obs.state)
    torch.manual_seed(11)
    loss, _, _, _ = critic_loss(q, q_target, actor, features, batch, torch.tensor(0.3), torch.tensor(0.7), cfg)
    draws = Draws(batch)  # its own draws are all replaced below
    torch.manual_seed(11)
    with torch.no_grad():
        draws.policy[("s'", 1)] = actor.sample(actor.encode(None, batch.next_obs.state), 1)
        draws.policy[("s", K)] = actor.sample(features, K)
        draws.policy[("s'", K)] = actor.sample(actor.encode(None, batch.next_obs.state), K)
        draws.uniform01 = torch.rand(B, K, A)
    expected, _, _ = reference_critic_loss(draws, q, q_target, batch, 0.3, 0.7, cfg)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


# -- the agent's update --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image", [(12, 12, 3), None], ids=["image", "state"])
def test_update_moves_every_parameter_and_targets_by_polyak(image: tuple[int, int, int] | None) -> None:
    cfg = CQLConfig(hidden=(16, 16), conv=ConvConfig(channels=(4, 4, 4)), tau=0.1, sampled_actions=2)
    agent = CQL(cfg, image, state_dim=3, action_dim=2)
    assert all(not p.requires_grad for p in agent.q_target.parameters())
    before = snapshot(agent)
    metrics = agent.update(make_batch(8, state_dim=3, action_dim=2, image=image))
    after = snapshot(agent)
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    for group in ("q", "actor", "log_alpha"):
        unchanged = [name for name, p in after[group].items() if torch.equal(p, before[group][name])]
        assert not unchanged, f"{group}: {unchanged}"
    for name, target in after["q_target"].items():
        old = before["q_target"][name]
        torch.testing.assert_close(target, old + cfg.tau * (after["q"][name] - old))
        assert not torch.equal(target, old), name
    assert torch.equal(after["log_cql_weight"][""], before["log_cql_weight"][""])  # fixed weight without Lagrange
    assert agent.steps == 1


def test_the_actors_loss_reaches_the_actor_through_the_critic_but_leaves_the_critics_weights() -> None:
    image = (12, 12, 3)
    agent = CQL(CQLConfig(hidden=(16, 16), conv=ConvConfig(channels=(4, 4, 4))), image, state_dim=3, action_dim=2)
    batch = make_batch(8, state_dim=3, action_dim=2, image=image)
    features = agent.actor.encode(batch.obs.image, batch.obs.state)
    critic_features = agent.q.encode(batch.obs.image, batch.obs.state).detach()
    loss, _, _ = actor_loss(agent.q, agent.actor, features, critic_features, batch, torch.tensor(0.1), bc=False)
    loss.backward()
    # The critic's weights got no gradient, and require one again after the loss.
    assert all(p.grad is None and p.requires_grad for p in agent.q.parameters())
    # The actor's did, through Q(s, a~): without the critic the head's mean would get none from this batch's value.
    mean_rows = agent.actor.head.net[-1].weight.grad
    assert mean_rows is not None and mean_rows.abs().sum() > 0


def test_frozen_restores_each_flag_also_after_an_error() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    module[1].bias.requires_grad_(False)  # one parameter was frozen before: it stays frozen
    with pytest.raises(RuntimeError, match="inside"), frozen(module):
        assert not any(p.requires_grad for p in module.parameters())
        raise RuntimeError("inside")
    assert [p.requires_grad for p in module.parameters()] == [True, True, True, False]


@pytest.mark.parametrize(("target_gap", "direction"), [(-1e3, 1), (1e3, -1)])
def test_lagrange_weight_follows_the_gap(target_gap: float, direction: int) -> None:
    cfg = CQLConfig(hidden=(8,), lagrange=True, target_gap=target_gap, cql_weight=2.0)
    agent = CQL(cfg, None, state_dim=3, action_dim=2)
    weights = [agent.log_cql_weight.exp().item()]
    for _ in range(3):
        metrics = agent.update(make_batch(8, state_dim=3, action_dim=2))
        weights.append(agent.log_cql_weight.exp().item())
        assert metrics["critic/cql_weight"] == pytest.approx(weights[-2])  # the weight the step used
    steps = [direction * (b - a) for a, b in itertools.pairwise(weights)]
    assert all(step > 0 for step in steps), weights


def test_bc_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first `bc_warm_start_steps` actor losses are mean(alpha log pi(a~|s) - log pi(a_data|s)), later ones
    mean(alpha log pi(a~|s) - min_n Q_n(s, a~)); the BC steps raise the data action's likelihood."""
    original = cql.actor_loss
    seen: list[tuple[bool, float, float, float]] = []

    def spy(
        q: QEnsemble,
        actor: TanhGaussianActor,
        features: Tensor,
        critic_features: Tensor,
        batch: TorchBatch,
        alpha: Tensor,
        bc: bool,
        margin: float,
        bc_weight: float,
        awr: tuple[float, float] | None,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        assert bc_weight == 0.0 and awr is None  # COG's default: the critic alone after the warm start
        rng = torch.get_rng_state()
        result = original(q, actor, features, critic_features, batch, alpha, bc, margin, bc_weight, awr)
        rng_after = torch.get_rng_state()
        torch.set_rng_state(rng)  # redraw the same a~ for the expected values
        with torch.no_grad():
            action, log_prob = actor.sample(features, 1)  # (B, 1, A), (B, 1)
            as_bc = (alpha * log_prob[:, 0] - actor.log_prob(features, batch.action, eps=margin)).mean().item()
            as_q = (alpha * log_prob[:, 0] - q.q(critic_features, action).min(dim=0).values[:, 0]).mean().item()
        torch.set_rng_state(rng_after)
        seen.append((bc, result[0].item(), as_bc, as_q))
        return result

    monkeypatch.setattr(cql, "actor_loss", spy)
    cfg = CQLConfig(hidden=(16,), bc_warm_start_steps=5, init_alpha=0.1)
    agent = CQL(cfg, None, state_dim=3, action_dim=2)
    batch = make_batch(8, state_dim=3, action_dim=2)
    for _ in range(7):
        agent.update(batch)
    assert [bc for bc, *_ in seen] == [True] * 5 + [False] * 2
    for bc, loss, as_bc, as_q in seen:
        assert loss == pytest.approx(as_bc if bc else as_q, abs=1e-5)
        assert abs(as_bc - as_q) > 1e-3  # the two losses are told apart


def test_bc_warm_start_raises_the_data_likelihood() -> None:
    cfg = CQLConfig(hidden=(16,), bc_warm_start_steps=1000, init_alpha=0.1, actor_lr=1e-3)
    agent = CQL(cfg, None, state_dim=3, action_dim=2)
    batch = make_batch(16, state_dim=3, action_dim=2)._replace(action=torch.tensor([[0.6, -0.4]]).repeat(16, 1))

    def likelihood() -> float:
        with torch.no_grad():
            return agent.actor.log_prob(agent.actor.encode(None, batch.obs.state), batch.action).mean().item()

    start = likelihood()
    for _ in range(50):
        agent.update(batch)
    assert likelihood() > start + 0.3, (start, likelihood())


def test_zero_conservative_weight_is_plain_sac() -> None:
    agent = CQL(CQLConfig(hidden=(8,), cql_weight=0.0), None, state_dim=3, action_dim=2)
    assert math.isfinite(agent.update(make_batch(8, state_dim=3, action_dim=2))["critic/loss"])
    with pytest.raises(ValueError, match="must be > 0"):
        CQL(CQLConfig(hidden=(8,), cql_weight=0.0, lagrange=True), None, state_dim=3, action_dim=2)


# -- a problem with a known answer ---------------------------------------------------------------------------------
def test_one_step_bandit() -> None:
    """One state, terminal after one step, r(a) = -(a - 0.5)^2 from data actions spread over [-1, 1]: Q(s, a) is
    r(a) (a small conservative weight lowers it a little), best at a = 0.5, where the policy should move."""
    cfg = CQLConfig(hidden=(32, 32), cql_weight=0.05, critic_lr=3e-3, actor_lr=3e-3, init_alpha=0.05, sampled_actions=4)
    agent = CQL(cfg, None, state_dim=1, action_dim=1)
    size = 128
    state = torch.ones(size, 1)

    def policy_action() -> float:
        with torch.no_grad():
            return agent.actor.deterministic(agent.actor.encode(None, state[:1])).item()

    start = policy_action()
    for _ in range(300):
        action = torch.rand(size, 1) * 2 - 1
        reward = -((action[:, 0] - 0.5) ** 2)
        ones = torch.ones(size)
        agent.update(TorchBatch(TorchObs(None, state), action, reward, TorchObs(None, state), ones, 0 * ones))
    grid = torch.tensor([[-0.9], [-0.5], [0.0], [0.5], [0.9]])  # (G, 1)
    with torch.no_grad():
        values = agent.q(None, state[:1].expand(len(grid), 1), grid)  # (N, G)
    true = -((grid[:, 0] - 0.5) ** 2)
    assert (values[:, 3] > values[:, 0] + 1).all(), values  # Q(s, 0.5) vs Q(s, -0.9): r = 0 vs -1.96
    assert (values - true).abs().max() < 0.2, values - true
    assert abs(start - 0.5) > 0.3  # the policy starts away from the optimum (seeded) ...
    assert abs(policy_action() - 0.5) < 0.1, (start, policy_action())  # ... and ends near it


@pytest.mark.parametrize("image", [None, (12, 12, 3)])
def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_parameters(
    image: tuple[int, int, int] | None,
    assert_fp32_training_state: Callable[..., None],
    fp32_and_bf16_updates: Callable[..., tuple[Any, Any]],
) -> None:
    """The CUDA default of the trainer, exercised through CPU autocast: the same update as fp32 up to bf16 rounding
    (so the forward did run in bf16), finite, with fp32 parameters and optimiser states."""
    cfg = CQLConfig(hidden=(32, 32), conv=ConvConfig(channels=(4, 4), pool=(True, False)), sampled_actions=2)
    torch.manual_seed(0)
    full = CQL(cfg, image, S, A)
    half = copy.deepcopy(full)
    half.autocast_dtype = torch.bfloat16
    batch = make_batch(image=image)
    expected, got = fp32_and_bf16_updates(full, half, batch, "critic/loss")
    assert got["critic/loss"] == pytest.approx(expected["critic/loss"], rel=0.05, abs=0.05)
    assert_fp32_training_state([half.q, half.q_target, half.actor], [half.critic_optimizer])


def test_bf16_autocast_keeps_the_q_values_at_fp32_resolution() -> None:
    """bf16 holds Q = 100.3 as 100.5: the critics' output layer runs in fp32 so that one-step differences survive."""
    torch.manual_seed(0)
    agent = CQL(CQLConfig(hidden=(32, 32)), None, S, A)
    agent.autocast_dtype = torch.bfloat16
    with torch.no_grad():
        agent.q.head.net[-1].bias.fill_(100.3)
    batch = make_batch()
    with agent.autocast():
        q = agent.q(None, batch.obs.state, batch.action)
        mean, _ = agent.actor.distribution(agent.actor.encode(None, batch.obs.state))
    assert q.dtype == torch.float32 and mean.dtype == torch.float32
    expected = agent.q(None, batch.obs.state, batch.action)  # all fp32
    assert (q - expected).abs().max() < 0.05, (q - expected).abs().max()  # bf16 at the output: up to 0.25 off
    assert not torch.equal(q, expected)  # the hidden layers did run in bf16


def test_the_averaged_actor_follows_the_polyak_rule_and_the_live_actor_trains_as_without_it() -> None:
    cfg = CQLConfig(hidden=(16, 16), bc_warm_start_steps=1, actor_average=0.25)
    torch.manual_seed(0)
    agent = CQL(cfg, None, 3, 2)
    torch.manual_seed(0)
    plain = CQL(dataclasses.replace(cfg, actor_average=0.0), None, 3, 2)
    assert plain.actor_average is None and agent.actor_average is not None
    assert not any(p.requires_grad for p in agent.actor_average.parameters())
    batches = [make_batch(8, state_dim=3, action_dim=2) for _ in range(3)]
    average = [p.clone() for p in agent.actor.parameters()]  # the average starts at the initial actor
    for batch in batches:
        torch.manual_seed(1)
        agent.update(batch)
        torch.manual_seed(1)
        plain.update(batch)
        average = [a + 0.25 * (p - a) for a, p in zip(average, agent.actor.parameters(), strict=True)]
    for got, want in zip(agent.actor_average.parameters(), average, strict=True):
        torch.testing.assert_close(got, want)
    for p, p_plain in zip(agent.actor.parameters(), plain.actor.parameters(), strict=True):
        assert torch.equal(p, p_plain)  # averaging reads the actor, never changes its training
    assert not all(torch.equal(a, p) for a, p in zip(average, agent.actor.parameters(), strict=True))


def test_the_actor_learning_rate_follows_a_cosine_from_the_warm_starts_end_to_zero() -> None:
    cfg = CQLConfig(actor_lr=1e-3, bc_warm_start_steps=10, actor_lr_cosine_steps=30)
    rates = [cql.actor_learning_rate(cfg, step) for step in (0, 9, 10, 20, 25, 30, 100)]
    assert rates[:3] == [1e-3, 1e-3, 1e-3]  # the warm start, then the cosine's top
    assert rates[3] == pytest.approx(0.5e-3) and rates[4] == pytest.approx(1e-3 * (1 + math.cos(0.75 * math.pi)) / 2)
    assert rates[5] == pytest.approx(0.0, abs=1e-15) and rates[6] == pytest.approx(0.0, abs=1e-15)
    assert cql.actor_learning_rate(dataclasses.replace(cfg, actor_lr_cosine_steps=0), 25) == 1e-3  # COG: constant


def test_the_cosine_schedule_sets_the_actors_rate_and_freezes_it_at_the_end() -> None:
    cfg = CQLConfig(hidden=(16, 16), actor_lr=1e-3, bc_warm_start_steps=1, actor_lr_cosine_steps=3)
    torch.manual_seed(0)
    agent = CQL(cfg, None, 3, 2)
    logged = [agent.update(make_batch(8, state_dim=3, action_dim=2))["actor/lr"] for _ in range(3)]
    assert logged == pytest.approx([1e-3, 1e-3, 0.5e-3])  # updates 0 (warm start), 1 (cosine start), 2 (midway)
    before = [p.clone() for p in agent.actor.parameters()]
    critic_before = [p.clone() for p in agent.q.parameters()]
    assert agent.update(make_batch(8, state_dim=3, action_dim=2))["actor/lr"] == pytest.approx(0.0, abs=1e-15)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))  # rate 0
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, agent.q.parameters(), strict=True))  # critic on
    assert "actor/lr" not in CQL(dataclasses.replace(cfg, actor_lr_cosine_steps=0), None, 3, 2).update(
        make_batch(8, state_dim=3, action_dim=2)
    )


@pytest.mark.parametrize(("steps", "message"), [(-1, ">= 0"), (5, "above bc_warm_start_steps")])
def test_bad_cosine_schedules_are_refused(steps: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CQL(CQLConfig(hidden=(4,), bc_warm_start_steps=5, actor_lr_cosine_steps=steps), None, 2, 1)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_an_actor_average_rate_outside_0_1_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="actor_average"):
        CQL(CQLConfig(hidden=(4,), actor_average=value), None, 2, 1)


def test_a_batchs_own_discount_replaces_gamma(monkeypatch: pytest.MonkeyPatch) -> None:
    """n-step batches carry gamma^m per transition; the target bootstraps with it instead of the config's gamma."""
    q, q_target, actor = state_networks()
    cfg = CQLConfig(discount=0.9, sampled_actions=K)
    base = make_batch()
    draws = Draws(base)
    discount = torch.linspace(0.2, 0.8, B)
    _, _, metrics = patched_critic_loss(
        monkeypatch, draws, q, q_target, actor, base._replace(discount=discount), 0.3, 0.7, cfg
    )
    with torch.no_grad():
        next_v = q_target(None, base.next_obs.state, draws.policy[("s'", 1)][0][:, 0]).min(dim=0).values
    assert metrics["critic/target"] == pytest.approx((base.reward + discount * next_v).mean().item(), abs=1e-5)
    assert abs(metrics["critic/target"] - (base.reward + 0.9 * next_v).mean().item()) > 1e-3


def test_bc_weight_adds_the_datas_likelihood_on_the_scale_of_q() -> None:
    agent = CQL(CQLConfig(hidden=(16, 16)), None, state_dim=3, action_dim=2)
    batch = make_batch(8, state_dim=3, action_dim=2)
    features = agent.actor.encode(None, batch.obs.state)
    critic_features = agent.q.encode(None, batch.obs.state).detach()
    alpha = torch.tensor(0.1)

    def loss(weight: float) -> Tensor:
        torch.manual_seed(5)  # the same sampled actions for each weight
        return actor_loss(agent.q, agent.actor, features, critic_features, batch, alpha, False, 0.01, weight)[0]

    torch.manual_seed(5)
    action, _ = agent.actor.sample(features, 1)
    with torch.no_grad():
        q_pi = agent.q.q(critic_features, action).min(dim=0).values[:, 0]
        log_likelihood = agent.actor.log_prob(features, batch.action, 0.01)
    expected = loss(0.0) - 0.5 * (q_pi.abs().mean() * log_likelihood).mean()
    torch.testing.assert_close(loss(0.5), expected, rtol=1e-5, atol=1e-5)
    # A descent step on it raises the data's likelihood faster than a step on the critic's loss alone.
    params = list(agent.actor.parameters())
    likelihood_grad = torch.autograd.grad(agent.actor.log_prob(features, batch.action, 0.01).mean(), params,
                                          retain_graph=True)  # fmt: skip

    def likelihood_gain(weight: float) -> float:
        grads = torch.autograd.grad(loss(weight), params, retain_graph=True)
        return sum(float((-g * lg).sum()) for g, lg in zip(grads, likelihood_grad, strict=True))

    assert likelihood_gain(50.0) > likelihood_gain(0.0) + 1e-3


def test_awr_extracts_the_actor_from_the_datas_actions_weighted_by_advantage() -> None:
    """actor_objective "awr": the loss equals the formula (normalised, clipped exp-advantage weights on the data's
    log-likelihood), and steps on it move the policy towards the data action with the larger advantage."""
    torch.manual_seed(0)
    agent = CQL(CQLConfig(hidden=(16, 16)), None, state_dim=3, action_dim=2)
    state = torch.randn(1, 3).expand(2, 3)  # one state, two data actions far apart
    batch = make_batch(2, state_dim=3, action_dim=2)
    batch = TorchBatch(TorchObs(None, state), torch.tensor([[0.6, 0.6], [-0.6, -0.6]]), batch.reward,
                       batch.next_obs, batch.terminated, batch.truncated)  # fmt: skip
    critic_features = agent.q.encode(None, batch.obs.state).detach()
    alpha = torch.tensor(0.0)
    temperature, max_weight = 0.05, 100.0

    def loss(awr: tuple[float, float] | None) -> tuple[Tensor, dict[str, float]]:
        torch.manual_seed(5)  # the same sampled a~ each time
        features = agent.actor.encode(None, batch.obs.state)
        result = actor_loss(agent.q, agent.actor, features, critic_features, batch, alpha, False, 0.01, 0.0, awr)
        return result[0], result[2]

    torch.manual_seed(5)
    features = agent.actor.encode(None, batch.obs.state)
    sampled, _ = agent.actor.sample(features, 1)
    with torch.no_grad():
        q_data = agent.q.q(critic_features, batch.action.unsqueeze(1)).min(dim=0).values[:, 0]
        q_pi = agent.q.q(critic_features, sampled).min(dim=0).values[:, 0]
        scale = torch.cat([q_data, q_pi]).abs().mean()
        weight = torch.exp((q_data - q_pi) / (temperature * scale)).clamp(max=max_weight)
        log_likelihood = agent.actor.log_prob(features, batch.action, 0.01)
    value, metrics = loss((temperature, max_weight))
    torch.testing.assert_close(value, -(weight / weight.mean() * log_likelihood).mean(), rtol=1e-5, atol=1e-5)
    assert metrics["actor/awr_max_share"] == pytest.approx((weight.max() / weight.sum()).item(), rel=1e-5)
    assert not torch.allclose(loss(None)[0], value)  # "sac" is another objective
    # however small the temperature (weights far below float's range), the loss stays finite: all mass on the best
    tiny, tiny_metrics = loss((1e-9, max_weight))
    assert torch.isfinite(tiny) and tiny_metrics["actor/awr_max_share"] == pytest.approx(1.0)

    better = int(weight.argmax())  # the data action with the larger advantage over its row's a~
    assert weight[better] > 1.5 * weight[1 - better]
    before = log_likelihood.clone()
    optimizer = torch.optim.SGD(agent.actor.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        loss((temperature, max_weight))[0].backward()
        optimizer.step()
    with torch.no_grad():
        gain = agent.actor.log_prob(agent.actor.encode(None, batch.obs.state), batch.action, 0.01) - before
    assert gain[better] > gain[1 - better]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("awr_temperature", 0.0, "awr_temperature must be a finite number > 0"),
     ("awr_max_weight", float("nan"), "awr_max_weight must be a finite number >= 1"),
     ("actor_objective", "td3", "actor_objective must be 'sac' or 'awr'")],
)  # fmt: skip
def test_bad_awr_settings_are_refused(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CQL(CQLConfig(hidden=(8,), **{field: value}), None, state_dim=3, action_dim=2)


def test_a_negative_or_nan_bc_weight_is_refused() -> None:
    for weight in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="bc_weight must be a finite number >= 0"):
            CQL(CQLConfig(hidden=(8,), bc_weight=weight), None, state_dim=3, action_dim=2)

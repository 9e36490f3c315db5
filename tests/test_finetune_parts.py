"""Tests of the fine-tuning pieces that do not need a trainer: the density-ratio estimator
(`robot_rl.algos.density_ratio`) and the pessimistic Q-ensemble's actor, critics and value (`robot_rl.algos.ensemble`).

Known answers: the JS loss against its f-divergence form, the ratio of two Gaussians (ranked and calibrated), the
moment matching against the closed form and against the mixture's sampled moments, joined ensembles member by member
against the networks they were built from.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from robot_rl.algos.density_ratio import DensityRatio, DensityRatioConfig, js_density_ratio_loss
from robot_rl.algos.ensemble import (
    EnsembleActor,
    agent_min_q,
    ensemble_q,
    moment_matched_gaussian,
    stack_critics,
)
from robot_rl.networks import ConvConfig, EnsembleLayerNorm, QEnsemble, TanhGaussianActor, set_state_statistics

SMALL_CONV = ConvConfig(channels=(4, 4, 4))
IMAGE = (12, 10, 3)
"""A small, non-square image (H, W, C)."""


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two (B,) samples without ties: Pearson's correlation of their ranks."""
    rx = x.argsort().argsort().double()
    ry = y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


# -- density ratio ------------------------------------------------------------------------------------------------
def test_js_loss_equals_its_f_divergence_form() -> None:
    """L = E_off log((w+1)/2) - E_on log(2w/(w+1)), here written with w directly, on hand-made log-ratios."""
    online = torch.tensor([0.3, -1.2, 2.0])
    offline = torch.tensor([-0.5, 0.1, 1.5, -3.0])
    w_on, w_off = online.exp(), offline.exp()
    expected = torch.log((w_off + 1) / 2).mean() - torch.log(2 * w_on / (w_on + 1)).mean()
    loss, metrics = js_density_ratio_loss(online, offline)
    torch.testing.assert_close(loss, expected)
    assert metrics["density_ratio/js_bound"] == pytest.approx(-expected.item(), abs=1e-6)
    # w = 1 everywhere: the bound is 0; a perfect separation approaches 2 JSD = 2 log 2.
    assert js_density_ratio_loss(torch.zeros(4), torch.zeros(4))[0].item() == pytest.approx(0.0, abs=1e-7)
    separated, _ = js_density_ratio_loss(torch.full((4,), 30.0), torch.full((4,), -30.0))
    assert -separated.item() == pytest.approx(2 * math.log(2), abs=1e-6)
    # Far apart (h beyond exp's float32 range, as after many updates on separable batches), every metric stays
    # finite: a non-finite metric stops fine-tuning.
    far, far_metrics = js_density_ratio_loss(torch.full((4,), 200.0), torch.full((4,), -200.0))
    assert math.isfinite(far.item()) and all(math.isfinite(v) for v in far_metrics.values())
    assert far_metrics["density_ratio/online_log_ratio"] == 200.0


def test_density_ratio_learns_the_ratio_of_two_gaussians() -> None:
    """Online (s, a) ~ N(mu_on, I), offline ~ N(mu_off, I) in 2 + 1 dimensions: the true log ratio is linear,
    log w*(x) = (mu_on - mu_off) . x - (|mu_on|^2 - |mu_off|^2) / 2. After 300 steps with the default configuration
    the estimate ranks fresh points like w* and is on its scale where the data are. (E_off[w] = 1 is no usable check
    here: w is log-normal under the offline data with variance e^3.5 - 1, too noisy over 1000 points.)"""
    torch.manual_seed(0)
    mu_on, mu_off = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([-0.5, 0.5, -0.5])

    def draw(mu: Tensor, n: int) -> tuple[Tensor, Tensor]:
        x = mu + torch.randn(n, 3)  # (n, 3): two feature dimensions and one action dimension
        return x[:, :2], x[:, 2:]

    def true_log_ratio(features: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([features, actions], dim=1)
        return x @ (mu_on - mu_off) - 0.5 * (mu_on.pow(2).sum() - mu_off.pow(2).sum())

    estimator = DensityRatio(DensityRatioConfig(), feature_dim=2, action_dim=1)
    assert torch.equal(estimator.ratio(*draw(mu_on, 8)), torch.ones(8))  # zero-initialised: w = 1 before training
    cfg = estimator.cfg
    for _ in range(300):
        metrics = estimator.update(*draw(mu_on, cfg.online_batch_size), *draw(mu_off, cfg.offline_batch_size))
    assert estimator.steps == 300
    # The best achievable bound here is 2 JSD of the two Gaussians, well above 0.
    assert metrics["density_ratio/js_bound"] > 0.3

    on_f, on_a = draw(mu_on, 1000)
    off_f, off_a = draw(mu_off, 1000)
    features, actions = torch.cat([on_f, off_f]), torch.cat([on_a, off_a])
    estimated = estimator.ratio(features, actions)  # (2000,)
    assert (estimated > 0).all()
    assert spearman(estimated, true_log_ratio(features, actions)) >= 0.9
    # Not just monotone but on the right scale (w^2 or w^0.5 would rank as well): log w within 0.3 nats on average
    # (0.06-0.12 over seeds 0-4; the true log ratio's mean magnitude over these points is about 2).
    error = (estimated.log() - true_log_ratio(features, actions)).abs().mean().item()
    assert error < 0.3


def test_density_ratio_update_trains_only_its_network() -> None:
    """Features arriving with a graph (as a critic's would without the caller's detach) get no gradient."""
    estimator = DensityRatio(DensityRatioConfig(hidden=(8,)), feature_dim=3, action_dim=2)
    source = torch.randn(4, 3, requires_grad=True)
    features = source * 2
    before = [p.clone() for p in estimator.network.parameters()]
    estimator.update(features, torch.rand(4, 2), torch.randn(5, 3), torch.rand(5, 2))
    assert source.grad is None
    assert not torch.equal(before[-1], list(estimator.network.parameters())[-1])  # the zero-initialised last bias
    with pytest.raises(ValueError, match="features"):
        estimator.ratio(torch.randn(4, 4), torch.rand(4, 2))


# -- moment matching ---------------------------------------------------------------------------------------------
def test_moment_matching_closed_form() -> None:
    means = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]], [[-1.0, 4.0]]])  # (N=3, B=1, A=2)
    stds = torch.tensor([[[1.0, 0.5]], [[0.5, 0.5]], [[2.0, 1.0]]])
    mean, std = moment_matched_gaussian(means, stds)
    assert mean.shape == std.shape == (1, 2)
    # Dimension 0: mean (0 + 2 - 1) / 3 = 1/3; E[x^2] = ((1 + 0) + (0.25 + 4) + (4 + 1)) / 3 = 10.25 / 3.
    # Dimension 1: mean 2; E[x^2] = ((0.25 + 1) + (0.25 + 1) + (1 + 16)) / 3 = 19.5 / 3.
    expected_mean = torch.tensor([[1 / 3, 2.0]])
    expected_var = torch.tensor([[10.25 / 3 - 1 / 9, 19.5 / 3 - 4.0]])
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(std, expected_var.sqrt())


def test_moment_matching_of_identical_members_is_that_member() -> None:
    mean_1, std_1 = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    mean, std = moment_matched_gaussian(mean_1.expand(4, -1, -1), std_1.expand(4, -1, -1))
    torch.testing.assert_close(mean, mean_1)
    torch.testing.assert_close(std, std_1)


def test_moment_matching_matches_the_sampled_mixture() -> None:
    """Against the mixture itself: 200k draws, member chosen uniformly, then its Gaussian."""
    torch.manual_seed(1)
    means, stds = torch.randn(4, 2, 3) * 2, torch.rand(4, 2, 3) + 0.2  # (N, B, A)
    n = 200_000
    member = torch.randint(0, 4, (n,))
    draws = means[member] + stds[member] * torch.randn(n, 2, 3)  # (n, B, A)
    mean, std = moment_matched_gaussian(means, stds)
    torch.testing.assert_close(mean, draws.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(std, draws.std(0), atol=0.03, rtol=0)


def test_moment_matching_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="means and stds"):
        moment_matched_gaussian(torch.zeros(3, 2, 1), torch.ones(3, 2, 2))


# -- joined actors and critics ------------------------------------------------------------------------------------
def make_actors(image: bool, count: int, conv: ConvConfig = SMALL_CONV) -> list[TanhGaussianActor]:
    """Independently initialised actors with the same (non-trivial) state standardisation."""
    actors = [TanhGaussianActor(IMAGE if image else None, 3, 2, hidden=(8, 6), conv=conv) for _ in range(count)]
    set_state_statistics(actors, torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.5]))
    return actors


def observation(batch: int) -> tuple[Tensor, Tensor]:
    h, w, c = IMAGE
    return torch.rand(batch, c, h, w), torch.randn(batch, 3)


@pytest.mark.parametrize(
    ("image", "conv"),
    [
        (False, SMALL_CONV),
        (True, SMALL_CONV),
        (True, ConvConfig(channels=(4, 3), kernel=5, pool=(True, True), strided=True)),
    ],
    ids=["state", "image", "image-strided"],
)
def test_ensemble_actor_members_equal_the_actors(image: bool, conv: ConvConfig) -> None:
    actors = make_actors(image, 3, conv)
    ensemble = EnsembleActor.from_members(actors)
    image_in, state = observation(5)
    img = image_in if image else None
    features = ensemble.encode(img, state)  # (N, B, F)
    means, log_stds = ensemble.distribution(features)
    assert means.shape == log_stds.shape == (3, 5, 2)
    action = torch.rand(5, 2) * 1.6 - 0.8
    for n, actor in enumerate(actors):
        own = actor.encode(img, state)
        mean, log_std = actor.distribution(own)
        torch.testing.assert_close(means[n], mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(log_stds[n], log_std, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ensemble.log_prob(features, action)[n], actor.log_prob(own, action))
    assert not torch.allclose(means[0], means[1])  # independent members: the equalities above are not trivial

    # Acting: tanh of the moment-matched mean of exactly these members.
    matched_mean, _ = moment_matched_gaussian(means, log_stds.exp())
    torch.testing.assert_close(ensemble.act(img, state, deterministic=True), torch.tanh(matched_mean))
    stochastic = ensemble.act(img, state, deterministic=False)
    assert stochastic.shape == (5, 2) and (stochastic.abs() < 1).all()


def test_ensemble_actor_sampling_densities() -> None:
    """Sampled log-probabilities agree with `log_prob` (per member and for the moment-matched policy)."""
    ensemble = EnsembleActor(3, None, 3, 2, hidden=(8,))
    features = ensemble.encode(None, torch.randn(6, 3))
    actions, log_prob = ensemble.sample(features, k=4)  # (N, B, K, A), (N, B, K)
    assert actions.shape == (3, 6, 4, 2) and log_prob.shape == (3, 6, 4)
    for j in range(4):
        torch.testing.assert_close(
            ensemble.log_prob(features, actions[:, :, j]), log_prob[:, :, j], atol=1e-4, rtol=1e-4
        )
    matched, matched_log_prob = ensemble.sample_moment_matched(features, k=2)  # (B, K, A), (B, K)
    assert matched.shape == (6, 2, 2)
    torch.testing.assert_close(
        ensemble.log_prob_moment_matched(features, matched[:, 0]), matched_log_prob[:, 0], atol=1e-4, rtol=1e-4
    )


def test_single_member_ensemble_acts_like_its_actor() -> None:
    (actor,) = make_actors(True, 1)
    ensemble = EnsembleActor.from_members([actor])
    image, state = observation(4)
    torch.testing.assert_close(ensemble.act(image, state), actor.deterministic(actor.encode(image, state)))


def test_from_members_refuses_mismatched_members() -> None:
    actors = make_actors(False, 2)
    set_state_statistics([actors[1]], torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="state_mean"):
        EnsembleActor.from_members(actors)
    other = TanhGaussianActor(None, 3, 2, hidden=(8, 7))
    set_state_statistics([other], torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.5]))
    with pytest.raises(ValueError, match="architecture"):
        EnsembleActor.from_members([actors[0], other])


def test_stack_critics_members_equal_the_critics() -> None:
    qs = [QEnsemble(2, IMAGE, 3, 2, hidden=(8, 6), conv=SMALL_CONV) for _ in range(3)]
    set_state_statistics(qs, torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.5]))
    stacked = stack_critics(qs)
    assert stacked.members == 6
    image, state = observation(5)
    action = torch.rand(5, 2) * 2 - 1
    q_all = stacked(image, state, action)  # (N*M, B)
    for i, q in enumerate(qs):
        torch.testing.assert_close(q_all[2 * i : 2 * i + 2], q(image, state, action), rtol=1e-5, atol=1e-5)
    # Several actions per observation go through the same layout.
    actions = torch.rand(5, 4, 2) * 2 - 1
    q_k = stacked.q(stacked.encode(image, state), actions)  # (N*M, B, K)
    torch.testing.assert_close(q_k[4:6], qs[2].q(qs[2].encode(image, state), actions), rtol=1e-5, atol=1e-5)

    set_state_statistics([qs[1]], torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"state_(mean|std)"):
        stack_critics(qs)


def test_stack_critics_keeps_layer_normalisation() -> None:
    qs = [QEnsemble(2, None, 3, 2, hidden=(8, 6), layer_norm=True) for _ in range(2)]
    for module in (m for q in qs for m in q.modules() if isinstance(m, EnsembleLayerNorm)):
        torch.nn.init.uniform_(module.weight, 0.5, 1.5)  # member-specific gains and biases: a wrong layout shows
        torch.nn.init.uniform_(module.bias, -0.5, 0.5)
    stacked = stack_critics(qs)
    assert stacked.layer_norm
    state, action = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    for i, q in enumerate(qs):
        torch.testing.assert_close(stacked(None, state, action)[2 * i : 2 * i + 2], q(None, state, action))
    with pytest.raises(ValueError, match="layer normalisation"):
        stack_critics([qs[0], QEnsemble(2, None, 3, 2, hidden=(8, 6))])


def test_ensemble_q_is_the_mean_of_each_agents_twin_min() -> None:
    q_all = torch.tensor([[1.0, 5.0], [2.0, 3.0], [-1.0, 0.0], [4.0, -2.0], [7.0, 1.0], [6.0, 9.0]])  # (N*M=6, B=2)
    # Agents (rows 0-1, 2-3, 4-5): mins [1, 3], [-1, -2], [6, 1].
    torch.testing.assert_close(agent_min_q(q_all, 3, 2), torch.tensor([[1.0, 3.0], [-1.0, -2.0], [6.0, 1.0]]))
    torch.testing.assert_close(ensemble_q(q_all, 3, 2), torch.tensor([2.0, 2.0 / 3.0]))
    with pytest.raises(ValueError, match="rows"):
        ensemble_q(q_all, 2, 2)

"""Tests of `robot_rl.replay.mixing` (COG's task/prior mix, uniform replay over a pooled store) and
`robot_rl.algos.bc` (behaviour cloning of the tanh-Gaussian actor).

The synthetic stores are built straight from arrays. Every value encodes (source, frame): source 0 is task data,
source 1 prior data, and a frame's number is its index in its own store, so a test can tell where each sampled
transition came from and check that its observation, next observation, action, reward and flags belong together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from robot_rl.algos.batch import TorchBatch, TorchObs, to_torch
from robot_rl.algos.bc import BC, BCConfig, bc_loss
from robot_rl.data.episodes import DatasetInfo
from robot_rl.data.replay import Batch, TransitionStore, concatenate
from robot_rl.networks import ConvConfig
from robot_rl.replay.mixing import CogMixSampler, UniformSampler

H, W = 6, 8
"""Image size (not square, so that H and W cannot be swapped unnoticed)."""
S, P = 4, 2
"""State and privileged sizes."""
ACTION_NAMES = ("vx", "vy", "gripper")
A = len(ACTION_NAMES)
TASK, PRIOR = 0, 1
"""Source markers in every value."""


# -- helpers -------------------------------------------------------------------------------------------------------
def make_info(name: str, kind: str, action_names: tuple[str, ...] = ACTION_NAMES) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        kind=kind,
        env_id="robot_rl/Drawer-v0",
        env_kwargs={},
        env_spec={"scene": "drawer", "action_names": list(action_names)},
        recipe={},
        versions={},
        keep_failed=True,
    )


def make_store(
    source: int,
    steps: tuple[int, ...],
    *,
    rewards: str = "marked",
    image_hw: tuple[int, int] | None = (H, W),
    state_size: int = S,
    privileged: bool = True,
    action_names: tuple[str, ...] = ACTION_NAMES,
) -> TransitionStore:
    """A store of episodes of `steps` steps whose values encode (source, frame, episode).

    state = (source, frame, episode, 0...), image pixels (source, frame % 256, 7), privileged = (source, frame),
    action = (source, frame of its observation, 0.5...). Rewards: 'marked' = 1 + transition index for task data
    and -(1 + index) for prior data; 'zero' = 0 (relabelled as COG loads prior data).
    """
    steps_arr = np.asarray(steps, np.int64)
    n, e = int(steps_arr.sum()), len(steps)
    frames = n + e
    frame = np.arange(frames)
    episode_of_frame = np.repeat(np.arange(e), steps_arr + 1)  # (F,)
    states = np.zeros((frames, state_size), np.float32)
    states[:, 0], states[:, 1], states[:, 2] = source, frame, episode_of_frame
    images = None
    if image_hw is not None:
        images = np.zeros((frames, *image_hw, 3), np.uint8)
        images[..., 0] = source
        images[..., 1] = (frame % 256)[:, None, None]
        images[..., 2] = 7
    priv = np.stack([np.full(frames, source), frame], axis=1).astype(np.float32) if privileged else None
    obs_frame = np.arange(n) + np.repeat(np.arange(e), steps_arr)  # (N,): as the store derives it
    actions = np.full((n, len(action_names)), 0.5, np.float32)
    actions[:, 0], actions[:, 1] = source, obs_frame
    kind = "task" if source == TASK else "prior"
    sign = 1.0 if source == TASK else -1.0
    reward = sign * (1.0 + np.arange(n)) if rewards == "marked" else np.zeros(n)
    last = np.zeros(n, np.bool_)
    last[(np.cumsum(steps_arr) - 1)[steps_arr > 0]] = True  # (N,): each episode's last step
    odd = np.repeat(np.arange(e) % 2 == 1, steps_arr)  # (N,): odd episodes end by time limit, even ones terminate
    return TransitionStore(
        states=states,
        images=images,
        privileged=priv,
        actions=actions,
        rewards=reward.astype(np.float32),
        terminated=last & ~odd,
        truncated=last & odd,
        steps=steps_arr,
        info=make_info(f"{kind}-{e}", kind, action_names),
    )


def check_consistent(batch: Batch, stores: dict[int, TransitionStore]) -> NDArray[np.int64]:
    """Assert that every transition of `batch` is one transition of the store its values name; return the sources.

    The transition is found from its observation's frame; everything else is checked against the store.
    """
    source = batch.obs.state[:, 0].astype(np.int64)  # (B,)
    frame = batch.obs.state[:, 1].astype(np.int64)  # (B,)
    assert set(np.unique(source)) <= set(stores)
    np.testing.assert_array_equal(batch.next_obs.state[:, 0], source)
    np.testing.assert_array_equal(batch.next_obs.state[:, 1], frame + 1)  # next obs = the next frame
    np.testing.assert_array_equal(batch.next_obs.state[:, 2], batch.obs.state[:, 2])  # of the same episode
    np.testing.assert_array_equal(batch.action[:, 0], source)
    np.testing.assert_array_equal(batch.action[:, 1], frame)
    for obs, f in ((batch.obs, frame), (batch.next_obs, frame + 1)):
        if obs.image is not None:
            np.testing.assert_array_equal(obs.image[:, :, :, 0], np.broadcast_to(source[:, None, None], (len(f), H, W)))
            np.testing.assert_array_equal(
                obs.image[:, :, :, 1], np.broadcast_to(f[:, None, None] % 256, (len(f), H, W))
            )
        if obs.privileged is not None:
            np.testing.assert_array_equal(obs.privileged, np.stack([source, f], axis=1))
    for s, store in stores.items():
        mine = source == s
        transition = np.searchsorted(store.obs_index, frame[mine])  # (b_s,): obs_index is strictly increasing
        np.testing.assert_array_equal(store.obs_index[transition], frame[mine])  # a real transition, not a final frame
        np.testing.assert_array_equal(batch.reward[mine], store.rewards[transition])
        np.testing.assert_array_equal(batch.terminated[mine], store.terminated[transition])
        np.testing.assert_array_equal(batch.truncated[mine], store.truncated[transition])
    return source


def arrays_of(batch: Batch) -> list[NDArray[Any] | None]:
    """Every array of a batch, observations' fields included, in a fixed order."""
    return [*batch.obs, batch.action, batch.reward, *batch.next_obs, batch.terminated, batch.truncated]


@pytest.fixture(scope="module")
def task_store() -> TransitionStore:
    return make_store(TASK, (3, 5, 1, 4))


@pytest.fixture(scope="module")
def prior_store() -> TransitionStore:
    return make_store(PRIOR, (6, 2, 7), rewards="zero")


# -- CogMixSampler -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_fraction", [0.5, 0.25, 1.0, 0.0])
@pytest.mark.parametrize("batch_size", [1, 2, 7, 10, 64])
def test_cog_mix_split_is_exact(
    task_store: TransitionStore, prior_store: TransitionStore, task_fraction: float, batch_size: int
) -> None:
    sampler = CogMixSampler(task_store, prior_store, task_fraction)
    rng = np.random.default_rng(0)
    n_task = round(batch_size * task_fraction)
    for _ in range(5):
        batch = sampler.sample(rng, batch_size)
        source = check_consistent(batch, {TASK: task_store, PRIOR: prior_store})
        assert len(source) == batch_size and batch.action.shape == (batch_size, A)
        expected = np.array([TASK] * n_task + [PRIOR] * (batch_size - n_task))  # task first, then prior
        np.testing.assert_array_equal(source, expected)
        assert sampler.last_task_fraction == n_task / batch_size
        assert batch.obs.image is not None and batch.obs.image.shape == (batch_size, H, W, 3)
        assert batch.obs.image.dtype == np.uint8 and batch.obs.state.dtype == np.float32


def test_cog_mix_default_is_half_and_half(task_store: TransitionStore, prior_store: TransitionStore) -> None:
    sampler = CogMixSampler(task_store, prior_store)
    source = check_consistent(sampler.sample(np.random.default_rng(1), 256), {TASK: task_store, PRIOR: prior_store})
    assert (source == TASK).sum() == 128 and (source == PRIOR).sum() == 128


def test_cog_mix_keeps_each_stores_rewards(task_store: TransitionStore) -> None:
    """The sampler passes rewards through: prior rewards are 0 only because the prior store holds 0."""
    stores = {
        "relabelled": make_store(PRIOR, (6, 2, 7), rewards="zero"),
        "marked": make_store(PRIOR, (6, 2, 7), rewards="marked"),
    }
    for name, prior in stores.items():
        batch = CogMixSampler(task_store, prior).sample(np.random.default_rng(2), 200)
        source = check_consistent(batch, {TASK: task_store, PRIOR: prior})  # rewards equal the store's, per row
        task_rewards, prior_rewards = batch.reward[source == TASK], batch.reward[source == PRIOR]
        assert (task_rewards >= 1).all()
        assert (prior_rewards == 0).all() if name == "relabelled" else (prior_rewards <= -1).all()
    assert (stores["marked"].rewards < 0).all()  # sampling did not touch the store


def test_cog_mix_covers_both_stores_uniformly(task_store: TransitionStore, prior_store: TransitionStore) -> None:
    """Within each part, every transition of its store is drawn, at about equal rates (1/N each)."""
    sampler = CogMixSampler(task_store, prior_store, 0.5)
    rng = np.random.default_rng(3)
    frames = np.concatenate([sampler.sample(rng, 200).obs.state[:, :2] for _ in range(50)])  # (10000, 2)
    for s, store in ((TASK, task_store), (PRIOR, prior_store)):
        counts = np.bincount(np.searchsorted(store.obs_index, frames[frames[:, 0] == s, 1]), minlength=len(store))
        expected = 5000 / len(store)
        assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected


def test_cog_mix_without_images_or_privileged() -> None:
    task = make_store(TASK, (4, 2), image_hw=None, privileged=False)
    prior = make_store(PRIOR, (3,), image_hw=None, privileged=False)
    batch = CogMixSampler(task, prior, 0.25).sample(np.random.default_rng(4), 8)
    assert batch.obs.image is None and batch.next_obs.image is None
    assert batch.obs.privileged is None and batch.next_obs.privileged is None
    np.testing.assert_array_equal(check_consistent(batch, {TASK: task, PRIOR: prior}), [TASK] * 2 + [PRIOR] * 6)


def test_cog_mix_is_reproducible(task_store: TransitionStore, prior_store: TransitionStore) -> None:
    sampler = CogMixSampler(task_store, prior_store, 0.25)
    a, b = sampler.sample(np.random.default_rng(5), 32), sampler.sample(np.random.default_rng(5), 32)
    for x, y in zip(arrays_of(a), arrays_of(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    ("prior_kwargs", "message"),
    [
        ({"image_hw": (H + 2, W)}, "image shape"),
        ({"image_hw": None}, "observation keys"),
        ({"privileged": False}, "observation keys"),
        ({"state_size": S + 1}, "state size"),
        ({"action_names": ("vx", "vz", "gripper")}, "action names"),
    ],
)
def test_cog_mix_refuses_mismatched_stores(
    task_store: TransitionStore, prior_kwargs: dict[str, Any], message: str
) -> None:
    prior = make_store(PRIOR, (3, 2), **prior_kwargs)
    with pytest.raises(ValueError, match=message):
        CogMixSampler(task_store, prior)


def test_cog_mix_refuses_bad_arguments(task_store: TransitionStore, prior_store: TransitionStore) -> None:
    for fraction in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="task_fraction"):
            CogMixSampler(task_store, prior_store, fraction)
    with pytest.raises(ValueError, match="batch_size"):
        CogMixSampler(task_store, prior_store).sample(np.random.default_rng(0), 0)
    empty = make_store(PRIOR, (0,))
    with pytest.raises(ValueError, match="no transitions"):
        CogMixSampler(task_store, empty, 0.5)
    CogMixSampler(task_store, empty, 1.0).sample(np.random.default_rng(0), 4)  # an unused empty store is fine


# -- UniformSampler ------------------------------------------------------------------------------------------------
def test_uniform_over_pooled_store_follows_sizes() -> None:
    """Task and prior are drawn in proportion to their transitions (25 %), not their episodes (10 %) nor half/half."""
    task = make_store(TASK, (30,) * 10)  # 300 transitions in 10 episodes
    prior = make_store(PRIOR, (10,) * 90, rewards="zero")  # 900 transitions in 90 episodes
    pooled = concatenate([task, prior])
    sampler = UniformSampler(pooled)
    assert sampler.task_fraction == 0.25
    rng = np.random.default_rng(6)
    fractions = []
    sources = []
    for _ in range(100):
        batch = sampler.sample(rng, 256)
        sources.append(check_consistent(batch, {TASK: task, PRIOR: prior}))
        assert sampler.last_task_fraction is not None
        fractions.append(sampler.last_task_fraction)
        np.testing.assert_allclose(sampler.last_task_fraction, np.mean(sources[-1] == TASK))
    share = np.mean(np.concatenate(sources) == TASK)  # of 25600 draws: standard error 0.0027
    assert abs(share - 0.25) < 0.015
    assert np.std(fractions) > 0  # the split is random per batch, unlike CogMixSampler's


def test_uniform_draws_as_the_store_does(task_store: TransitionStore) -> None:
    """Task-only baseline: the sampler is the store's own uniform sampling, plus the logged fraction."""
    sampler = UniformSampler(task_store)
    a = sampler.sample(np.random.default_rng(7), 16)
    b = task_store.sample(np.random.default_rng(7), 16)
    np.testing.assert_array_equal(a.obs.state, b.obs.state)
    np.testing.assert_array_equal(a.action, b.action)
    assert sampler.last_task_fraction == 1.0
    check_consistent(a, {TASK: task_store})


# -- BC --------------------------------------------------------------------------------------------------------------
def state_batch(size: int = 64, state_dim: int = 6, action_dim: int = A, seed: int = 0) -> TorchBatch:
    """A fixed batch whose action is a smooth function of the state: a = tanh(0.5 s[:, :A])."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(size, state_dim, generator=g)
    obs = TorchObs(None, state)
    zeros = torch.zeros(size)
    action = torch.tanh(0.5 * state[:, :action_dim])
    return TorchBatch(obs, action, zeros, TorchObs(None, torch.randn(size, state_dim, generator=g)), zeros, zeros)


def test_bc_loss_is_the_negative_log_likelihood() -> None:
    actor = BC(BCConfig(hidden=(16,)), None, 6, A).actor
    batch = state_batch()
    loss, metrics = bc_loss(actor, batch)
    by_hand = -actor.log_prob(actor.encode(None, batch.obs.state), batch.action, eps=0.01).mean()
    torch.testing.assert_close(loss, by_hand)
    assert metrics["actor/loss"] == pytest.approx(by_hand.item())
    with torch.no_grad():
        mse = (actor.deterministic(actor.encode(None, batch.obs.state)) - batch.action).pow(2).mean()
    assert metrics["actor/action_mse"] == pytest.approx(mse.item(), rel=1e-5)
    assert set(metrics) == {"actor/loss", "actor/action_mse", "actor/log_std"}


@pytest.mark.parametrize("image", [None, (H, W, 3)])
def test_bc_update_changes_every_actor_parameter(image: tuple[int, int, int] | None) -> None:
    conv = ConvConfig(channels=(4, 4), pool=(True, False))
    agent = BC(BCConfig(hidden=(16, 16), conv=conv, actor_lr=1e-3), image, S, A)
    store = make_store(TASK, (5, 4), image_hw=None if image is None else (H, W))
    batch = to_torch(store.sample(np.random.default_rng(8), 8), torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in agent.actor.named_parameters()}
    metrics = agent.update(batch)
    assert agent.steps == 1
    assert all(k.startswith("actor/") for k in metrics) and all(np.isfinite(v) for v in metrics.values())
    for name, p in agent.actor.named_parameters():
        assert not torch.equal(before[name], p), f"{name} did not change"
    assert len(agent.actor_optimizer.state) == len(before)  # the optimiser holds every actor parameter


def test_bc_fits_a_state_to_action_map() -> None:
    """~200 steps on a fixed batch bring tanh(mu(s)) within 0.1 of a = tanh(0.5 s) and lower the NLL."""
    agent = BC(BCConfig(hidden=(32, 32), actor_lr=3e-3), None, 6, A)
    batch = state_batch()

    def error() -> float:
        with torch.no_grad():
            action = agent.actor.deterministic(agent.actor.encode(None, batch.obs.state))  # (B, A)
        return (action - batch.action).abs().mean().item()

    initial = error()
    assert initial > 0.2  # the untrained actor is far off, so the bound below says something
    first = agent.update(batch)
    for _ in range(199):
        last = agent.update(batch)
    assert error() < 0.1, (initial, error())
    assert last["actor/loss"] < first["actor/loss"] - 1.0
    assert last["actor/action_mse"] < first["actor/action_mse"]


def test_bc_trains_on_a_mixed_batch(task_store: TransitionStore, prior_store: TransitionStore) -> None:
    """The pieces fit: a COG-mixed replay batch, moved to torch, drives a BC update with images and state."""
    sampler = CogMixSampler(task_store, prior_store)
    batch = to_torch(sampler.sample(np.random.default_rng(9), 8), torch.device("cpu"), augment_pad=1)
    conv = ConvConfig(channels=(4,), pool=(False,))
    agent = BC(BCConfig(hidden=(8,), conv=conv), (H, W, 3), S, A)
    assert np.isfinite(agent.update(batch)["actor/loss"])


@pytest.mark.parametrize(("margin", "wide"), [(0.01, False), (1e-6, True)])
def test_saturated_actions_do_not_widen_the_policy(margin: float, wide: bool) -> None:
    """Half the data says exactly 1.0 (a clipped gripper command), half 0.85 (a noisy one), at the same state. With
    the margin the fitted pre-tanh spread stays narrow (tanh(mu +- sigma) keeps the command's sign); without it the
    Gaussian must reach atanh(1 - 1e-6) = 7.3 and atanh(0.85) = 1.3 at once."""
    agent = BC(BCConfig(hidden=(16,), actor_lr=1e-2, action_margin=margin), None, 2, 1)
    state = torch.zeros(64, 2)
    action = torch.where(torch.arange(64) % 2 == 0, 1.0, 0.85).unsqueeze(1)
    zeros = torch.zeros(64)
    batch = TorchBatch(TorchObs(None, state), action, zeros, TorchObs(None, state), zeros, zeros)
    for _ in range(400):
        agent.update(batch)
    with torch.no_grad():
        _, log_std = agent.actor.distribution(agent.actor.encode(None, state[:1]))
    sigma = float(log_std.exp())
    assert (sigma > 2.5) if wide else (sigma < 0.8), sigma  # the optima: 3.0 and (2.65 - 1.26) / 2 = 0.7


# -- n-step returns --------------------------------------------------------------------------------------------------
def n_step_by_loop(
    store: TransitionStore, n: int, gamma: float, terminal_on_reward: bool
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """(return, steps m, terminated, next frame) of every transition, one transition at a time."""
    out: list[tuple[float, int, bool, int]] = []
    for e, (first, count) in enumerate(zip(store.episodes.first_transition, store.episodes.steps, strict=True)):
        for t in range(first, first + count):
            total, m, done = 0.0, 0, False
            for j in range(t, min(t + n, first + count)):
                total += gamma**m * float(store.rewards[j])
                m += 1
                done = bool(store.terminated[j]) or (terminal_on_reward and store.rewards[j] > 0)
                if done:
                    break
            out.append((total, m, done, int(store.episodes.first_frame[e] + (t - first) + m)))
    columns = list(zip(*out, strict=True))
    return tuple(np.asarray(c) for c in columns)  # type: ignore[return-value]


@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize("terminal_on_reward", [False, True])
def test_n_step_returns_match_a_loop(n: int, terminal_on_reward: bool) -> None:
    store = make_store(TASK, (4, 1, 7, 0, 6))
    rewards = np.zeros(len(store), np.float32)
    rewards[[2, 6, 7, 12]] = [1.0, 0.5, 2.0, 1.0]  # inside episodes, one at an episode's last step (terminated)
    store.rewards = rewards
    gamma = 0.9
    stepped = store.n_step(n, gamma, terminal_on_reward)
    returns, m, done, next_frame = n_step_by_loop(store, n, gamma, terminal_on_reward)
    np.testing.assert_allclose(stepped.rewards, returns, rtol=1e-6)
    np.testing.assert_array_equal(stepped.next_offset, m)
    np.testing.assert_array_equal(stepped.terminated, done)
    np.testing.assert_allclose(stepped.discounts, gamma**m, rtol=1e-6)
    assert m.max() == n and m.min() >= 1  # windows of n steps, shorter at episode ends
    np.testing.assert_array_equal(store.rewards, rewards)  # the one-step store is unchanged
    assert store.next_offset is None and store.discounts is None

    # Both samplers give the m-step next observation (same episode) and the return, discount and flags with it.
    prior = make_store(PRIOR, (5, 3), rewards="zero").n_step(n, gamma)
    for sampler in (CogMixSampler(stepped, prior, 0.5), UniformSampler(stepped)):
        batch = sampler.sample(np.random.default_rng(n), 64)
        is_task = batch.obs.state[:, 0] == TASK
        t = np.searchsorted(store.obs_index, batch.obs.state[is_task, 1].astype(np.int64))
        np.testing.assert_array_equal(batch.next_obs.state[is_task, 1], next_frame[t])
        np.testing.assert_array_equal(batch.next_obs.state[:, 2], batch.obs.state[:, 2])  # never across episodes
        np.testing.assert_allclose(batch.reward[is_task], returns[t], rtol=1e-6)
        np.testing.assert_array_equal(batch.terminated[is_task], done[t])
        assert batch.discount is not None
        np.testing.assert_allclose(batch.discount[is_task], gamma ** m[t], rtol=1e-6)
        if batch.next_obs.image is not None:
            np.testing.assert_array_equal(batch.next_obs.image[:, 0, 0, 1], batch.next_obs.state[:, 1] % 256)


def test_n_step_refuses_bad_use() -> None:
    store = make_store(TASK, (3, 2))
    for n, gamma in ((0, 0.9), (2, 0.0), (2, 1.5)):
        with pytest.raises(ValueError, match="must be"):
            store.n_step(n, gamma)
    stepped = store.n_step(2, 0.9)
    with pytest.raises(ValueError, match="already holds n-step"):
        stepped.n_step(2, 0.9)
    with pytest.raises(ValueError, match="concatenate one-step stores"):
        concatenate([stepped, store])
    with pytest.raises(ValueError, match="both n-step"):
        CogMixSampler(stepped, make_store(PRIOR, (3,)))

"""The sum tree and balanced replay against known answers: sampling frequencies, tree invariants, priorities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from robot_rl.replay import BalancedReplayConfig, DensityRatioSampler, SumTree, density_ratio_priorities
from robot_rl.replay.sumtree import last_occurrences, numba_available

ALPHA = 0.001
"""Significance level of the chi-square goodness-of-fit tests (the seeds are fixed, so a pass is reproducible)."""
CHI2_CRITICAL = {7: 24.322, 15: 37.697}
"""Upper ALPHA = 0.001 quantiles of the chi-square distribution by degrees of freedom (any standard table, e.g. NIST/
SEMATECH e-Handbook of Statistical Methods, Table 1.3.6.7.4); used when scipy is not installed."""

# 16 positive priorities over three orders of magnitude and 2 zeros: 15 degrees of freedom among the positive ones.
PRIORITIES = np.array([0.5, 3.0, 0.0, 1.0, 7.5, 2.0, 0.25, 4.0, 1.5, 0.0, 6.0, 0.1, 2.5, 9.0, 1.0, 3.5, 0.75, 5.0])


def chi2_critical(df: int) -> float:
    try:
        from scipy.stats import chi2
    except ImportError:
        return CHI2_CRITICAL[df]
    return float(chi2.ppf(1.0 - ALPHA, df))


def draw_counts(tree: SumTree, rng: np.random.Generator, batches: int, stratified: bool) -> NDArray[np.float64]:
    """(size,) how often each entry was drawn in `batches` batches of 256; checks the returned probabilities too."""
    counts = np.zeros(tree.size)
    total = tree.total
    for _ in range(batches):
        indices, probabilities = tree.sample(rng, 256, stratified=stratified)
        np.testing.assert_allclose(probabilities, tree.priorities(indices) / total, rtol=1e-12)
        counts += np.bincount(indices, minlength=tree.size)
    return counts


def assert_frequencies_match(counts: NDArray[np.float64], priorities: NDArray[np.float64]) -> None:
    """Zero-priority entries never drawn; the others pass a chi-square goodness-of-fit test at level ALPHA."""
    positive = priorities > 0
    assert counts[~positive].sum() == 0
    expected = counts.sum() * priorities[positive] / priorities.sum()
    statistic = float(((counts[positive] - expected) ** 2 / expected).sum())
    assert statistic < chi2_critical(int(positive.sum()) - 1), statistic


def assert_parents_are_sums(tree: SumTree) -> None:
    """Every stored parent is exactly the floating-point sum of its two children (no drift, nothing stale)."""
    nodes, top = tree.nodes, tree.top_size
    parents = np.arange(top, tree.capacity)
    np.testing.assert_array_equal(nodes[parents], nodes[2 * parents] + nodes[2 * parents + 1])
    assert tree.total == pytest.approx(math.fsum(tree.priorities()), rel=1e-12)


# -- SumTree -------------------------------------------------------------------------------------------------------
@pytest.fixture(
    params=["numpy", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="needs numba"))]
)
def backend(request: pytest.FixtureRequest) -> str:
    """Every SumTree test runs on both backends (numba's where it is installed, as with the dev extras)."""
    return str(request.param)


@pytest.mark.parametrize("top_size", [1, 4, 1024])
@pytest.mark.parametrize("stratified", [False, True])
def test_sampling_frequencies_match_priorities(top_size: int, stratified: bool, backend: str) -> None:
    # top_size 1 descends a binary tree from the root (5 levels for 32 slots); 1024 uses only the top level's sums.
    tree = SumTree(len(PRIORITIES), top_size=top_size, backend=backend)
    tree.add(PRIORITIES)
    counts = draw_counts(tree, np.random.default_rng(0), batches=400, stratified=stratified)
    assert_frequencies_match(counts, PRIORITIES)


def test_stratified_batches_cover_the_mass_evenly(backend: str) -> None:
    """Draw k lies in the k-th of n equal slices of the mass, so in every batch an entry holding mass share q is
    drawn n q times give or take less than 2 (independent draws stray by sqrt(n q) and more)."""
    tree = SumTree(len(PRIORITIES), top_size=1, backend=backend)
    tree.add(PRIORITIES)
    rng = np.random.default_rng(10)
    expected = 256 * PRIORITIES / PRIORITIES.sum()
    for _ in range(50):
        indices, _ = tree.sample(rng, 256, stratified=True)
        assert (np.diff(indices) >= 0).all()
        assert np.abs(np.bincount(indices, minlength=len(PRIORITIES)) - expected).max() < 2


def test_sampling_frequencies_detect_a_wrong_distribution(backend: str) -> None:
    """The chi-square check is not vacuous: draws from priorities with two entries swapped fail it."""
    swapped = PRIORITIES.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    tree = SumTree(len(swapped), top_size=1, backend=backend)
    tree.add(swapped)
    counts = draw_counts(tree, np.random.default_rng(0), batches=400, stratified=False)
    with pytest.raises(AssertionError):
        assert_frequencies_match(counts, PRIORITIES)


def test_update_with_duplicates_keeps_parents_right(backend: str) -> None:
    rng = np.random.default_rng(1)
    tree = SumTree(64, top_size=2, backend=backend)  # 5 binary levels under a top level of 2
    tree.add(rng.uniform(0.0, 2.0, 64))
    tree.update(np.array([3, 3, 7, 3, 60, 61, 7]), np.array([1.0, 2.0, 5.0, 4.0, 0.0, 8.0, 6.0]))
    np.testing.assert_array_equal(tree.priorities([3, 7, 60, 61]), [4.0, 6.0, 0.0, 8.0])  # the last value wins
    assert_parents_are_sums(tree)

    expected = tree.priorities()
    for _ in range(20):  # batches full of repeats, many sharing ancestors
        indices = rng.integers(0, 64, 300)
        values = rng.uniform(0.0, 3.0, 300)
        tree.update(indices, values)
        for i, v in zip(indices.tolist(), values.tolist(), strict=True):  # one after another: the last wins
            expected[i] = v
        np.testing.assert_array_equal(tree.priorities(), expected)
        assert_parents_are_sums(tree)


def test_last_occurrences() -> None:
    """The explicit resolution of repeated indices that `update` falls back on (numpy's own order is unspecified)."""
    indices, values = last_occurrences(np.array([5, 2, 5, 9, 2, 5]), np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    np.testing.assert_array_equal(indices, [2, 5, 9])
    np.testing.assert_array_equal(values, [5.0, 6.0, 4.0])


def test_update_on_a_large_tree_keeps_parents_right(backend: str) -> None:
    rng = np.random.default_rng(2)
    tree = SumTree(1 << 14, top_size=16, backend=backend)  # 10 binary levels
    tree.add(rng.random(1 << 14))
    for _ in range(50):
        indices, _ = tree.sample(rng, 256)
        tree.update(indices, rng.random(256))
    assert_parents_are_sums(tree)


def test_max_priority_is_the_running_maximum(backend: str) -> None:
    tree = SumTree(4, backend=backend)
    assert tree.max_priority == 0.0
    tree.add([1.0, 2.0])
    assert tree.max_priority == 2.0
    tree.update([0], [5.0])
    assert tree.max_priority == 5.0
    tree.update([0], [0.5])  # lowering the largest priority does not lower the running maximum
    assert tree.max_priority == 5.0
    tree.add([3.0])
    assert tree.max_priority == 5.0
    tree.update([1, 2], [9.0, 0.0])
    assert tree.max_priority == 9.0


@pytest.mark.parametrize("top_size", [2, 1024])
def test_growth_keeps_priorities_and_sampling(top_size: int, backend: str) -> None:
    tree = SumTree(4, top_size=top_size, backend=backend)
    assert tree.capacity == 4
    first = tree.add(PRIORITIES[:3])
    rest = tree.add(PRIORITIES[3:])  # 18 entries: capacity doubles twice, 4 -> 8 -> 16 -> 32
    np.testing.assert_array_equal(first, [0, 1, 2])
    np.testing.assert_array_equal(rest, np.arange(3, len(PRIORITIES)))
    assert tree.capacity == 32 and tree.size == len(PRIORITIES)
    np.testing.assert_array_equal(tree.priorities(), PRIORITIES)
    assert_parents_are_sums(tree)
    counts = draw_counts(tree, np.random.default_rng(3), batches=400, stratified=False)
    assert_frequencies_match(counts, PRIORITIES)


def test_growth_one_entry_at_a_time(backend: str) -> None:
    tree = SumTree(1, top_size=2, backend=backend)
    capacities = []
    for p in PRIORITIES:
        tree.add([p])
        capacities.append(tree.capacity)
    assert capacities[:9] == [1, 2, 4, 4, 8, 8, 8, 8, 16]
    np.testing.assert_array_equal(tree.priorities(), PRIORITIES)
    assert_parents_are_sums(tree)


@pytest.mark.parametrize("stratified", [False, True])
def test_zero_priority_never_sampled(stratified: bool, backend: str) -> None:
    rng = np.random.default_rng(4)
    priorities = rng.random(5000)
    priorities[::2] = 0.0  # every other entry
    priorities[1000:1600] = 0.0  # a whole run of subtrees
    priorities[4999] = 0.0  # the last entry (draws near the total)
    tree = SumTree(5000, top_size=4, backend=backend)
    tree.add(priorities)
    tree.update(np.arange(3000, 3100), np.zeros(100))  # zeroed by update, not only at insertion
    priorities[3000:3100] = 0.0
    for _ in range(100):
        indices, probabilities = tree.sample(rng, 256, stratified=stratified)
        assert (priorities[indices] > 0).all()
        assert (probabilities > 0).all()


def test_zero_priority_never_sampled_when_a_draw_overshoots_its_node(backend: str) -> None:
    """Rounding can leave a draw a hair above its node's sum; it must still not end in a zero leaf.

    Simulated by inflating the root: draws in [1, 4) take the fast path into the zero leaves and must be re-routed.
    """
    tree = SumTree(4, top_size=1, backend=backend)
    tree.add([1.0, 0.0, 0.0, 0.0])
    tree._nodes[1] = 4.0  # the root claims 4 while its children sum to 1
    indices, _ = tree.sample(np.random.default_rng(5), 256)
    np.testing.assert_array_equal(indices, 0)


@pytest.mark.parametrize(
    ("bad", "problem"), [(float("nan"), "NaN"), (-1.0, "negative"), (float("inf"), "infinite"), (-0.5, "negative")]
)
def test_bad_priorities_refused(bad: float, problem: str, backend: str) -> None:
    tree = SumTree(8, backend=backend)
    tree.add([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=rf"finite and >= 0: entry 1 is {problem}"):
        tree.add([1.0, bad])
    with pytest.raises(ValueError, match=rf"finite and >= 0: entry 2 is {problem}"):
        tree.update([0, 1, 2], [4.0, 5.0, bad])
    # A refused batch leaves the tree as it was.
    assert tree.size == 3
    np.testing.assert_array_equal(tree.priorities(), [1.0, 2.0, 3.0])
    assert tree.total == 6.0 and tree.max_priority == 3.0


def test_bad_arguments_refused(backend: str) -> None:
    tree = SumTree(8, backend=backend)
    with pytest.raises(ValueError, match="sum to 0"):
        tree.sample(np.random.default_rng(0), 4)  # nothing added
    tree.add([0.0, 0.0])
    with pytest.raises(ValueError, match="sum to 0"):
        tree.sample(np.random.default_rng(0), 4)  # all zero
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        tree.update([2], [1.0])  # not added yet
    with pytest.raises(IndexError):
        tree.update([-1], [1.0])
    with pytest.raises(ValueError, match="same shape"):
        tree.update([0, 1], [1.0])
    with pytest.raises(ValueError, match="integer"):
        tree.update(np.array([0.0]), [1.0])
    with pytest.raises(ValueError, match="power of two"):
        SumTree(8, top_size=3)
    with pytest.raises(ValueError, match="backend must be"):
        SumTree(8, backend="cython")  # type: ignore[arg-type]


@pytest.mark.skipif(not numba_available(), reason="needs numba")
@pytest.mark.parametrize("top_size", [1, 4, 1024])
def test_backends_draw_the_same_entries_and_keep_the_same_tree(top_size: int) -> None:
    """Same draws from the same random stream, and bit-identical nodes after updates with repeated indices, including
    zero priorities (the compiled descent guards every step, numpy re-descends only the draws that need it)."""
    priorities = np.random.default_rng(6).random(5000)
    priorities[::3] = 0.0
    trees = [SumTree(5000, top_size=top_size, backend=b) for b in ("numpy", "numba")]
    for tree in trees:
        tree.add(priorities)
    rngs = [np.random.default_rng(7), np.random.default_rng(7)]
    for step in range(40):
        (i0, p0), (i1, p1) = (t.sample(r, 256, stratified=step % 2 == 0) for t, r in zip(trees, rngs, strict=True))
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(p0, p1)
        indices = np.concatenate([i0, i0[:20]])  # repeats: the last value wins in both
        # one draw from each stream keeps them in step (they are equal): values r, zeroed where r <= 0.2
        values = rngs[0].random(len(indices)) * (rngs[1].random(len(indices)) > 0.2)
        for tree in trees:
            tree.update(indices, values)
        np.testing.assert_array_equal(trees[0].nodes, trees[1].nodes)


# -- DensityRatioSampler -------------------------------------------------------------------------------------------
def test_priorities_self_normalised_by_the_offline_batch() -> None:
    config = BalancedReplayConfig(temperature=5.0)
    offline = np.full(64, 3.7)
    # An offline batch whose ratios are all equal: the same ratio gives priority 1.
    np.testing.assert_allclose(density_ratio_priorities(np.full(8, 3.7), offline, config), 1.0, rtol=1e-12)
    # w^(1/5) / 3.7^(1/5): 32 times the ratio doubles the priority, 1/32 of it halves it.
    np.testing.assert_allclose(
        density_ratio_priorities([3.7, 32 * 3.7, 3.7 / 32], offline, config), [1.0, 2.0, 0.5], rtol=1e-12
    )
    # Scaling every ratio (offline ones included) changes nothing: only relative density matters.
    ratios, offline_mixed = np.array([0.2, 1.0, 4.0]), np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        density_ratio_priorities(7 * ratios, 7 * offline_mixed, config),
        density_ratio_priorities(ratios, offline_mixed, config),
        rtol=1e-12,
    )


def test_priorities_clamped() -> None:
    config = BalancedReplayConfig(priority_min=0.1, priority_max=10.0)
    priorities = density_ratio_priorities([0.0, 1e-9, 1.0, 1e9, 1e30], np.ones(4), config)
    np.testing.assert_allclose(priorities, [0.1, 0.1, 1.0, 10.0, 10.0])
    # All offline ratios zero: the floor keeps the division finite and the clamp bounds the result.
    np.testing.assert_array_equal(density_ratio_priorities([0.0, 1.0], np.zeros(4), config), [0.1, 10.0])


def test_bad_ratios_refused() -> None:
    config = BalancedReplayConfig()
    with pytest.raises(ValueError, match="density ratios must be finite and >= 0: entry 1 is NaN"):
        density_ratio_priorities([1.0, float("nan")], np.ones(4), config)
    with pytest.raises(ValueError, match="offline density ratios must be finite and >= 0: entry 0 is negative"):
        density_ratio_priorities([1.0], [-1.0, 1.0], config)
    with pytest.raises(ValueError, match="non-empty offline batch"):
        density_ratio_priorities([1.0], np.zeros(0), config)
    with pytest.raises(ValueError, match="initial_online_fraction"):
        BalancedReplayConfig(initial_online_fraction=1.0)
    with pytest.raises(ValueError, match="temperature"):
        BalancedReplayConfig(temperature=0.0)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_initial_online_mass_fraction(fraction: float) -> None:
    sampler = DensityRatioSampler(1000, BalancedReplayConfig(initial_online_fraction=fraction), online_capacity=100)
    assert sampler.tree.total == 1000.0  # offline transitions start at priority 1
    added = sampler.add_online(20)
    np.testing.assert_array_equal(added, np.arange(1000, 1020))
    online_mass = sampler.tree.priorities(added).sum()
    assert online_mass / sampler.tree.total == pytest.approx(fraction, rel=1e-12)
    # Stratified batches then hold the online share almost exactly (within one transition per batch).
    rng = np.random.default_rng(6)
    for _ in range(20):
        batch = sampler.sample(rng, 256)
        assert abs((1.0 - batch.offline_fraction) - fraction) <= 1.0 / 256 + 1e-12


def test_new_online_transitions_get_the_running_max() -> None:
    config = BalancedReplayConfig(initial_online_fraction=0.5, priority_max=1e3)
    sampler = DensityRatioSampler(100, config)
    assert sampler.running_max is None
    first = sampler.add_online(10)
    m0 = 0.5 / 0.5 * 100 / 10  # f / (1 - f) * offline mass / count
    assert sampler.running_max == pytest.approx(m0)
    np.testing.assert_allclose(sampler.tree.priorities(first), m0)
    # Priorities below the running maximum do not lower it ...
    sampler.update_priorities([0, 1, 100], [1.0, 2.0, 0.5], np.ones(32))
    second = sampler.add_online(5)
    np.testing.assert_allclose(sampler.tree.priorities(second), m0)
    # ... a larger one raises it, and the next online transitions enter there.
    sampler.update_priorities([2], [1e20], np.ones(32))  # clamped to priority_max
    assert sampler.running_max == 1e3
    third = sampler.add_online(3)
    np.testing.assert_allclose(sampler.tree.priorities(third), 1e3)
    assert sampler.num_online == 18 and sampler.tree.size == 118


def test_running_max_with_no_offline_data() -> None:
    sampler = DensityRatioSampler(0, BalancedReplayConfig(offline_priority=1.0))
    sampler.add_online(4)
    np.testing.assert_allclose(sampler.tree.priorities(), 1.0)
    batch = sampler.sample(np.random.default_rng(7), 16)
    assert batch.is_online.all() and batch.offline_fraction == 0.0


def test_sample_reports_offline_fraction_and_store_indices() -> None:
    num_offline = 500
    sampler = DensityRatioSampler(num_offline, BalancedReplayConfig(initial_online_fraction=0.3), online_capacity=64)
    sampler.add_online(40)
    rng = np.random.default_rng(8)
    fractions = []
    for _ in range(30):
        batch = sampler.sample(rng, 128)
        assert batch.offline_fraction == pytest.approx(1.0 - batch.is_online.mean())
        assert sampler.last_offline_fraction == batch.offline_fraction
        np.testing.assert_array_equal(batch.is_online, batch.indices >= num_offline)
        np.testing.assert_array_equal(batch.store_index[~batch.is_online], batch.indices[~batch.is_online])
        np.testing.assert_array_equal(batch.store_index[batch.is_online], batch.indices[batch.is_online] - num_offline)
        assert (batch.store_index[batch.is_online] < 40).all()
        np.testing.assert_allclose(
            batch.probabilities, sampler.tree.priorities(batch.indices) / sampler.tree.total, rtol=1e-12
        )
        # Re-prioritise the batch as the fine-tuning loop does: online transitions look likelier under the policy.
        ratios = np.where(batch.is_online, 4.0, 0.25)
        sampler.update_priorities(batch.indices, ratios, np.full(64, 0.25))
        fractions.append(batch.offline_fraction)
    assert fractions[0] == pytest.approx(0.7, abs=1.0 / 128)


def test_update_priorities_touches_only_the_batch() -> None:
    sampler = DensityRatioSampler(300, BalancedReplayConfig(temperature=5.0))
    sampler.add_online(20)
    before = sampler.tree.priorities()
    batch = sampler.sample(np.random.default_rng(9), 32)
    set_to = sampler.update_priorities(batch.indices, np.full(32, 32.0), np.ones(16))
    np.testing.assert_allclose(set_to, 2.0)  # 32^(1/5) / 1
    after = sampler.tree.priorities()
    touched = np.zeros(len(before), bool)
    touched[batch.indices] = True
    np.testing.assert_array_equal(after[~touched], before[~touched])
    np.testing.assert_allclose(after[touched], 2.0)
    assert_parents_are_sums(sampler.tree)


def test_sampler_state_restores_into_a_fresh_sampler_that_draws_the_same() -> None:
    rng = np.random.default_rng(0)
    sampler = DensityRatioSampler(50, BalancedReplayConfig(), online_capacity=8)
    sampler.add_online(5)
    drawn = sampler.sample(rng, 16)
    sampler.update_priorities(drawn.indices, rng.uniform(0.1, 5.0, 16), rng.uniform(0.1, 5.0, 32))
    priorities, running_max = sampler.state()
    fresh = DensityRatioSampler(50, BalancedReplayConfig(), online_capacity=8)
    fresh.restore(priorities, running_max)
    assert fresh.num_online == 5 and fresh.state()[1] == running_max
    np.testing.assert_array_equal(fresh.state()[0], priorities)
    a, b = sampler.sample(np.random.default_rng(7), 64), fresh.sample(np.random.default_rng(7), 64)
    np.testing.assert_array_equal(a.indices, b.indices)
    # the next online transitions enter at the restored running maximum, not a re-initialised one
    added = fresh.add_online(2)
    np.testing.assert_array_equal(fresh.tree.priorities()[added], [running_max, running_max])


@pytest.mark.parametrize(
    ("priorities", "running_max", "problem"),
    [
        (np.ones(3), None, "cannot hold 50 offline"),
        (np.r_[np.ones(50), np.nan], 1.0, "finite"),
        (np.ones(52), None, "without the running maximum"),
        (np.ones(52), -1.0, "running maximum must be"),
    ],
)
def test_sampler_restore_refuses_bad_states(
    priorities: NDArray[np.float64], running_max: float | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        DensityRatioSampler(50).restore(priorities, running_max)

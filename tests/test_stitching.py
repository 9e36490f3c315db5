"""Stitching with a known answer: COG (CQL on task data mixed with reward-0 prior data) joins the prior data's segment
of a chain to the task data's rewarded segment; CQL on the task data alone cannot.

The chain MDP: cells 0..10 on a line, start in cell 0, goal in cell 10 (reward 1 on arrival, terminal), gamma 0.9.
The observation is (cell / 10, one-hot of the cell) and the action a in [-1, 1] moves one cell: in cells 6..9,
a > 0.3 moves right (toward the goal) and a < -0.3 left; in cells 0..5 the mapping is mirrored (a < -0.3 moves
right), as when the first part of a task needs a different motion from the last; |a| <= 0.3 stays. Walls clip
moves at cells 0 and 10. Value iteration gives V*(s) = gamma^(9 - s): increasing toward the goal, with the best
action negative before cell 6 and positive from cell 6 on.

Task data start in cells 7..9 and move toward the goal (reward 1 on reaching it): it never visits a cell below 7
and never takes a < -0.3, so nothing in it says how to leave cells 0..5. Prior data are random walks from cells
0..6 (uniform actions, so no preferred direction), cut before they reach the goal; all their rewards are 0, as
COG relabels them. The way from the start to the goal therefore exists only as prior transitions joined to task
transitions at cells 7..8, and the direction to take in cells 0..5 can come only from the task's reward
propagated back through the prior data's transitions, which is what COG claims (Singh et al., CoRL 2020,
https://arxiv.org/abs/2010.14500). A policy trained on the task data alone extrapolates its a > 0 to the first
cells, where it walks into the wall.

Both agents train for the same number of updates with the same seeds (about 10 s on one CPU thread in all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from robot_rl.algos.batch import to_torch
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.data.episodes import DatasetInfo
from robot_rl.data.replay import TransitionStore
from robot_rl.replay.mixing import CogMixSampler, Sampler, UniformSampler

GOAL = 10
"""The goal cell; cells are 0..GOAL."""
MIRRORED = 6
"""Cells below this one move right on a < -THRESHOLD (the first segment); the others on a > THRESHOLD."""
THRESHOLD = 0.3
"""|a| above this moves one cell; at or below, the agent stays."""
GAMMA = 0.9
STATE_DIM = GOAL + 2
"""(cell / GOAL, one-hot of the cell over 0..GOAL)."""
TASK_STARTS, PRIOR_STARTS = (7, 8, 9), tuple(range(MIRRORED + 1))
HORIZON = 20
"""Steps allowed to the greedy policy from the start (the shortest path takes GOAL)."""
UPDATES, BATCH = 600, 128
CFG = CQLConfig(
    discount=GAMMA,
    tau=0.1,  # fast targets: the reward must travel 10 backups within a few hundred updates
    hidden=(64, 64),
    actor_lr=3e-3,
    critic_lr=3e-3,
    alpha_lr=1e-3,
    init_alpha=0.01,
    # CQL(H) raises Q on data actions by up to cql_weight / 2 per backup (the fixed point of its gradient), which
    # must stay small next to this MDP's value gaps (gamma^k (1 - gamma^2), about 0.04..0.19).
    cql_weight=0.1,
    sampled_actions=2,
)
SEED = 0


class Episode(NamedTuple):
    cells: list[int]
    """T + 1 cells visited."""
    actions: list[float]
    """T actions."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One thread (module-wide, so that the module's agents train under it): fast and reproducible on small CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the chain MDP ---------------------------------------------------------------------------------------------------
def move(cell: int, action: float) -> int:
    """The next cell after `action` in `cell` (deterministic)."""
    direction = 1 if action > THRESHOLD else -1 if action < -THRESHOLD else 0
    if cell < MIRRORED:
        direction = -direction
    return min(max(cell + direction, 0), GOAL)


def observe(cells: NDArray[np.int64] | list[int]) -> NDArray[np.float32]:
    """(C,) cells -> (C, STATE_DIM) observations (cell / GOAL, one-hot)."""
    cells = np.asarray(cells, np.int64)
    obs = np.zeros((len(cells), STATE_DIM), np.float32)
    obs[:, 0] = cells / GOAL
    obs[np.arange(len(cells)), 1 + cells] = 1.0
    return obs


ACTION_CLASSES = (-1.0, 0.0, 1.0)
"""One action of each effect (left-ish, stay, right-ish): the MDP's actions up to equivalence."""


def value_iteration(iterations: int = 200) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """V*(s) for s = 0..GOAL-1 and the best action class per cell, by plain value iteration over the chain."""
    v = np.zeros(GOAL + 1)  # the goal is terminal: V(GOAL) stays 0
    q = np.zeros((GOAL, len(ACTION_CLASSES)))
    for _ in range(iterations):
        for s in range(GOAL):
            for j, a in enumerate(ACTION_CLASSES):
                nxt = move(s, a)
                q[s, j] = 1.0 if nxt == GOAL else GAMMA * v[nxt]
        v[:GOAL] = q.max(axis=1)
    return v[:GOAL], np.array(ACTION_CLASSES)[q.argmax(axis=1)]


# -- data ------------------------------------------------------------------------------------------------------------
def rollout(start: int, policy: Callable[[int], float], max_steps: int, last_cell: int) -> Episode:
    """Follow `policy` from `start` for at most `max_steps`, stopping on reaching a cell >= `last_cell`."""
    cells, actions = [start], []
    while len(actions) < max_steps and cells[-1] < last_cell:
        action = float(np.clip(policy(cells[-1]), -1.0, 1.0))
        actions.append(action)
        cells.append(move(cells[-1], action))
    return Episode(cells, actions)


def make_store(episodes: list[Episode], kind: str) -> TransitionStore:
    """A store of `episodes` (T + 1 observations each); reward 1 and terminated on entering the goal, otherwise
    reward 0 and the last step truncated."""
    steps = np.array([len(ep.actions) for ep in episodes], np.int64)
    assert (steps > 0).all()
    next_cells = np.concatenate([ep.cells[1:] for ep in episodes])  # (N,)
    last = np.zeros(len(next_cells), np.bool_)
    last[np.cumsum(steps) - 1] = True  # (N,): each episode's last step
    at_goal = next_cells == GOAL
    info = DatasetInfo(
        name=f"chain-{kind}",
        kind=kind,
        env_id="chain",
        env_kwargs={},
        env_spec={"scene": "chain", "action_names": ["move"]},
        recipe={},
        versions={},
        keep_failed=True,
    )
    return TransitionStore(
        states=np.concatenate([observe(ep.cells) for ep in episodes]),  # (N + E, S)
        actions=np.concatenate([ep.actions for ep in episodes]).astype(np.float32)[:, None],  # (N, 1)
        rewards=at_goal.astype(np.float32),
        terminated=at_goal,
        truncated=last & ~at_goal,
        steps=steps,
        info=info,
    )


def toward_goal(cell: int) -> float:
    """The sign of the actions that move toward the goal in `cell`."""
    return -1.0 if cell < MIRRORED else 1.0


def make_data(seed: int = SEED) -> tuple[TransitionStore, TransitionStore]:
    """(task, prior) stores; see the module docstring."""
    rng = np.random.default_rng(seed)

    def task_policy(cell: int) -> float:
        """Toward the goal (80 %) or stay (20 %)."""
        if rng.random() < 0.8:
            return toward_goal(cell) * rng.uniform(0.5, 1.0)
        return rng.uniform(-THRESHOLD, THRESHOLD)

    def random_policy(cell: int) -> float:
        return rng.uniform(-1.0, 1.0)

    task = [rollout(int(rng.choice(TASK_STARTS)), task_policy, 15, GOAL) for _ in range(40)]
    # Cut at cell 9: prior data never see the goal (its rewards would be relabelled to 0 anyway).
    prior = [rollout(int(rng.choice(PRIOR_STARTS)), random_policy, 12, GOAL - 1) for _ in range(80)]
    return make_store(task, "task"), make_store([ep for ep in prior if ep.actions], "prior")


def cells_of(store: TransitionStore) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(N,) cells of each transition's observation and next observation."""
    cells = store.states[:, 1:].argmax(axis=1)  # (F,)
    return cells[store.obs_index], cells[store.obs_index + 1]


# -- agents ----------------------------------------------------------------------------------------------------------
def train(sampler: Sampler, seed: int = SEED) -> CQL:
    torch.manual_seed(seed)
    agent = CQL(CFG, None, STATE_DIM, 1)
    rng = np.random.default_rng(seed)
    cpu = torch.device("cpu")
    for _ in range(UPDATES):
        metrics = agent.update(to_torch(sampler.sample(rng, BATCH), cpu))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    return agent


def learned_values(agent: CQL, grid_size: int = 41) -> NDArray[np.float32]:
    """V(s) = max_a min_n Q_n(s, a) over a grid of actions, for s = 0..GOAL-1: (GOAL,)."""
    state = torch.from_numpy(observe(list(range(GOAL))))  # (C, S)
    grid = torch.linspace(-1.0, 1.0, grid_size).view(1, grid_size, 1).expand(GOAL, -1, -1)  # (C, G, 1)
    with torch.no_grad():
        q = agent.q.q(agent.q.encode(None, state), grid).min(dim=0).values  # (N, C, G) -> (C, G)
    return q.max(dim=1).values.numpy()


def greedy_actions(agent: CQL) -> NDArray[np.float32]:
    """The deterministic policy tanh(mu(s)) in every cell 0..GOAL: (GOAL + 1,)."""
    state = torch.from_numpy(observe(list(range(GOAL + 1))))
    with torch.no_grad():
        return agent.actor.deterministic(agent.actor.encode(None, state))[:, 0].numpy()


def greedy_path(agent: CQL, start: int, horizon: int = HORIZON) -> list[int]:
    """Cells visited by the deterministic policy from `start`, until the goal or `horizon` steps."""
    actions = greedy_actions(agent)
    path = [start]
    while len(path) <= horizon and path[-1] != GOAL:
        path.append(move(path[-1], float(actions[path[-1]])))
    return path


def spearman(x: NDArray[np.floating], y: NDArray[np.floating]) -> float:
    """Spearman's rank correlation (no ties expected)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


@pytest.fixture(scope="module")
def data() -> tuple[TransitionStore, TransitionStore]:
    return make_data()


@pytest.fixture(scope="module")
def cog_agent(data: tuple[TransitionStore, TransitionStore]) -> CQL:
    task, prior = data
    return train(CogMixSampler(task, prior, task_fraction=0.5))


@pytest.fixture(scope="module")
def task_only_agent(data: tuple[TransitionStore, TransitionStore]) -> CQL:
    task, _ = data
    return train(UniformSampler(task))


# -- tests -----------------------------------------------------------------------------------------------------------
def test_value_iteration_on_the_chain() -> None:
    """The known answer the agents are held to: V*(s) = gamma^(9 - s), best action negative before cell 6."""
    v, best = value_iteration()
    np.testing.assert_allclose(v, GAMMA ** (GOAL - 1 - np.arange(GOAL)), rtol=1e-9)
    np.testing.assert_array_equal(best, [toward_goal(s) for s in range(GOAL)])
    assert [move(s, toward_goal(s)) for s in range(GOAL)] == list(range(1, GOAL + 1))
    assert move(0, 1.0) == 0 and move(MIRRORED, -1.0) == MIRRORED - 1 and move(3, 0.2) == 3


def test_data_split_the_chain(data: tuple[TransitionStore, TransitionStore]) -> None:
    """Only the two stores together connect start and goal, and neither shows the way through cells 0..5."""
    task, prior = data
    task_cells, task_next = cells_of(task)
    prior_cells, prior_next = cells_of(prior)
    # Task data: only the last segment, rewarded at the goal, never a negative action.
    assert task_cells.min() == min(TASK_STARTS) and task.rewards.sum() > 0
    np.testing.assert_array_equal(task.rewards, task_next == GOAL)
    np.testing.assert_array_equal(task.terminated, task_next == GOAL)
    assert (task.actions >= -THRESHOLD).all()
    # Prior data: the first segments up to the task's, reward 0, never at the goal.
    assert prior_cells.min() == 0 and prior_next.max() == GOAL - 1
    assert not prior.rewards.any() and not prior.terminated.any()
    assert set(range(MIRRORED + 1)) <= set(prior_cells) and {7, 8} <= set(prior_cells) & set(task_cells)
    # ... and no preferred direction: its actions point away from the goal as often as toward it (+- 10 %).
    heading = np.sign(prior.actions[:, 0]) * np.array([toward_goal(c) for c in prior_cells])  # (N,)
    moving = np.abs(prior.actions[:, 0]) > THRESHOLD
    toward, away = (moving & (heading > 0)).sum(), (moving & (heading < 0)).sum()
    assert abs(toward - away) < 0.1 * (toward + away), (toward, away)


def test_cog_values_order_the_states_as_value_iteration(cog_agent: CQL) -> None:
    """Ordered as V*, and conservative: no cell valued above V* (by more than fitting noise), the last step to the
    goal (a one-step value, V* = 1) about right; bootstrapping through the terminal step would inflate them all."""
    values = learned_values(cog_agent)
    v_star, _ = value_iteration()
    assert spearman(values, v_star) >= 0.9, np.round(values, 3)
    assert (values <= v_star + 0.1).all(), np.round(values - v_star, 3)
    assert abs(values[-1] - 1.0) < 0.1, np.round(values, 3)


def test_cog_greedy_policy_reaches_the_goal_from_the_start(cog_agent: CQL) -> None:
    """By the shortest path: in every cell on the way, the policy moves as value iteration's best action does."""
    path = greedy_path(cog_agent, 0)
    assert path == list(range(GOAL + 1)), (path, np.round(greedy_actions(cog_agent), 2))


def test_task_only_cql_does_not_reach_the_goal_from_the_start(task_only_agent: CQL) -> None:
    """It learned its own segment (from cells 7..9 it reaches the goal), but not the way there from cell 0."""
    for start in TASK_STARTS:
        assert greedy_path(task_only_agent, start)[-1] == GOAL, start
    path = greedy_path(task_only_agent, 0)
    assert path[-1] != GOAL, (path, np.round(greedy_actions(task_only_agent), 2))

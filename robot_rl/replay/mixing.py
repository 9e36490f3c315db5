"""Batches drawn from task and prior data: COG's fixed-ratio mix and plain uniform replay over one (pooled) store.

COG (Singh et al., CoRL 2020, https://arxiv.org/abs/2010.14500) trains CQL on batches of task data (with its sparse
reward) and prior data (rewards relabelled to 0 when loaded: `load_dataset(..., relabel_reward=0.0)`). The paper
states a half/half mix per batch; the authors' code pools both into one buffer sampled uniformly, which makes the
mix follow the buffers' sizes. Both are here: `CogMixSampler` for the fixed ratio, `UniformSampler` over a store
pooled with `concatenate` (and over the task store alone, for task-only baselines). BC on task data or on all data
is likewise a choice of sampler, not of the algorithm.

Neither sampler changes rewards: relabelling is the loader's job, so that what a batch holds is what the store
holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from robot_rl.data.replay import Batch, Observation, TransitionStore


class Sampler(Protocol):
    """What a training loop needs of a sampler: batches, and the share of task data in the last one (for logs)."""

    last_task_fraction: float | None

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch: ...


def _layout(store: TransitionStore) -> dict[str, Any]:
    """What two stores must share for their transitions to share a batch (and a network)."""
    return {
        "observation keys": tuple(
            key
            for key, array in (("image", store.images), ("state", store.states), ("privileged", store.privileged))
            if array is not None
        ),
        "image shape": None if store.images is None else store.images.shape[1:],
        "state size": store.states.shape[1:],
        "privileged size": None if store.privileged is None else store.privileged.shape[1:],
        "action names": store.info.action_names,
    }


def _task_transitions(store: TransitionStore) -> NDArray[np.bool_]:
    """(N,) True where a transition comes from a source whose metadata says kind 'task'."""
    task_source = np.array([info.kind == "task" for info in store.sources], dtype=np.bool_)  # (sources,)
    return task_source[store.episodes.source][store.episode]  # (E,) -> (N,)


def _gather(parts: Sequence[tuple[NDArray[Any], NDArray[np.int64]]]) -> NDArray[Any]:
    """The rows `idx` of each array, one part after the other, written straight into one new array.

    `take(..., out=...)` copies each row once (fancy indexing and then `np.concatenate` would copy twice); mode
    'clip' lets it write into `out` unbuffered ('raise' buffers), and every index is in range by construction.
    """
    first = parts[0][0]
    out = np.empty((sum(len(idx) for _, idx in parts), *first.shape[1:]), first.dtype)  # (sum B_k, ...)
    offset = 0
    for array, idx in parts:  # one iteration per store (and half), never per transition
        np.take(array, idx, axis=0, out=out[offset : offset + len(idx)], mode="clip")
        offset += len(idx)
    return out


class CogMixSampler:
    """Each batch of B: exactly round(B * task_fraction) task transitions, then the rest from the prior store.

    Within each store, transitions are drawn uniformly with replacement. The split is fixed, not drawn, so every
    batch carries the same share of task data however small B is (with `round`'s half-to-even rule on ties).
    """

    def __init__(self, task: TransitionStore, prior: TransitionStore, task_fraction: float = 0.5) -> None:
        if not 0.0 <= task_fraction <= 1.0:
            raise ValueError(f"task_fraction must lie in [0, 1], got {task_fraction}")
        task_layout, prior_layout = _layout(task), _layout(prior)
        for what, value in task_layout.items():
            if prior_layout[what] != value:
                raise ValueError(
                    f"cannot mix task store {task.info.name!r} with prior store {prior.info.name!r}: {what} "
                    f"{value} (task) vs {prior_layout[what]} (prior)"
                )
        if (task.discounts is None) != (prior.discounts is None):
            raise ValueError("task and prior stores must both hold one-step transitions or both n-step returns")
        for name, store, used in (("task", task, task_fraction > 0), ("prior", prior, task_fraction < 1)):
            if used and len(store) == 0:
                raise ValueError(f"the {name} store {store.info.name!r} holds no transitions to sample")
        self.task, self.prior, self.task_fraction = task, prior, task_fraction
        self.last_task_fraction: float | None = None
        """Share of task transitions in the last batch (None before the first)."""

    def task_count(self, batch_size: int) -> int:
        """Task transitions in a batch of `batch_size`."""
        return round(batch_size * self.task_fraction)

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A batch of `batch_size`: task transitions first, then prior ones, each drawn uniformly with replacement."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        b_task = self.task_count(batch_size)
        b_prior = batch_size - b_task
        task_idx = rng.integers(0, len(self.task), size=b_task) if b_task else np.zeros(0, np.int64)  # (Bt,)
        prior_idx = rng.integers(0, len(self.prior), size=b_prior) if b_prior else np.zeros(0, np.int64)  # (Bp,)
        task_frame = self.task.obs_index[task_idx]  # (Bt,)
        prior_frame = self.prior.obs_index[prior_idx]  # (Bp,)
        task_next = task_frame + (1 if self.task.next_offset is None else self.task.next_offset[task_idx])  # (Bt,)
        prior_next = prior_frame + (1 if self.prior.next_offset is None else self.prior.next_offset[prior_idx])

        def frame_parts(
            task_array: NDArray[Any], prior_array: NDArray[Any]
        ) -> list[tuple[NDArray[Any], NDArray[np.int64]]]:
            """Observations, then next observations (frame + 1, or + m for n-step returns): the (2B, ...) layout of
            `sample_indices`."""
            return [
                (task_array, task_frame),
                (prior_array, prior_frame),
                (task_array, task_next),
                (prior_array, prior_next),
            ]

        def transitions(name: str) -> NDArray[Any]:
            """(B, ...): the task rows, then the prior rows."""
            return _gather([(getattr(self.task, name), task_idx), (getattr(self.prior, name), prior_idx)])

        # The layouts match, so an optional frame array is present in both stores or in neither.
        states = _gather(frame_parts(self.task.states, self.prior.states))  # (2B, S)
        images = (
            None
            if self.task.images is None or self.prior.images is None
            else _gather(frame_parts(self.task.images, self.prior.images))
        )  # (2B, H, W, 3)
        privileged = (
            None
            if self.task.privileged is None or self.prior.privileged is None
            else _gather(frame_parts(self.task.privileged, self.prior.privileged))
        )  # (2B, P)
        b = batch_size
        self.last_task_fraction = b_task / b
        return Batch(
            obs=Observation(
                None if images is None else images[:b],
                states[:b],
                None if privileged is None else privileged[:b],
            ),
            action=transitions("actions"),  # (B, A)
            reward=transitions("rewards"),  # (B,)
            next_obs=Observation(
                None if images is None else images[b:],
                states[b:],
                None if privileged is None else privileged[b:],
            ),
            terminated=transitions("terminated"),  # (B,)
            truncated=transitions("truncated"),  # (B,)
            discount=None if self.task.discounts is None else transitions("discounts"),  # (B,)
        )


class UniformSampler:
    """Uniform replay over one store: COG's pooled buffer (build it with `concatenate([task, prior])`), or the task
    store alone for task-only baselines.

    The share of task data in each batch is then random, in proportion to the stores' sizes; it is measured per
    batch from the sources' metadata (`DatasetInfo.kind == 'task'`) so that logs show what the agent was fed.
    """

    def __init__(self, store: TransitionStore) -> None:
        if len(store) == 0:
            raise ValueError(f"the store {store.info.name!r} holds no transitions to sample")
        self.store = store
        self.is_task = _task_transitions(store)
        """(N,) True for transitions of task sources."""
        self.task_fraction = float(self.is_task.mean())
        """Expected share of task transitions per batch (their share of the store)."""
        self.last_task_fraction: float | None = None
        """Share of task transitions in the last batch (None before the first)."""

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A batch drawn uniformly with replacement (the same draws as `TransitionStore.sample` with this rng)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = rng.integers(0, len(self.store), size=batch_size)  # (B,)
        self.last_task_fraction = float(self.is_task[idx].mean())
        return self.store.sample_indices(idx)

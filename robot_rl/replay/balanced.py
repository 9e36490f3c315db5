"""Balanced replay for offline-to-online fine-tuning: offline and online transitions drawn by density-ratio priority.

Lee et al., "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic Q-Ensemble" (CoRL 2021,
https://arxiv.org/abs/2107.00591), Sec. 4.1: a network estimates the density ratio w(s, a) = d_online(s, a) /
d_offline(s, a), and every transition, offline or online, is drawn with probability proportional to

    p = clip( w^(1/T) / mean_{offline batch}(w_off^(1/T)), p_min, p_max ),     T = 5 by default,

so that offline transitions that look like the current policy's data are replayed, and the rest fade. The
temperature T flattens the ratios (T -> infinity is uniform replay); dividing by the mean over an offline batch
keeps priorities on a fixed scale while the network changes (the offline mean is 1 after normalisation).

One `SumTree` holds a priority per transition, never any observation: tree index i < num_offline is transition i of
the offline store, and num_offline + j is transition j of the online store (frames stay in those stores). Only the
transitions of a sampled batch are re-prioritised, with the ratios the network gives them at that step
(`update_priorities`); everything else keeps its last priority. New online transitions enter at the running maximum
priority (as in prioritised replay), so each is likely to be drawn soon after it arrives. That maximum starts at the
value that gives the first online transitions a configured share of the total mass: with offline mass M and k
first online transitions, k * m0 / (M + k * m0) = f, i.e. m0 = f / (1 - f) * M / k; afterwards it is the largest of
m0 and every priority set since. The network itself lives with the fine-tuning algorithm; this module is numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from robot_rl.replay.sumtree import DEFAULT_TOP_SIZE, SumTree, check_nonnegative


@dataclass(frozen=True)
class BalancedReplayConfig:
    """Priorities of balanced replay (Lee et al. 2021); the defaults are the paper's and its code's."""

    temperature: float = 5.0
    """T in w^(1/T): larger flattens the priorities toward uniform replay."""
    priority_min: float = 1e-3
    """Lower clamp of a normalised priority: no transition becomes impossible to draw."""
    priority_max: float = 1e3
    """Upper clamp of a normalised priority: no transition takes over the batch."""
    offline_priority: float = 1.0
    """Priority of each offline transition until it is first sampled (1 = the normalised offline mean)."""
    initial_online_fraction: float = 0.5
    """Share of the total mass the first online transitions get when added; sets the initial running maximum."""
    stratified: bool = True
    """Stratified draws (one per equal slice of the mass, as in PER) rather than independent ones."""
    normaliser_floor: float = 1e-10
    """Smallest offline mean used as divisor (a network that gives every offline sample w = 0 must not divide by 0)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if not 0 < self.priority_min <= self.priority_max < math.inf:
            raise ValueError(
                f"need 0 < priority_min <= priority_max < inf, got [{self.priority_min}, {self.priority_max}]"
            )
        if not (math.isfinite(self.offline_priority) and self.offline_priority > 0):
            raise ValueError(f"offline_priority must be finite and > 0, got {self.offline_priority}")
        if not 0 < self.initial_online_fraction < 1:
            raise ValueError(f"initial_online_fraction must lie in (0, 1), got {self.initial_online_fraction}")
        if not self.normaliser_floor > 0:
            raise ValueError(f"normaliser_floor must be > 0, got {self.normaliser_floor}")


def density_ratio_priorities(
    ratios: ArrayLike, offline_ratios: ArrayLike, config: BalancedReplayConfig
) -> NDArray[np.float64]:
    """(B,) priorities clip(w^(1/T) / mean(w_off^(1/T)), p_min, p_max) of (B,) density ratios w >= 0, normalised by
    the (B_off,) ratios of an offline batch drawn at the same step."""
    w = np.asarray(ratios, dtype=np.float64)
    w_off = np.asarray(offline_ratios, dtype=np.float64)
    if w.ndim != 1 or w_off.ndim != 1 or w_off.size == 0:
        raise ValueError(f"ratios (B,) and a non-empty offline batch (B_off,) expected, got {w.shape}, {w_off.shape}")
    check_nonnegative(w, "density ratios")
    check_nonnegative(w_off, "offline density ratios")
    exponent = 1.0 / config.temperature
    scale = max(float(np.power(w_off, exponent).mean()), config.normaliser_floor)
    priorities = np.power(w, exponent)  # (B,)
    priorities /= scale
    return np.clip(priorities, config.priority_min, config.priority_max, out=priorities)


class BalancedSample(NamedTuple):
    """Which transitions a balanced batch holds. Pass `indices` back to `update_priorities`."""

    indices: NDArray[np.int64]
    """(B,) tree indices: offline transitions first (0 .. num_offline - 1), then online ones."""
    is_online: NDArray[np.bool_]
    """(B,) True where the transition is in the online store."""
    store_index: NDArray[np.int64]
    """(B,) index into the offline store where `is_online` is False, into the online store where it is True."""
    probabilities: NDArray[np.float64]
    """(B,) the probability with which each was drawn (priority / total)."""
    offline_fraction: float
    """Share of offline transitions in the batch (for logs)."""


class DensityRatioSampler:
    """Draws offline and online transitions by density-ratio priority from one sum tree (see the module docstring)."""

    def __init__(
        self,
        num_offline: int,
        config: BalancedReplayConfig | None = None,
        online_capacity: int = 1024,
        top_size: int = DEFAULT_TOP_SIZE,
    ) -> None:
        """`num_offline` offline transitions enter at `config.offline_priority`; `online_capacity` reserves tree
        room for online transitions (the tree grows past it when needed)."""
        if num_offline < 0 or online_capacity < 0:
            raise ValueError(f"num_offline and online_capacity must be >= 0, got {num_offline}, {online_capacity}")
        self.config = BalancedReplayConfig() if config is None else config
        self.num_offline = num_offline
        self.tree = SumTree(max(num_offline + online_capacity, 1), top_size)
        self.tree.add(np.full(num_offline, self.config.offline_priority))
        self._running_max: float | None = None
        """Priority of new online transitions; None until the first arrive."""
        self.last_offline_fraction: float | None = None
        """Share of offline transitions in the last batch (None before the first)."""

    @property
    def num_online(self) -> int:
        return self.tree.size - self.num_offline

    @property
    def running_max(self) -> float | None:
        """The priority the next online transitions will get (None before any online transition was added)."""
        return self._running_max

    @property
    def nbytes(self) -> int:
        return self.tree.nbytes

    def state(self) -> tuple[NDArray[np.float64], float | None]:
        """What a checkpoint needs: the (offline + online,) priorities and the running maximum (the largest priority
        ever set, which the tree alone does not hold)."""
        return self.tree.priorities(), self._running_max

    def restore(self, priorities: ArrayLike, running_max: float | None) -> None:
        """Set a fresh sampler (no online transition registered yet) to a saved `state()`: the offline priorities,
        the online transitions registered by then, and the running maximum."""
        values = np.asarray(priorities, dtype=np.float64)
        if self.num_online:
            raise ValueError(f"restore needs a fresh sampler; this one has {self.num_online} online transitions")
        if values.ndim != 1 or len(values) < self.num_offline:
            raise ValueError(f"a state of {values.shape} priorities cannot hold {self.num_offline} offline ones")
        if not (np.all(np.isfinite(values)) and np.all(values >= 0)):
            raise ValueError("saved priorities must be finite and >= 0")
        if running_max is not None and not (math.isfinite(running_max) and running_max > 0):
            raise ValueError(f"the running maximum must be finite and > 0, got {running_max}")
        if running_max is None and len(values) > self.num_offline:
            raise ValueError("online priorities were saved without the running maximum")
        self.tree.update(np.arange(self.num_offline), values[: self.num_offline])
        if len(values) > self.num_offline:
            self.tree.add(values[self.num_offline :])
        self._running_max = running_max

    def add_online(self, count: int) -> NDArray[np.int64]:
        """Register `count` new online transitions (appended to the online store in this order) at the running
        maximum priority; return their (count,) tree indices."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if self._running_max is None:
            offline_mass = self.tree.total
            fraction = self.config.initial_online_fraction
            # With no offline mass any positive priority gives the online data all of it.
            self._running_max = (
                fraction / (1.0 - fraction) * offline_mass / count if offline_mass > 0 else self.config.offline_priority
            )
        return self.tree.add(np.full(count, self._running_max))

    def sample(self, rng: np.random.Generator, batch_size: int) -> BalancedSample:
        """Draw `batch_size` transitions in proportion to their priorities (with replacement)."""
        indices, probabilities = self.tree.sample(rng, batch_size, stratified=self.config.stratified)
        is_online = indices >= self.num_offline  # (B,)
        store_index = indices - self.num_offline * is_online  # (B,)
        offline_fraction = 1.0 - np.count_nonzero(is_online) / batch_size
        self.last_offline_fraction = offline_fraction
        return BalancedSample(indices, is_online, store_index, probabilities, offline_fraction)

    def update_priorities(
        self, indices: ArrayLike, ratios: ArrayLike, offline_ratios: ArrayLike
    ) -> NDArray[np.float64]:
        """Re-prioritise the sampled transitions `indices` (B,) from their density ratios (B,), normalised by the
        ratios of an offline batch (B_off,); return the (B,) priorities set. A repeated index keeps its last value."""
        priorities = density_ratio_priorities(ratios, offline_ratios, self.config)
        self.tree.update(indices, priorities)
        if self._running_max is not None and priorities.size:
            self._running_max = max(self._running_max, float(priorities.max()))
        return priorities

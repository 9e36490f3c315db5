"""A sum tree for proportional sampling over millions of entries, every operation vectorised over the batch.

Entry i is drawn with probability p_i / sum(p) (PER, Schaul et al. 2016, https://arxiv.org/abs/1511.05952; balanced
replay, Lee et al. CoRL 2021, https://arxiv.org/abs/2107.00591, draws offline and online transitions this way).

Layout: one flat float64 array `nodes` in heap order. The C leaves (C a power of two) sit at nodes[C:2C]; node i
holds nodes[2i] + nodes[2i+1], so each level is a contiguous slice and a parent's two children are adjacent, which
lets one `take` on the (C, 2) view `nodes.reshape(C, 2)` fetch both. The levels stop at a "top" level of
K = min(C, top_size) nodes (nodes[K:2K]); nothing above it is stored. Sampling finds the top node of each draw with
one cumulative sum over the K top nodes and one `searchsorted`, then descends the log2(C / K) binary levels below
with a handful of numpy calls per level for the whole batch. On this project's machine a numpy call on 256 values
costs about a microsecond whatever it does, so the cost is counted in calls: the cumulative sum over 1024 top nodes
(about 5 us) replaces ten binary levels (about 5 us each). `benchmarks/replay_speed.py` measures it.

Updates write the leaves and recompute each changed parent from its two children, level by level. Parents are never
adjusted by deltas, so they stay exactly the floating-point sum of their children however many updates are made
(delta updates drift, and a drifting parent can give a subtree of zero leaves a nonzero share of the draws).
Duplicate indices in one update are allowed: the last priority given for an index wins.

Two backends run the same layout and give the same draws and the same trees bit for bit: numpy (always there) and,
when numba is installed (`pip install "robot-rl[fast]"`), two compiled loops for the descent and the update. The
compiled descent walks all draws one level at a time, so the memory loads of different draws overlap as in the numpy
version, but without a numpy call per step; it applies the zero-child guard at every step instead of re-descending
afterwards. On the development machine (1M entries, batch 256; `benchmarks/replay_speed.py`) a sample plus an update
took 0.18-0.27 ms with numpy and 0.15 ms compiled, on the idle machine and beside a training run alike for numba.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

DEFAULT_TOP_SIZE = 1024
"""Nodes in the top level (see the module docstring): ~1024 balances its cumulative sum against levels saved."""


Backend = Literal["auto", "numpy", "numba"]


@cache
def _numba_kernels() -> tuple[Callable[..., None], Callable[..., None]] | None:
    """The compiled (descend, write) loops, or None where numba does not import. Compiled on first use; numba caches
    the machine code next to this file, so later processes load it instead of compiling."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def descend(nodes: Any, cumsum: Any, top: int, depth: int, u: Any, node: Any) -> None:
        """`sample`'s search: u (n,) in [0, total) in, offsets inside the leaves out; node (n,) the leaf node ids."""
        n = u.shape[0]
        for k in range(n):  # the top node: the first j with cumsum[j + 1] > u (searchsorted, side="right")
            lo, hi = 0, top - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if cumsum[mid + 1] > u[k]:
                    hi = mid
                else:
                    lo = mid + 1
            u[k] -= cumsum[lo]
            node[k] = lo + top
        for _ in range(depth):  # level-major: the loads of the n draws are independent and overlap
            for k in range(n):
                i = node[k]
                left = nodes[2 * i]
                right_side = ((u[k] >= left) & (nodes[2 * i + 1] > 0.0)) | (left <= 0.0)
                u[k] -= left * right_side
                node[k] = 2 * i + right_side

    @numba.njit(cache=True, nogil=True)
    def write(nodes: Any, leaf: Any, p: Any, depth: int) -> None:
        """`update`: leaves in order (the last value of a repeated index wins), then each leaf's path recomputed
        bottom-up from both children. A shared ancestor is recomputed last by the last path through it, after every
        leaf below it was written, so it ends as the exact sum of its children."""
        for k in range(leaf.shape[0]):
            nodes[leaf[k]] = p[k]
        for k in range(leaf.shape[0]):
            i = leaf[k] >> 1
            for _ in range(depth):
                nodes[i] = nodes[2 * i] + nodes[2 * i + 1]
                i >>= 1

    return descend, write


def numba_available() -> bool:
    """Whether the compiled backend can run here (numba imports)."""
    return _numba_kernels() is not None


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def check_nonnegative(values: NDArray[np.float64], name: str = "priorities") -> float:
    """Raise ValueError unless every value is finite and >= 0; return the largest (0.0 for an empty array).

    Two reductions on the fast path (NaN propagates through both); the offending entry is located only on failure.
    """
    if values.size == 0:
        return 0.0
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high < math.inf:
        return high
    invalid = np.flatnonzero(~(np.isfinite(values) & (values >= 0.0)))
    value = float(values.flat[invalid[0]])
    problem = "NaN" if math.isnan(value) else "infinite" if math.isinf(value) else "negative"
    raise ValueError(
        f"{name} must be finite and >= 0: entry {int(invalid[0])} is {problem} ({value}); "
        f"{len(invalid)} of {values.size} are invalid"
    )


def last_occurrences(
    indices: NDArray[np.int64], values: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(m,) distinct indices and, for each, the value paired with its last occurrence in the (n,) inputs."""
    unique, first_from_end = np.unique(indices[::-1], return_index=True)
    return unique, values[::-1][first_from_end]


class SumTree:
    """Priorities of a growing list of entries (indices 0, 1, ...), sampled in proportion to their priorities.

    `add` appends entries; when they no longer fit, the capacity doubles (as often as needed) and the priorities are
    kept. `update` sets the priorities of existing entries. Zero-priority entries (and the unused slots past `size`)
    are never sampled. Priorities must be finite and >= 0.
    """

    def __init__(self, capacity: int = 1024, top_size: int = DEFAULT_TOP_SIZE, backend: Backend = "auto") -> None:
        """`capacity` is rounded up to a power of two; `top_size` (a power of two) trades the top level's cumulative
        sum against binary levels below it (1 gives a plain binary descent from the root). `backend`: "numba" (the
        compiled loops; ImportError without numba), "numpy", or "auto" (numba where it imports)."""
        if backend not in ("auto", "numpy", "numba"):
            raise ValueError(f"backend must be auto, numpy or numba, got {backend!r}")
        self._kernels = None if backend == "numpy" else _numba_kernels()
        if backend == "numba" and self._kernels is None:
            raise ImportError('SumTree(backend="numba") needs numba: pip install "robot-rl[fast]" (or numba)')
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if top_size < 1 or top_size & (top_size - 1):
            raise ValueError(f"top_size must be a power of two >= 1, got {top_size}")
        self._top_size = top_size
        self._size = 0
        self._max_priority = 0.0
        self._allocate(_next_power_of_two(capacity))

    def _allocate(self, capacity: int) -> None:
        """Fresh, all-zero arrays for `capacity` leaves (a power of two)."""
        self._capacity = capacity
        self._top = min(capacity, self._top_size)
        self._depth = (capacity // self._top).bit_length() - 1
        """Binary levels between the top level and the leaves."""
        self._nodes: NDArray[np.float64] = np.zeros(2 * capacity, np.float64)  # (2C,) heap order, [K, 2C) used
        self._pairs = self._nodes.reshape(capacity, 2)  # (C, 2) view: row i = the children of node i
        self._cumsum: NDArray[np.float64] = np.zeros(self._top + 1, np.float64)  # (K + 1,) 0, then running sums
        self._shifts = np.arange(1, self._depth + 1, dtype=np.int64)[:, None]  # (depth, 1)

    # -- state ------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    @property
    def backend(self) -> Literal["numpy", "numba"]:
        """The backend in use."""
        return "numpy" if self._kernels is None else "numba"

    @property
    def size(self) -> int:
        """Entries added so far."""
        return self._size

    @property
    def capacity(self) -> int:
        """Leaf slots allocated (a power of two); grows by doubling."""
        return self._capacity

    @property
    def top_size(self) -> int:
        """Nodes in the top level: min(capacity, the `top_size` asked for)."""
        return self._top

    @property
    def nodes(self) -> NDArray[np.float64]:
        """(2 * capacity,) the tree in heap order, read-only: leaves at [capacity, 2 * capacity), node i the sum of
        nodes 2i and 2i + 1 for top_size <= i < capacity; entries below top_size are unused."""
        view = self._nodes.view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        return self._nodes.nbytes + self._cumsum.nbytes

    @property
    def total(self) -> float:
        """Sum of all priorities."""
        return float(self._nodes[self._top : 2 * self._top].sum())

    @property
    def max_priority(self) -> float:
        """Running maximum of every priority ever set (by `add` or `update`); 0.0 before the first."""
        return self._max_priority

    def priorities(self, indices: ArrayLike | None = None) -> NDArray[np.float64]:
        """(n,) the priorities of `indices` (a copy), or (size,) all of them."""
        leaves = self._nodes[self._capacity : self._capacity + self._size]
        if indices is None:
            return leaves.copy()
        return leaves[self._checked_indices(indices)]

    def _checked_indices(self, indices: ArrayLike) -> NDArray[np.int64]:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.dtype.kind not in "iu" and idx.size > 0):
            raise ValueError(f"indices must be a 1-D integer array, got shape {idx.shape} {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._size):
            raise IndexError(f"indices must lie in [0, {self._size}), got [{int(idx.min())}, {int(idx.max())}]")
        return idx

    # -- writing ----------------------------------------------------------------------------------------------------
    def add(self, priorities: ArrayLike) -> NDArray[np.int64]:
        """Append entries with these (n,) priorities; return their (n,) indices (size, ..., size + n - 1)."""
        p = np.asarray(priorities, dtype=np.float64)
        if p.ndim != 1:
            raise ValueError(f"priorities must be a 1-D array, got shape {p.shape}")
        high = check_nonnegative(p)
        first, stop = self._size, self._size + len(p)
        if stop > self._capacity:
            self._grow(_next_power_of_two(stop))
        self._nodes[self._capacity + first : self._capacity + stop] = p
        self._size = stop
        self._refresh(first, stop)
        self._max_priority = max(self._max_priority, high)
        return np.arange(first, stop, dtype=np.int64)

    def _grow(self, capacity: int) -> None:
        """Move to `capacity` leaves (doubling as often as needed), keeping the priorities; O(capacity), rare."""
        old = self._nodes[self._capacity : self._capacity + self._size].copy()  # (size,)
        self._allocate(capacity)
        self._nodes[self._capacity : self._capacity + len(old)] = old
        self._refresh(0, len(old))

    def _refresh(self, first: int, stop: int) -> None:
        """Recompute the ancestors of the contiguous leaves [first, stop), one slice addition per level."""
        lo, hi = first + self._capacity, stop + self._capacity  # node range [lo, hi) at the current level
        nodes = self._nodes
        for _ in range(self._depth):
            lo, hi = lo >> 1, (hi + 1) >> 1  # the parents of nodes [lo, hi)
            np.add(nodes[2 * lo : 2 * hi : 2], nodes[2 * lo + 1 : 2 * hi : 2], out=nodes[lo:hi])

    def update(self, indices: ArrayLike, priorities: ArrayLike) -> None:
        """Set the priorities of existing entries: (n,) indices, (n,) priorities; for a repeated index the last wins.

        Each level recomputes the changed parents from their children after the level below is complete, so repeated
        parents (two updated leaves sharing an ancestor) write the same, correct value.
        """
        p = np.asarray(priorities, dtype=np.float64)
        idx = self._checked_indices(indices)
        if p.shape != idx.shape:
            raise ValueError(f"indices {idx.shape} and priorities {p.shape} must have the same shape")
        if idx.size == 0:
            return
        high = check_nonnegative(p)
        nodes = self._nodes
        node = idx + self._capacity  # (n,) leaf nodes
        if self._kernels is not None:
            self._kernels[1](nodes, node, p, self._depth)
            self._max_priority = max(self._max_priority, high)
            return
        nodes.put(node, p)
        # numpy leaves the winner among repeated indices unspecified; one read-back finds out whether any repeated
        # index got a value other than the one given last, and only then are repeats resolved explicitly.
        if not (nodes.take(node) == p).all():
            nodes.put(*last_occurrences(node, p))
        pairs = self._pairs
        ancestors = node >> self._shifts  # (depth, n): row k holds the ancestors k + 1 levels up
        for parent in ancestors:
            children = pairs.take(parent, axis=0)  # (n, 2)
            nodes.put(parent, np.add(children[:, 0], children[:, 1]))
        self._max_priority = max(self._max_priority, high)

    # -- sampling ---------------------------------------------------------------------------------------------------
    def sample(
        self, rng: np.random.Generator, n: int, stratified: bool = True
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Draw n entries with probability p_i / total; return (n,) indices and (n,) their probabilities p_i / total.

        Stratified (default, as in PER): the k-th draw is uniform in the k-th of n equal slices of the total mass, so
        every entry's expected count is still n p_i / total but a batch covers the mass evenly (lower variance than
        independent draws; the indices come out in increasing order). `stratified=False` draws n independent,
        identically distributed entries (with replacement). Either way, all n descend the tree together.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        top, cumsum = self._top, self._cumsum
        np.add.accumulate(self._nodes[top : 2 * top], out=cumsum[1:])  # (K,) running sums of the top level
        total = float(cumsum[top])
        if not total > 0.0:
            raise ValueError(f"cannot sample: the {self._size} priorities sum to {total} (all zero or none added)")
        u = rng.random(n)  # (n,) in [0, 1)
        if stratified:
            u += np.arange(n, dtype=np.float64)
            u *= total / n
        else:
            u *= total
        np.minimum(u, math.nextafter(total, 0.0), out=u)  # rounding must not push a draw to the total itself
        if self._kernels is not None:
            node = np.empty(n, np.int64)
            self._kernels[0](self._nodes, cumsum, top, self._depth, u, node)
            return node - self._capacity, self._nodes.take(node) / total
        # cumsum[j + 1] > u >= cumsum[j]: a zero-priority top node has cumsum[j + 1] == cumsum[j] and is never chosen.
        top_index = np.searchsorted(cumsum[1:], u, side="right")  # (n,)
        u -= cumsum.take(top_index)  # (n,) offset inside the chosen top node, >= 0
        start = u.copy()
        node = top_index + top  # (n,) node ids
        pairs = self._pairs
        for _ in range(self._depth):
            children = pairs.take(node, axis=0)  # (n, 2)
            left = children[:, 0]
            right_side = u >= left
            u -= left * right_side  # two plain calls beat one masked `subtract(..., where=)`
            node += node
            node += right_side
        p = self._nodes.take(node)  # (n,)
        if not p.all():
            # Rounding in the subtractions can leave u a hair above its node's sum and send a draw into a zero-priority
            # child. Those draws (rare) descend again, never entering a zero child.
            bad = np.flatnonzero(p == 0.0)
            node[bad] = self._guarded_descent(top_index[bad] + top, start[bad])
            p[bad] = self._nodes.take(node[bad])
        return node - self._capacity, p / total

    def _guarded_descent(self, node: NDArray[np.int64], u: NDArray[np.float64]) -> NDArray[np.int64]:
        """The descent of `sample`, but a zero child is entered only if both are zero (impossible below a node > 0)."""
        pairs = self._pairs
        for _ in range(self._depth):
            children = pairs.take(node, axis=0)  # (m, 2)
            left, right = children[:, 0], children[:, 1]
            right_side = ((u >= left) & (right > 0.0)) | (left <= 0.0)
            np.subtract(u, left, out=u, where=right_side)
            node = 2 * node + right_side
        return node

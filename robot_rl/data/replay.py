"""A dataset in flat arrays for training: loaded once from the Minari HDF5 file, sampled without Minari.

Sampling through Minari's API costs hundreds of ms a batch (see DESIGN.md, Data), so a dataset is read once into
preallocated flat arrays and every batch is a handful of numpy fancy-indexes:

    per frame (all episodes' T+1 observations, concatenated in episode order; F = N + E frames)
        images (F, H, W, 3) uint8, states (F, S) float32, privileged (F, P) float32
    per transition (N = total steps)
        obs_index (N,) int64: frame of the observation; the next observation is frame obs_index + 1, never a copy
        actions (N, A) float32, rewards (N,) float32, terminated (N,) bool, truncated (N,) bool, episode (N,) int32
    per episode (E): first frame, first transition, steps, source dataset

A first load writes the arrays as .npy files under `<dataset>/cache/` with a manifest naming the HDF5 file's size,
mtime and inode; later loads memory-map the frame arrays (data larger than RAM works, and loading takes milliseconds).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray

from robot_rl.data.episodes import DATA_DIR, MAIN_FILE, DatasetError, DatasetInfo, iter_episodes, read_info
from robot_rl.data.validate import check_metadata, check_transitions

OBS_KEYS = ("image", "state", "privileged")
"""Observation keys the store holds; `state` is always needed (it is every policy's proprioception input)."""
CACHE_DIR = "cache"
CACHE_FORMAT = 1
"""Bump when the cache's files or their meaning change: older caches are then rebuilt, never misread."""
MANIFEST = "manifest.json"
LOCK = ".lock"
FRAME_ARRAYS = {"image": "images", "state": "states", "privileged": "privileged"}
"""Observation key -> name of its frame array (and of its .npy file in the cache)."""
TRANSITION_ARRAYS = ("actions", "rewards", "terminated", "truncated", "steps")
"""Arrays cached whole and loaded into memory (small next to the frames); `steps` rebuilds the episode table."""


class Observation(NamedTuple):
    """A batch of observations; keys that were not loaded are None."""

    image: NDArray[np.uint8] | None
    """(B, H, W, 3) uint8, as rendered; converted to float on the device."""
    state: NDArray[np.float32]
    """(B, S) proprioception."""
    privileged: NDArray[np.float32] | None
    """(B, P) object and drawer states (fast low-dimensional experiments only)."""


class Batch(NamedTuple):
    """A batch of transitions. `terminated` and `truncated` stay apart: only termination stops the bootstrap."""

    obs: Observation
    action: NDArray[np.float32]
    """(B, A) in [-1, 1]."""
    reward: NDArray[np.float32]
    """(B,)"""
    next_obs: Observation
    terminated: NDArray[np.bool_]
    """(B,)"""
    truncated: NDArray[np.bool_]
    """(B,)"""
    discount: NDArray[np.float32] | None = None
    """(B,) the bootstrap's discount gamma^m of n-step returns (m steps to the next observation); None: one step,
    the agent's own gamma."""


class EpisodeTable(NamedTuple):
    """Where each episode lies in the flat arrays (one row per episode, in store order)."""

    first_frame: NDArray[np.int64]
    """(E,) index of its first observation in the frame arrays."""
    first_transition: NDArray[np.int64]
    """(E,) index of its first step in the transition arrays."""
    steps: NDArray[np.int64]
    """(E,) number of steps T (it owns T + 1 frames)."""
    source: NDArray[np.int32]
    """(E,) index into `TransitionStore.sources` of the dataset it came from."""

    @classmethod
    def from_steps(cls, steps: ArrayLike, source: ArrayLike | None = None) -> EpisodeTable:
        steps = np.asarray(steps, dtype=np.int64)  # (E,)
        if steps.ndim != 1 or (steps < 0).any():
            raise ValueError(f"episode steps must be a 1-D array of counts >= 0, got {steps!r}")
        first_transition = np.concatenate(([0], np.cumsum(steps)[:-1])).astype(np.int64)  # (E,)
        first_frame = first_transition + np.arange(len(steps), dtype=np.int64)  # (E,): each episode adds T + 1
        src = np.zeros(len(steps), np.int32) if source is None else np.asarray(source, dtype=np.int32)
        return cls(first_frame, first_transition, steps, src)


class TransitionStore:
    """A dataset's transitions over frames stored once each (T + 1 per episode), sampled with vectorised indexing.

    Build one with `load_dataset` or `concatenate`, or directly from arrays (benchmarks, tests): the per-transition
    frame index and episode id are derived here from `steps`, so they cannot disagree with the frame layout.
    """

    def __init__(
        self,
        *,
        states: NDArray[np.float32],
        actions: NDArray[np.float32],
        rewards: NDArray[np.float32],
        terminated: NDArray[np.bool_],
        truncated: NDArray[np.bool_],
        steps: ArrayLike,
        info: DatasetInfo,
        images: NDArray[np.uint8] | None = None,
        privileged: NDArray[np.float32] | None = None,
        sources: Sequence[DatasetInfo] | None = None,
        episode_source: ArrayLike | None = None,
    ) -> None:
        self.episodes = EpisodeTable.from_steps(steps, episode_source)
        n, e = int(self.episodes.steps.sum()), len(self.episodes.steps)
        frames = n + e
        if e == 0:
            raise ValueError("a TransitionStore needs at least one episode")
        expected: dict[str, tuple[NDArray[Any] | None, int, Any]] = {
            "states": (states, frames, np.float32),
            "images": (images, frames, np.uint8),
            "privileged": (privileged, frames, np.float32),
            "actions": (actions, n, np.float32),
            "rewards": (rewards, n, np.float32),
            "terminated": (terminated, n, np.bool_),
            "truncated": (truncated, n, np.bool_),
        }
        for name, (array, length, dtype) in expected.items():
            if array is not None and (len(array) != length or array.dtype != dtype):
                raise ValueError(
                    f"{name}: expected {length} rows of {np.dtype(dtype)} for {e} episodes of {n} steps in all, "
                    f"got shape {array.shape} {array.dtype}"
                )
        if images is not None and (images.ndim != 4 or images.shape[3] != 3):
            raise ValueError(f"images must be (F, H, W, 3), got {images.shape}")
        self.images = images
        self.states = states
        self.privileged = privileged
        self.actions = actions
        self.rewards = rewards
        self.terminated = terminated
        self.truncated = truncated
        self.info = info
        """The first source's metadata; pooled sources share image shape, state size and action names."""
        self.sources: tuple[DatasetInfo, ...] = (info,) if sources is None else tuple(sources)
        self.episode = np.repeat(np.arange(e, dtype=np.int32), self.episodes.steps)  # (N,)
        # Each earlier episode adds one frame more than its steps (its final observation), so frame = transition +
        # episode id.
        self.obs_index = np.arange(n, dtype=np.int64) + self.episode  # (N,)
        self.next_offset: NDArray[np.int64] | None = None
        """(N,) frames from a transition's observation to its next one (m of its n-step return); None: 1 each."""
        self.discounts: NDArray[np.float32] | None = None
        """(N,) gamma^m, the bootstrap's discount of its n-step return; None: one-step transitions."""

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes.steps)

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays held (memory-mapped frames count their mapped size, resident or not)."""
        arrays = [
            self.images,
            self.states,
            self.privileged,
            self.actions,
            self.rewards,
            self.terminated,
            self.truncated,
            self.episode,
            self.obs_index,
            *self.episodes,
        ]
        return sum(a.nbytes for a in arrays if a is not None)

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A batch of transitions drawn uniformly with replacement."""
        return self.sample_indices(rng.integers(0, len(self), size=batch_size))

    def sample_indices(self, idx: ArrayLike) -> Batch:
        """The batch of the transitions `idx` (B,): one fancy-index per array, obs and next obs gathered together.

        Gathering the observation and next-observation frames in one index keeps the memory access to one pass per
        array; the two halves of the result are views, not copies. Fancy indexing (not `take`) returns plain
        ndarrays from memory-mapped arrays too.
        """
        idx = np.asarray(idx, dtype=np.int64)  # (B,)
        b = len(idx)
        frame = self.obs_index[idx]  # (B,)
        next_frame = frame + 1 if self.next_offset is None else frame + self.next_offset[idx]  # (B,)
        both = np.concatenate((frame, next_frame))  # (2B,): observations, then next observations
        states = self.states[both]  # (2B, S)
        images = None if self.images is None else self.images[both]  # (2B, H, W, 3)
        privileged = None if self.privileged is None else self.privileged[both]  # (2B, P)
        return Batch(
            obs=Observation(
                None if images is None else images[:b],
                states[:b],
                None if privileged is None else privileged[:b],
            ),
            action=self.actions[idx],  # (B, A)
            reward=self.rewards[idx],  # (B,)
            next_obs=Observation(
                None if images is None else images[b:],
                states[b:],
                None if privileged is None else privileged[b:],
            ),
            terminated=self.terminated[idx],  # (B,)
            truncated=self.truncated[idx],  # (B,)
            discount=None if self.discounts is None else self.discounts[idx],  # (B,)
        )

    def n_step(self, n: int, discount: float, terminal_on_reward: bool = False) -> TransitionStore:
        """This store's transitions as n-step returns (a new store sharing the frames; this one is unchanged).

        Transition t becomes (s_t, a_t, R, s_{t+m}, d) with R = sum_{k<m} gamma^k r_{t+k}: m <= n steps, fewer where
        the episode ends or a terminal step comes first (d is then that step's termination, and the target is
        R + gamma^m (1 - d) V(s_{t+m}) with gamma^m in `discounts`). The steps after t are the data's own actions, so
        the return is the behaviour's, not the learnt policy's: a bias that pays off where rewards are sparse and
        the data's trajectories are purposeful (value travels n steps per backup instead of one).
        `terminal_on_reward` makes every rewarded step terminal first (the task ends at success).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if self.next_offset is not None:
            raise ValueError("this store already holds n-step returns")
        terminal = self.terminated | (self.rewards > 0) if terminal_on_reward else self.terminated  # (N,)
        total = len(self)
        t = np.arange(total, dtype=np.int64)  # (N,)
        episode_end = (self.episodes.first_transition + self.episodes.steps)[self.episode]  # (N,) exclusive
        returns = np.zeros(total, np.float64)  # (N,)
        steps = np.zeros(total, np.int64)  # (N,) m
        ended = np.zeros(total, np.bool_)  # (N,) a terminal step was included
        truncated = np.zeros(total, np.bool_)  # (N,)
        going = np.ones(total, np.bool_)  # (N,) still adding steps
        for k in range(n):  # n vectorised passes, never a loop over transitions
            j = t + k  # (N,)
            going &= j < episode_end
            at = j[going]
            returns[going] += discount**k * self.rewards[at]
            steps[going] += 1
            ended[going] = terminal[at]
            truncated[going] = self.truncated[at]
            going[going] = ~terminal[at]
        out = copy.copy(self)
        out.rewards = returns.astype(np.float32)
        out.terminated = ended
        out.truncated = truncated
        out.next_offset = steps
        out.discounts = (discount**steps).astype(np.float32)
        return out


# -- loading ---------------------------------------------------------------------------------------------------------
def load_dataset(
    folder: Path,
    *,
    keys: Sequence[str] | None = None,
    relabel_reward: float | None = None,
    cache: bool = True,
) -> TransitionStore:
    """Load the dataset in `folder` (a `<name>-v<N>` folder) into a `TransitionStore`.

    `keys` are the observation keys to load (default: every key the dataset has; `state` is required). A first
    load (no valid cache) checks what it reads as `validate_dataset` would (shapes, finiteness, action bounds,
    episode boundaries, metadata). `relabel_reward`
    sets every reward to that value in the store, never on disk (COG relabels prior data to 0). With `cache`, the
    first load writes `folder/cache/` and later loads memory-map it; the cache is rebuilt when main_data.hdf5
    changes (size, mtime or inode) or when it lacks a requested key. Concurrent loaders of one dataset take turns
    (a file lock), so parallel runs on a fresh dataset build the cache once.
    """
    info, metadata = read_info(folder)
    if keys is None:
        present = {
            "state",
            "image" if info.image_shape else "",
            "privileged" if info.env_spec.get("privileged_names") else "",
        }
        keys = tuple(k for k in OBS_KEYS if k in present)
    keys = tuple(keys)
    unknown = sorted(set(keys) - set(OBS_KEYS))
    if unknown or "state" not in keys:
        raise ValueError(f"keys must include 'state' and be among {OBS_KEYS}, got {keys}")
    if relabel_reward is not None and not np.isfinite(relabel_reward):
        raise ValueError(f"relabel_reward must be finite, got {relabel_reward}")
    cache_dir = _usable_cache_dir(folder) if cache else None
    if cache_dir is None:
        store = _read_hdf5(folder, info, metadata, keys, None)
    else:
        with _locked(cache_dir):
            source = _source_stamp(folder)
            cached = _read_cache(cache_dir, source, keys, info)
            store = _read_hdf5(folder, info, metadata, keys, (cache_dir, source)) if cached is None else cached
    if relabel_reward is not None:
        store.rewards = np.full(len(store), relabel_reward, dtype=np.float32)  # (N,); the cache keeps the originals
    return store


def _read_hdf5(
    folder: Path,
    info: DatasetInfo,
    metadata: dict[str, Any],
    keys: tuple[str, ...],
    cache: tuple[Path, dict[str, int]] | None,
) -> TransitionStore:
    """Read every episode once into preallocated arrays (frame arrays straight into the cache's files, if caching).

    The arrays are sized from Minari's `total_steps` and `total_episodes` and each episode is checked against them
    as it is read, so the file is read in a single pass without a list of per-episode arrays to concatenate.
    """
    path = folder / DATA_DIR / MAIN_FILE
    problems = check_metadata(info)
    if problems:
        raise DatasetError(f"{path}: " + "; ".join(problems))
    try:
        n, e = int(metadata["total_steps"]), int(metadata["total_episodes"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{folder}: metadata.json lacks total_steps / total_episodes ({err!r})") from err
    if e <= 0:
        raise DatasetError(f"{path}: the dataset holds no episodes")
    frames = n + e
    writer = _CacheWriter(*cache) if cache is not None else None
    try:
        arrays: dict[str, NDArray[Any]] = {
            "actions": np.empty(0, np.float32),  # replaced at the first episode, once A is known
            "rewards": np.empty(n, np.float32),
            "terminated": np.empty(n, np.bool_),
            "truncated": np.empty(n, np.bool_),
            "steps": np.empty(e, np.int64),
        }
        frame_shapes: dict[str, tuple[int, ...]] = {}
        action_shape: tuple[int, ...] = ()
        f0 = t0 = 0  # next free frame and transition
        count = 0
        for i, group in iter_episodes(folder):
            if i >= e:
                raise DatasetError(f"{path}: episode {i} is beyond metadata.json's total_episodes={e}")
            ep = _open_episode(path, i, group, keys)
            steps = ep["actions"].shape[0]
            shapes = {key: ep[key].shape[1:] for key in keys}
            if i == 0:
                frame_shapes, action_shape = shapes, ep["actions"].shape[1:]
                _check_first_episode(path, ep, frame_shapes, action_shape, info)
                arrays["actions"] = np.empty((n, *action_shape), np.float32)
                for key in keys:
                    shape, dtype = (frames, *frame_shapes[key]), np.uint8 if key == "image" else np.float32
                    name = FRAME_ARRAYS[key]
                    arrays[name] = np.empty(shape, dtype) if writer is None else writer.frame_array(name, shape, dtype)
            if "image" in keys and ep["image"].dtype != np.uint8:
                raise DatasetError(f"{path}: episode {i}: images of dtype {ep['image'].dtype}, expected uint8")
            for key in keys:
                if shapes[key] != frame_shapes[key]:
                    raise DatasetError(
                        f"{path}: episode {i}: observation '{key}' has frames of shape {shapes[key]}, "
                        f"episode 0 has {frame_shapes[key]}"
                    )
            if ep["actions"].shape[1:] != action_shape:
                raise DatasetError(
                    f"{path}: episode {i}: actions of shape {ep['actions'].shape[1:]}, episode 0 has {action_shape}"
                )
            if t0 + steps > n or f0 + steps + 1 > frames:
                raise DatasetError(f"{path}: episode {i}: the episodes hold more steps than total_steps={n}")
            for key in keys:
                _read_into(path, i, key, ep[key], arrays[FRAME_ARRAYS[key]][f0 : f0 + steps + 1])
            for name, h5_name in (("actions", "actions"), ("rewards", "rewards")):
                _read_into(path, i, h5_name, ep[h5_name], arrays[name][t0 : t0 + steps])
            for name, h5_name in (("terminated", "terminations"), ("truncated", "truncations")):
                _read_into(path, i, h5_name, ep[h5_name], arrays[name][t0 : t0 + steps])
            arrays["steps"][i] = steps
            f0, t0, count = f0 + steps + 1, t0 + steps, count + 1
        if count != e or t0 != n:
            raise DatasetError(
                f"{path}: {count} episodes of {t0} steps in all, metadata.json says {e} episodes of {n} steps"
            )
        _check_finite(path, arrays)
        problems = check_transitions(arrays["actions"], arrays["terminated"], arrays["truncated"], arrays["steps"])
        if problems:
            raise DatasetError(f"{path}: invalid dataset:\n  " + "\n  ".join(problems))
        if writer is not None:
            arrays = writer.commit(arrays, keys)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return _store_from_arrays(arrays, info)


def _store_from_arrays(arrays: dict[str, NDArray[Any]], info: DatasetInfo) -> TransitionStore:
    return TransitionStore(
        images=arrays.get("images"),
        states=arrays["states"],
        privileged=arrays.get("privileged"),
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminated=arrays["terminated"],
        truncated=arrays["truncated"],
        steps=arrays["steps"],
        info=info,
    )


def _open_episode(path: Path, i: int, group: h5py.Group, keys: tuple[str, ...]) -> dict[str, Any]:
    """The low-level dataset handles of one episode, their lengths checked (observations hold steps + 1 entries).

    h5py's low-level handles cost a fraction of its high-level objects per access, which matters at 8 datasets
    an episode and thousands of episodes.
    """
    handles: dict[str, Any] = {}
    try:
        obs = h5py.h5o.open(group.id, b"observations")
    except KeyError as err:
        raise DatasetError(f"{path}: episode {i} has no 'observations' group") from err
    for key in keys:
        try:
            handles[key] = h5py.h5o.open(obs, key.encode())
        except KeyError as err:
            present = sorted(name.decode() for name in obs)
            raise DatasetError(
                f"{path}: episode {i} has no observation '{key}' (it has {present}); load with keys that exist"
            ) from err
    for name in ("actions", "rewards", "terminations", "truncations"):
        try:
            handles[name] = h5py.h5o.open(group.id, name.encode())
        except KeyError as err:
            raise DatasetError(f"{path}: episode {i} has no '{name}' dataset") from err
    steps = handles["actions"].shape[0] if len(handles["actions"].shape) == 2 else -1
    if steps < 0:
        raise DatasetError(f"{path}: episode {i}: actions must be (T, A), got shape {handles['actions'].shape}")
    for name in ("rewards", "terminations", "truncations"):
        if handles[name].shape != (steps,):
            raise DatasetError(f"{path}: episode {i}: {name} of shape {handles[name].shape}, expected ({steps},)")
    for key in keys:
        shape = handles[key].shape
        if len(shape) < 1 or shape[0] != steps + 1:
            raise DatasetError(
                f"{path}: episode {i}: observation '{key}' holds {shape[0] if shape else 0} entries for {steps} "
                f"steps; observations must hold steps + 1 (the final observation included)"
            )
    return handles


def _check_first_episode(
    path: Path,
    ep: dict[str, Any],
    frame_shapes: dict[str, tuple[int, ...]],
    action_shape: tuple[int, ...],
    info: DatasetInfo,
) -> None:
    """What the store's layout assumes, checked once: HWC uint8 images, vector states, one name per action."""
    image = frame_shapes.get("image")
    if image is not None and (len(image) != 3 or image[2] != 3 or ep["image"].dtype != np.uint8):
        raise DatasetError(
            f"{path}: episode 0: images must be (T+1, H, W, 3) uint8, got {(-1, *image)} {ep['image'].dtype}"
        )
    for key in ("state", "privileged"):
        if key in frame_shapes and len(frame_shapes[key]) != 1:
            raise DatasetError(f"{path}: episode 0: '{key}' must be (T+1, D), got {(-1, *frame_shapes[key])}")
    if len(action_shape) != 1 or action_shape[0] != len(info.action_names):
        raise DatasetError(
            f"{path}: episode 0: actions of shape {(-1, *action_shape)}, but metadata names "
            f"{len(info.action_names)} actions {info.action_names}"
        )


def _read_into(path: Path, i: int, name: str, handle: Any, out: NDArray[Any]) -> None:
    """Read one whole HDF5 dataset into the contiguous slice `out` (same shape), converting numeric types.

    The low-level read writes into `out` directly: no temporary array, no h5py selection machinery.
    """
    if out.shape != handle.shape:  # the low-level read trusts the buffer's size: never let it write past it
        raise DatasetError(f"{path}: episode {i}: '{name}' of shape {handle.shape}, expected {out.shape}")
    if out.size == 0:
        return
    file_dtype = handle.dtype
    if file_dtype.kind not in "biuf":
        raise DatasetError(f"{path}: episode {i}: '{name}' has non-numeric dtype {file_dtype}")
    if out.dtype == np.bool_ and file_dtype != np.bool_:
        raw = np.empty(out.shape, file_dtype)
        handle.read(h5py.h5s.ALL, h5py.h5s.ALL, raw)
        out[...] = raw != 0
        return
    handle.read(h5py.h5s.ALL, h5py.h5s.ALL, out)


def _check_finite(path: Path, arrays: dict[str, NDArray[Any]]) -> None:
    """Refuse NaN or inf in actions, rewards and states (they would silently poison every loss that touches them)."""
    steps = arrays["steps"]
    table = EpisodeTable.from_steps(steps)
    for name, per_frame in (("actions", False), ("rewards", False), ("states", True), ("privileged", True)):
        if name not in arrays:
            continue
        values = arrays[name]
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)  # (rows,)
        if finite.all():
            continue
        rows = np.flatnonzero(~finite)
        starts = table.first_frame if per_frame else table.first_transition
        bad = np.unique(np.searchsorted(starts, rows, side="right") - 1)  # episodes holding a bad row
        raise DatasetError(
            f"{path}: non-finite values in {name} of episode(s) {bad[:10].tolist()}"
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        )


# -- cache -----------------------------------------------------------------------------------------------------------
def _usable_cache_dir(folder: Path) -> Path | None:
    """`folder/cache`, created if needed; None (with a warning) where it cannot be written, e.g. a read-only share."""
    cache_dir = folder / CACHE_DIR
    try:
        cache_dir.mkdir(exist_ok=True)
        (cache_dir / LOCK).touch()
    except OSError as err:
        warnings.warn(f"{cache_dir}: cannot write a cache ({err}); loading without one", stacklevel=3)
        return None
    return cache_dir


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache; the OS releases it if the process dies, so it never goes stale."""
    with open(cache_dir / LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _source_stamp(folder: Path) -> dict[str, int]:
    """What identifies the HDF5 file's contents cheaply: rewriting it (atomically, by rename) changes the inode."""
    st = (folder / DATA_DIR / MAIN_FILE).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_cache(
    cache_dir: Path, source: dict[str, int], keys: tuple[str, ...], info: DatasetInfo
) -> TransitionStore | None:
    """The store from a valid cache (frame arrays memory-mapped read-only), or None if it is missing or stale."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != CACHE_FORMAT
        or manifest.get("source") != source
        or not set(keys) <= set(manifest.get("keys", []))
    ):
        return None
    names = [FRAME_ARRAYS[key] for key in keys] + list(TRANSITION_ARRAYS)
    arrays: dict[str, NDArray[Any]] = {}
    try:
        for name in names:
            frame = name in FRAME_ARRAYS.values()
            array = np.load(cache_dir / f"{name}.npy", mmap_mode="r" if frame else None, allow_pickle=False)
            expected = manifest["arrays"][name]
            if list(array.shape) != expected["shape"] or array.dtype.str != expected["dtype"]:
                return None
            arrays[name] = array
        return _store_from_arrays(arrays, info)
    except (OSError, EOFError, ValueError, KeyError, TypeError):  # a damaged file: rebuild it
        return None


class _CacheWriter:
    """Writes a cache atomically: every file as `<name>.npy.tmp`, renamed when all are complete, manifest last.

    Only the holder of the cache lock writes, so temporary names need no uniqueness. A load interrupted at any
    point leaves no manifest naming the new files, and the next load rebuilds.
    """

    def __init__(self, cache_dir: Path, source: dict[str, int]) -> None:
        self.dir, self.source = cache_dir, source
        # Whatever is there is stale (its manifest did not match): drop it before writing, manifest first.
        for path in cache_dir.iterdir():
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.tmp: list[Path] = []

    def _tmp(self, name: str) -> Path:
        path = self.dir / f"{name}.npy.tmp"
        self.tmp.append(path)
        return path

    def frame_array(self, name: str, shape: tuple[int, ...], dtype: Any) -> NDArray[Any]:
        """A writable memory map in the cache to read frames into: no second copy, and data larger than RAM fits."""
        return np.lib.format.open_memmap(self._tmp(name), mode="w+", dtype=dtype, shape=shape)

    def commit(self, arrays: dict[str, NDArray[Any]], keys: tuple[str, ...]) -> dict[str, NDArray[Any]]:
        """Finish the cache and return the arrays re-opened from it (frames memory-mapped read-only)."""
        for name in TRANSITION_ARRAYS:
            with open(self._tmp(name), "wb") as f:
                np.save(f, arrays[name], allow_pickle=False)
        names = [FRAME_ARRAYS[key] for key in keys] + list(TRANSITION_ARRAYS)
        manifest = {
            "format": CACHE_FORMAT,
            "source": self.source,
            "keys": list(keys),
            "arrays": {name: {"shape": list(arrays[name].shape), "dtype": arrays[name].dtype.str} for name in names},
        }
        # No msync/fsync: writes through a shared memory map are the file's page cache, which every later reader
        # sees; the renames below guard against an interrupted process (the cache is derived data, rebuilt at will).
        for name in names:
            os.replace(self.dir / f"{name}.npy.tmp", self.dir / f"{name}.npy")
        self.tmp.clear()
        tmp = self.dir / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, self.dir / MANIFEST)
        reopened = dict(arrays)
        for key in keys:
            name = FRAME_ARRAYS[key]
            reopened[name] = np.load(self.dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        return reopened

    def abort(self) -> None:
        for path in self.tmp:
            path.unlink(missing_ok=True)


# -- pooling ---------------------------------------------------------------------------------------------------------
def concatenate(stores: Sequence[TransitionStore]) -> TransitionStore:
    """One pooled store of `stores`' episodes, in order (COG's single-buffer baseline). Arrays are copied into RAM.

    Refuses stores that differ in image shape, state or privileged size, or action names: pooling them would
    silently mix incompatible observations or actions.
    """
    if not stores:
        raise ValueError("concatenate needs at least one store")
    if any(s.next_offset is not None for s in stores):
        raise ValueError("concatenate one-step stores, then take n-step returns of the pooled store")
    first = stores[0]

    def layout(s: TransitionStore) -> dict[str, Any]:
        return {
            "image shape": None if s.images is None else s.images.shape[1:],
            "state size": s.states.shape[1:],
            "privileged size": None if s.privileged is None else s.privileged.shape[1:],
            "action names": s.info.action_names,
        }

    expected = layout(first)
    for k, store in enumerate(stores[1:], start=1):
        got = layout(store)
        for what, value in got.items():
            if value != expected[what]:
                raise ValueError(
                    f"cannot pool store {k} ({store.info.name!r}) with store 0 ({first.info.name!r}): {what} "
                    f"{value} vs {expected[what]}"
                )

    def cat(arrays: list[NDArray[Any] | None]) -> NDArray[Any] | None:
        present = [a for a in arrays if a is not None]  # all or none (checked above)
        return np.concatenate(present) if present else None

    sources: list[DatasetInfo] = []
    episode_source: list[NDArray[np.int32]] = []
    for store in stores:
        episode_source.append(store.episodes.source + len(sources))  # (E_k,): renumbered into the pooled list
        sources.extend(store.sources)
    return TransitionStore(
        images=cat([s.images for s in stores]),
        states=np.concatenate([s.states for s in stores]),
        privileged=cat([s.privileged for s in stores]),
        actions=np.concatenate([s.actions for s in stores]),
        rewards=np.concatenate([s.rewards for s in stores]),
        terminated=np.concatenate([s.terminated for s in stores]),
        truncated=np.concatenate([s.truncated for s in stores]),
        steps=np.concatenate([s.episodes.steps for s in stores]),
        info=first.info,
        sources=sources,
        episode_source=np.concatenate(episode_source),
    )

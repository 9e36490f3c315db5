"""Online transitions, appended one environment step at a time, in the flat layout of `TransitionStore`.

Fine-tuning (Lee et al. CoRL 2021) draws from offline data and from the data the policy is collecting. The offline
data sit in a `TransitionStore` (loaded once); this store grows. The layout is the same, so that a batch is gathered
the same way: frames (observations) stored once each, T + 1 per episode, and per transition the index of its
observation's frame, the next observation being the frame after it:

    per frame (F):       states (F, S) float32, privileged (F, P) float32 (optional),
                         images (F, H, W, 3) uint8 (optional)
    per transition (N):  obs_index (N,) int64, actions (N, A) float32, rewards (N,) float32,
                         terminated (N,) bool, truncated (N,) bool
    per episode (E):     episode_starts (E,) int64, the frame each episode begins with

Arrays are preallocated and double when full (amortised O(1) per step, no per-step reallocation). An episode cut
short (the process stopped mid-episode) is still valid data: its transitions hold (s, a, r, s') and only
`terminated` stops a bootstrap. `arrays()` and `from_arrays` move the whole store to and from plain numpy arrays,
for checkpoints written as .npz without pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from robot_rl.data.replay import Batch, Observation

FRAME_KEYS = {"state": "states", "privileged": "privileged", "image": "images"}
"""Observation key -> frame array name."""
TRANSITION_ARRAYS = ("obs_index", "actions", "rewards", "terminated", "truncated")


class OnlineStore:
    """A growing store of online transitions; `sample` and `sample_indices` return the `Batch` a `TransitionStore`
    would (see the module docstring)."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        privileged_dim: int | None = None,
        image_shape: tuple[int, int, int] | None = None,
        capacity: int = 1024,
    ) -> None:
        """`privileged_dim` and `image_shape` None: the store holds no such observation. `capacity`: transitions
        reserved at first (the store grows past it)."""
        if capacity < 1 or state_dim < 0 or action_dim < 1:
            raise ValueError(f"need capacity >= 1, state_dim >= 0, action_dim >= 1; got {capacity}, {state_dim}, "
                             f"{action_dim}")  # fmt: skip
        self.action_dim = action_dim
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {"states": ((state_dim,), np.float32)}
        if privileged_dim is not None:
            shapes["privileged"] = ((privileged_dim,), np.float32)
        if image_shape is not None:
            shapes["images"] = (tuple(image_shape), np.uint8)
        # Frames: one per transition plus one per episode; reserve a little more than the transitions.
        self._frames = {name: np.empty((capacity + capacity // 8 + 1, *shape), dtype) for name, (shape, dtype) in
                        shapes.items()}  # fmt: skip
        self._transitions: dict[str, NDArray[Any]] = {
            "obs_index": np.empty(capacity, np.int64),
            "actions": np.empty((capacity, action_dim), np.float32),
            "rewards": np.empty(capacity, np.float32),
            "terminated": np.empty(capacity, np.bool_),
            "truncated": np.empty(capacity, np.bool_),
        }
        self._episode_starts: list[int] = []
        self._num_frames = 0
        self._size = 0
        self._open = False
        """An episode is running: `add` may append to it."""

    # -- state ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def num_episodes(self) -> int:
        """Episodes begun (the last one may still be running or have been cut short)."""
        return len(self._episode_starts)

    @property
    def nbytes(self) -> int:
        """Bytes allocated (capacity, not only what is filled)."""
        return sum(a.nbytes for a in (*self._frames.values(), *self._transitions.values()))

    def _view(self, name: str) -> NDArray[Any]:
        if name in self._frames:
            return self._frames[name][: self._num_frames]
        return self._transitions[name][: self._size]

    # -- writing -------------------------------------------------------------------------------------------------
    def start_episode(self, observation: Mapping[str, NDArray[Any]]) -> None:
        """Begin an episode with its first observation (the env's `reset` output); ends any running episode."""
        self._append_frame(observation)
        self._episode_starts.append(self._num_frames - 1)
        self._open = True

    def add(
        self,
        action: ArrayLike,
        reward: float,
        terminated: bool,
        truncated: bool,
        next_observation: Mapping[str, NDArray[Any]],
    ) -> int:
        """Append one step of the running episode: the action taken, the reward and flags `env.step` returned and
        its observation. Returns the transition's index. After a terminated or truncated step, `start_episode` must
        be called before the next `add`."""
        if not self._open:
            raise RuntimeError("call start_episode (with the reset observation) before adding steps")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.action_dim,):
            raise ValueError(f"action must have shape ({self.action_dim},), got {a.shape}")
        if self._size == len(self._transitions["actions"]):
            self._transitions = {k: _grown(v, 2 * len(v)) for k, v in self._transitions.items()}
        i = self._size
        t = self._transitions
        t["obs_index"][i] = self._num_frames - 1  # the episode's latest frame
        t["actions"][i] = a
        t["rewards"][i] = reward
        t["terminated"][i] = terminated
        t["truncated"][i] = truncated
        self._append_frame(next_observation)
        self._size += 1
        self._open = not (terminated or truncated)
        return i

    def _append_frame(self, observation: Mapping[str, NDArray[Any]]) -> None:
        if self._num_frames == len(self._frames["states"]):
            self._frames = {k: _grown(v, 2 * len(v)) for k, v in self._frames.items()}
        f = self._num_frames
        for key, name in FRAME_KEYS.items():
            if name not in self._frames:
                continue
            if key not in observation:
                raise KeyError(f"the observation has no {key!r} (keys: {sorted(observation)}); the store needs it")
            value = np.asarray(observation[key])
            target = self._frames[name]
            if value.shape != target.shape[1:]:
                raise ValueError(f"observation {key!r} has shape {value.shape}, the store holds {target.shape[1:]}")
            target[f] = value
        self._num_frames += 1

    # -- sampling ------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A batch of transitions drawn uniformly with replacement."""
        if self._size == 0:
            raise ValueError("the online store holds no transitions yet")
        return self.sample_indices(rng.integers(0, self._size, size=batch_size))

    def sample_indices(self, idx: ArrayLike) -> Batch:
        """The batch of transitions `idx` (B,), gathered as `TransitionStore.sample_indices` does."""
        idx = np.asarray(idx, dtype=np.int64)  # (B,)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._size):
            raise IndexError(f"transition indices must lie in [0, {self._size})")
        b = len(idx)
        frame = self._transitions["obs_index"][idx]  # (B,)
        both = np.concatenate((frame, frame + 1))  # (2B,): observations, then next observations
        gathered = {name: array[both] for name, array in self._frames.items()}  # (2B, ...) each

        def observation(part: slice) -> Observation:
            images, privileged = gathered.get("images"), gathered.get("privileged")
            return Observation(
                None if images is None else images[part],
                gathered["states"][part],
                None if privileged is None else privileged[part],
            )

        t = self._transitions
        return Batch(
            obs=observation(slice(0, b)),
            action=t["actions"][idx],  # (B, A)
            reward=t["rewards"][idx],  # (B,)
            next_obs=observation(slice(b, 2 * b)),
            terminated=t["terminated"][idx],  # (B,)
            truncated=t["truncated"][idx],  # (B,)
        )

    # -- files ---------------------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, NDArray[Any]]:
        """The filled part of every array (views), plus `episode_starts`: what `from_arrays` rebuilds the store from."""
        out = {name: self._view(name) for name in (*self._frames, *TRANSITION_ARRAYS)}
        out["episode_starts"] = np.asarray(self._episode_starts, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[Any]], capacity: int = 0) -> OnlineStore:
        """A store holding exactly `arrays` (as `arrays()` gives them), with room for at least `capacity` transitions.
        The arrays are checked (names, dtypes, lengths, frame indices); ValueError names the first problem. No
        episode is running afterwards: call `start_episode` before adding steps."""
        expected = {"states", "episode_starts", *TRANSITION_ARRAYS}
        optional = {"privileged", "images"}
        names = set(arrays)
        if not expected <= names or names - expected - optional:
            raise ValueError(
                f"online arrays must be {sorted(expected)} (+ optionally {sorted(optional)}), got {sorted(names)}"
            )
        dtypes = {"states": np.float32, "privileged": np.float32, "images": np.uint8, "obs_index": np.int64,
                  "actions": np.float32, "rewards": np.float32, "terminated": np.bool_, "truncated": np.bool_,
                  "episode_starts": np.int64}  # fmt: skip
        for name, array in arrays.items():
            if array.dtype != dtypes[name]:
                raise ValueError(f"online array {name!r} has dtype {array.dtype}, expected {np.dtype(dtypes[name])}")
        states, actions, obs_index = arrays["states"], arrays["actions"], arrays["obs_index"]
        frames, n = len(states), len(actions)
        if states.ndim != 2 or actions.ndim != 2 or actions.shape[1] < 1:
            raise ValueError(f"states (F, S) and actions (N, A) expected, got {states.shape}, {actions.shape}")
        for name in ("privileged", "images"):
            if name in arrays and len(arrays[name]) != frames:
                raise ValueError(f"online array {name!r} has {len(arrays[name])} frames, states have {frames}")
        if "images" in arrays and (arrays["images"].ndim != 4 or arrays["images"].shape[3] != 3):
            raise ValueError(f"online images must be (F, H, W, 3), got {arrays['images'].shape}")
        for name in TRANSITION_ARRAYS:
            if arrays[name].shape[:1] != (n,) or (name != "actions" and arrays[name].ndim != 1):
                raise ValueError(f"online array {name!r} has shape {arrays[name].shape}, expected ({n}, ...)")
        starts = arrays["episode_starts"]
        if starts.ndim != 1 or (n and not len(starts)):
            raise ValueError("episode_starts must be a 1-D array, non-empty when there are transitions")
        if len(starts) and (starts[0] != 0 or np.any(np.diff(starts) < 1) or starts[-1] >= max(frames, 1)):
            raise ValueError("episode_starts must begin at frame 0 and increase strictly within the frames")
        # Each transition's next frame must exist and belong to its episode (never the first frame of another).
        if n and (obs_index.min() < 0 or obs_index.max() + 1 >= frames or np.isin(obs_index + 1, starts).any()):
            raise ValueError("obs_index points outside the frames or across an episode boundary")
        privileged = arrays.get("privileged")
        images = arrays.get("images")
        store = cls(
            states.shape[1],
            actions.shape[1],
            None if privileged is None else privileged.shape[1],
            None if images is None else (images.shape[1], images.shape[2], images.shape[3]),
            max(n, capacity, 1),
        )
        store._frames = {k: _grown(np.asarray(arrays[k]), max(frames, len(v))) for k, v in store._frames.items()}
        store._transitions = {k: _grown(np.asarray(arrays[k]), max(n, len(v))) for k, v in store._transitions.items()}
        store._episode_starts = [int(s) for s in starts]
        store._num_frames, store._size = frames, n
        return store


def _grown(array: NDArray[Any], rows: int) -> NDArray[Any]:
    """A new array of `rows` rows (>= len(array)) beginning with a copy of `array`."""
    out = np.empty((rows, *array.shape[1:]), array.dtype)
    out[: len(array)] = array
    return out

"""Episodes on disk: crash-safe per-episode shards while collecting, one Minari dataset at the end.

A dataset is a Minari dataset (HDF5 backend, lossless), readable by `minari.load_dataset` and so by Minari-aware
tools::

    <root>/<name>-v<N>/data/metadata.json    Minari's metadata, plus ours under "robot_rl" (see `DatasetInfo`)
    <root>/<name>-v<N>/data/main_data.hdf5   one group per episode, `episode_<i>`:
        observations/image       (T+1, H, W, 3) uint8, gzip level 4 (lossless; ~0.3 KB a 48x48 frame)
        observations/state       (T+1, 5) float32
        observations/privileged  (T+1, P) float32
        actions (T, A) float32, rewards (T,) float32, terminations (T,) bool, truncations (T,) bool
        attrs: id, seed, total_steps, and `EpisodeMeta`'s fields

Observations hold T+1 entries (the last is the final observation), so every frame is stored once and the next
observation of step t is entry t+1. While collecting, each finished episode is written atomically (temporary file,
fsync, rename) to `<root>/<name>-v<N>/shards/`; an interrupted collection keeps every finished episode and resumes.
Shards hold plain arrays and JSON text, loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
from numpy.typing import NDArray

IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
SHARD_DIR = "shards"
DATA_DIR = "data"
MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"


class DatasetError(ValueError):
    """A dataset, shard or recipe that is malformed; the message names the file, the episode and the problem."""


@dataclass(frozen=True)
class EpisodeMeta:
    """What is recorded about how an episode was made."""

    index: int
    """Position in the dataset (before failed episodes are dropped, if they are)."""
    seed: int
    """Seed of the env reset and of the policy's noise: the episode can be replayed from it."""
    skill: str
    initial_condition: str
    noise: float
    suboptimal_prob: float
    success: int
    """The skill's own success at the last step: 1, 0, or -1 when the skill has no goal (exploration)."""
    task_success: bool
    """The env's task success at the last step (what its reward reports)."""


@dataclass
class EpisodeRecord:
    """One episode's arrays (observations hold T+1 entries) and its metadata."""

    observations: dict[str, NDArray[Any]]
    actions: NDArray[np.float32]
    rewards: NDArray[np.float32]
    terminations: NDArray[np.bool_]
    truncations: NDArray[np.bool_]
    meta: EpisodeMeta

    @property
    def steps(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class DatasetInfo:
    """Our dataset-level metadata (stored under "robot_rl" in metadata.json)."""

    name: str
    kind: str
    """'prior' or 'task'."""
    env_id: str
    env_kwargs: dict[str, Any]
    env_spec: dict[str, Any]
    """The env's `spec_record()`: action names, scales and units, horizons, observation layout."""
    recipe: dict[str, Any]
    versions: dict[str, str]
    keep_failed: bool

    @property
    def action_names(self) -> list[str]:
        return list(self.env_spec["action_names"])

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        shape = self.env_spec.get("image_shape")
        return None if shape is None else tuple(shape)

    @property
    def scene(self) -> str:
        return str(self.env_spec["scene"])


# -- shards ----------------------------------------------------------------------------------------------------------
def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"episode_{index:07d}.npz"


def write_shard(shard_dir: Path, record: EpisodeRecord) -> Path:
    """Write one episode atomically: a reader sees the whole shard or none of it."""
    path = shard_path(shard_dir, record.meta.index)
    tmp = path.with_name(path.name + ".tmp")
    arrays: dict[str, Any] = {f"obs_{key}": value for key, value in record.observations.items()}
    arrays.update(
        actions=record.actions,
        rewards=record.rewards,
        terminations=record.terminations,
        truncations=record.truncations,
        meta=np.array(json.dumps(dataclasses.asdict(record.meta))),
    )
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_shard(path: Path) -> EpisodeRecord:
    try:
        with np.load(path, allow_pickle=False) as z:
            observations = {key[4:]: z[key] for key in z.files if key.startswith("obs_")}
            record = EpisodeRecord(
                observations=observations,
                actions=z["actions"],
                rewards=z["rewards"],
                terminations=z["terminations"],
                truncations=z["truncations"],
                meta=EpisodeMeta(**json.loads(str(z["meta"]))),
            )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: unreadable episode shard ({e}); delete it and rerun to collect it again") from e
    return record


def finished_indices(shard_dir: Path) -> set[int]:
    """Indices of the episodes whose shards are complete (temporary files of interrupted writes are ignored)."""
    if not shard_dir.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in shard_dir.glob("episode_*.npz")}


# -- Minari dataset --------------------------------------------------------------------------------------------------
def dataset_dir(root: Path, name: str, version: int) -> Path:
    """`root/<name>-v<version>`: as Minari's dataset ids, the version of the environment the data came from."""
    return root / f"{name}-v{version}"


def write_minari_dataset(
    folder: Path,
    records: Iterable[EpisodeRecord],
    observation_space: gym.spaces.Dict,
    action_space: gym.spaces.Box,
    env_spec: gym.envs.registration.EnvSpec | None,
    info: DatasetInfo,
) -> Path:
    """Write `records` (in order) as the Minari dataset `folder/data`, atomically: built in `data.tmp`, renamed.

    Returns the data folder. `MinariStorage.new` writes Minari's own metadata; the episodes are written here with
    h5py in Minari's layout so that the images can be compressed, which Minari's writer does not do.
    """
    from minari import __version__ as minari_version
    from minari.dataset.minari_storage import MinariStorage

    folder = folder.resolve()  # minari's get_size() joins paths wrongly for relative folders
    final, tmp = folder / DATA_DIR, folder / (DATA_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    storage = MinariStorage.new(
        tmp, observation_space, action_space, env_spec=env_spec, data_format="hdf5", jpeg_encoding=False
    )
    total_steps, total_episodes = 0, 0
    with h5py.File(tmp / MAIN_FILE, "a", track_order=True) as f:
        for i, record in enumerate(records):
            group = f.create_group(f"episode_{i}")
            group.attrs.update({"id": i, "total_steps": record.steps, **dataclasses.asdict(record.meta)})
            obs = group.create_group("observations")
            for key, value in record.observations.items():
                if key == "image":
                    # One chunk per episode (at most ~1 MB): h5py's own choice split frames and colour channels
                    # into 32 small chunks an episode, which tripled the time to read a dataset (measured).
                    frames = max(1, min(len(value), 2**20 // int(np.prod(value.shape[1:]))))
                    obs.create_dataset(key, data=value, chunks=(frames, *value.shape[1:]), **IMAGE_COMPRESSION)
                else:
                    obs.create_dataset(key, data=value)
            group.create_dataset("actions", data=record.actions)
            group.create_dataset("rewards", data=record.rewards)
            group.create_dataset("terminations", data=record.terminations)
            group.create_dataset("truncations", data=record.truncations)
            total_steps += record.steps
            total_episodes += 1
    storage.update_metadata(
        {
            "dataset_id": folder.name,
            "minari_version": minari_version,
            "total_episodes": total_episodes,
            "total_steps": total_steps,
            "dataset_size": storage.get_size(),
            "robot_rl": dataclasses.asdict(info),
        }
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_info(folder: Path) -> tuple[DatasetInfo, dict[str, Any]]:
    """Our metadata and Minari's (the whole metadata.json) of the dataset in `folder` (a `<name>-v<N>` folder)."""
    path = folder / DATA_DIR / METADATA_FILE
    if not path.is_file():
        raise DatasetError(f"{folder}: not a dataset (no {DATA_DIR}/{METADATA_FILE})")
    try:
        metadata = json.loads(path.read_text())
        info = DatasetInfo(**metadata["robot_rl"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: malformed metadata ({e!r})") from e
    return info, metadata


def iter_episodes(folder: Path, keys: Iterable[str] | None = None) -> Iterator[tuple[int, h5py.Group]]:
    """(index, HDF5 group) for each episode of the dataset in `folder`, in order."""
    path = folder / DATA_DIR / MAIN_FILE
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: cannot open the HDF5 file ({e}); it may be truncated or corrupt") from e
    with f:
        count = len(f.keys())
        for i in range(count):
            name = f"episode_{i}"
            if name not in f:
                raise DatasetError(f"{path}: episode {i} is missing (episodes must be numbered 0..{count - 1})")
            yield i, f[name]

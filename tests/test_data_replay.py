"""Tests of `robot_rl.data.replay`: loading a Minari dataset into flat arrays, sampling, the cache, pooling.

Every synthetic value encodes (episode, step), so a test can check that each sampled transition's observation,
next observation, action, reward and flags belong together and never cross an episode boundary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from numpy.typing import NDArray

from robot_rl.data import replay
from robot_rl.data.episodes import (
    DATA_DIR,
    MAIN_FILE,
    DatasetError,
    DatasetInfo,
    EpisodeMeta,
    EpisodeRecord,
    write_minari_dataset,
)
from robot_rl.data.replay import Batch, concatenate, load_dataset
from robot_rl.data.validate import validate_dataset

H, W = 6, 8
"""Image size of the synthetic datasets (not square, so that H and W cannot be swapped unnoticed)."""
A = 5
P = 3
ACTION_NAMES = ["vx", "vy", "vz", "yaw_rate", "gripper"]
STEPS = (3, 5, 1, 4)
"""Episode lengths of the default synthetic dataset (1 step: an episode whose only frame pair is its boundary)."""


# -- helpers -------------------------------------------------------------------------------------------------------
def make_record(
    e: int, steps: int, *, image: bool = True, privileged: bool = True, obs_len: int | None = None
) -> EpisodeRecord:
    """Episode `e` of `steps` steps; every value encodes (e, t). `obs_len` overrides the observations' length."""
    frames = steps + 1 if obs_len is None else obs_len
    t = np.arange(frames)
    obs: dict[str, NDArray[Any]] = {
        # state = (e, t, 0.5, -0.5, e * 100 + t)
        "state": np.stack(
            [np.full(frames, e), t, np.full(frames, 0.5), np.full(frames, -0.5), e * 100 + t], axis=1
        ).astype(np.float32)
    }
    if image:
        img = np.zeros((frames, H, W, 3), np.uint8)
        img[:, :, :, 0] = e
        img[:, :, :, 1] = t[:, None, None]
        img[:, 0, 0, 2] = 7
        obs["image"] = img
    if privileged:
        obs["privileged"] = np.stack([np.full(frames, e), t, -t], axis=1).astype(np.float32)
    st = np.arange(steps)
    actions = np.zeros((steps, A), np.float32)
    actions[:, 0] = e / 100
    actions[:, 1] = st / 100
    return EpisodeRecord(
        observations=obs,
        actions=actions,
        rewards=(e * 1000 + st).astype(np.float32),
        terminations=(st == steps - 1) & (e % 2 == 0),
        truncations=(st == steps - 1) & (e % 2 == 1),
        meta=EpisodeMeta(
            index=e, seed=e, skill="grasp", initial_condition="closed", noise=0.1, suboptimal_prob=0.0, success=1,
            task_success=bool(e % 2 == 0),
        ),
    )  # fmt: skip


def make_info(
    name: str,
    *,
    image_hw: tuple[int, int] | None = (H, W),
    state_size: int = 5,
    privileged: bool = True,
    action_names: list[str] | None = None,
) -> DatasetInfo:
    """Metadata as collection writes it (a complete env spec record), for the synthetic layout."""
    names = action_names or ACTION_NAMES
    return DatasetInfo(
        name=name,
        kind="prior",
        env_id="robot_rl/Drawer-v0",
        env_kwargs={},
        env_spec={
            "scene": "drawer",
            "action_names": names,
            "action_scales": [1.0] * len(names),
            "state_names": [f"s{i}" for i in range(state_size)],
            "privileged_names": [f"p{i}" for i in range(P)] if privileged else None,
            "image_shape": None if image_hw is None else [*image_hw, 3],
            "horizons": {"closed": 50},
        },
        recipe={},
        versions={"numpy": np.__version__},
        keep_failed=True,
    )


def write_dataset(
    root: Path,
    name: str,
    records: list[EpisodeRecord],
    *,
    image_hw: tuple[int, int] = (H, W),
    state_size: int = 5,
    action_names: list[str] | None = None,
) -> Path:
    """Write `records` as the Minari dataset `root/<name>-v0`; return that folder."""
    first = records[0].observations
    spaces: dict[str, gym.Space[Any]] = {"state": gym.spaces.Box(-np.inf, np.inf, (state_size,), np.float32)}
    if "image" in first:
        spaces["image"] = gym.spaces.Box(0, 255, (*image_hw, 3), np.uint8)
    if "privileged" in first:
        spaces["privileged"] = gym.spaces.Box(-np.inf, np.inf, (P,), np.float32)
    folder = root / f"{name}-v0"
    folder.mkdir(parents=True, exist_ok=True)
    write_minari_dataset(
        folder,
        records,
        gym.spaces.Dict(spaces),
        gym.spaces.Box(-1, 1, (A,), np.float32),
        None,
        make_info(
            name,
            image_hw=image_hw if "image" in first else None,
            state_size=state_size,
            privileged="privileged" in first,
            action_names=action_names,
        ),
    )
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """The default synthetic dataset: episodes of STEPS steps, image, state and privileged observations."""
    return write_dataset(tmp_path, "synthetic", [make_record(e, s) for e, s in enumerate(STEPS)])


def check_batch(batch: Batch, steps: tuple[int, ...], reward_of: float | None = None) -> None:
    """Every transition of `batch` is step t of episode e of the synthetic data and its next observation is t + 1."""
    e = batch.obs.state[:, 0].astype(int)
    t = batch.obs.state[:, 1].astype(int)
    last = t == np.asarray(steps)[e] - 1
    assert (t < np.asarray(steps)[e]).all()
    np.testing.assert_array_equal(batch.next_obs.state[:, 0], e)
    np.testing.assert_array_equal(batch.next_obs.state[:, 1], t + 1)
    np.testing.assert_array_equal(batch.obs.state[:, 4], e * 100 + t)
    np.testing.assert_array_equal(np.rint(batch.action[:, 0] * 100), e)
    np.testing.assert_array_equal(np.rint(batch.action[:, 1] * 100), t)
    np.testing.assert_array_equal(batch.reward, e * 1000 + t if reward_of is None else reward_of)
    np.testing.assert_array_equal(batch.terminated, last & (e % 2 == 0))
    np.testing.assert_array_equal(batch.truncated, last & (e % 2 == 1))
    assert batch.obs.image is not None and batch.next_obs.image is not None
    assert batch.obs.image.shape[1:] == (H, W, 3) and batch.obs.image.dtype == np.uint8
    np.testing.assert_array_equal(batch.obs.image[:, :, :, 0], np.broadcast_to(e[:, None, None], (len(e), H, W)))
    np.testing.assert_array_equal(batch.obs.image[:, :, :, 1], np.broadcast_to(t[:, None, None], (len(e), H, W)))
    np.testing.assert_array_equal(batch.next_obs.image[:, 3, 2, 1], t + 1)
    assert batch.obs.privileged is not None and batch.next_obs.privileged is not None
    np.testing.assert_array_equal(batch.obs.privileged[:, :2], np.stack([e, t], axis=1))
    np.testing.assert_array_equal(batch.next_obs.privileged[:, 2], -(t + 1))


# -- layout and sampling ------------------------------------------------------------------------------------------
def test_layout_stores_each_frame_once(dataset: Path) -> None:
    store = load_dataset(dataset, cache=False)
    n, e = sum(STEPS), len(STEPS)
    assert len(store) == n and store.num_episodes == e
    assert store.images is not None and store.images.shape == (n + e, H, W, 3)
    assert store.states.shape == (n + e, 5) and store.actions.shape == (n, A)
    np.testing.assert_array_equal(store.episodes.steps, STEPS)
    np.testing.assert_array_equal(store.episodes.first_frame, [0, 4, 10, 12])
    np.testing.assert_array_equal(store.episodes.first_transition, [0, 3, 8, 9])
    np.testing.assert_array_equal(store.episode, np.repeat(np.arange(e), STEPS))
    # The frame after each observation belongs to the same episode: next_obs never crosses a boundary.
    frame_episode = store.states[:, 0].astype(int)
    np.testing.assert_array_equal(frame_episode[store.obs_index], store.episode)
    np.testing.assert_array_equal(frame_episode[store.obs_index + 1], store.episode)
    assert store.info.name == "synthetic" and store.info.action_names == ACTION_NAMES
    arrays: list[NDArray[Any] | None] = [store.images, store.states, store.privileged, store.actions, store.rewards]
    assert store.nbytes >= sum(a.nbytes for a in arrays if a is not None)


def test_every_transition_lines_up(dataset: Path) -> None:
    store = load_dataset(dataset, cache=False)
    batch = store.sample_indices(np.arange(len(store)))
    check_batch(batch, STEPS)
    # Each transition appears once: all (episode, step) pairs are covered.
    pairs = {(int(e), int(t)) for e, t in batch.obs.state[:, :2]}
    assert pairs == {(e, t) for e, s in enumerate(STEPS) for t in range(s)}


def test_sample_is_uniform_random_and_lines_up(dataset: Path) -> None:
    store = load_dataset(dataset, cache=False)
    batch = store.sample(np.random.default_rng(0), 2000)
    assert batch.action.shape == (2000, A) and batch.reward.shape == (2000,) and batch.terminated.dtype == np.bool_
    check_batch(batch, STEPS)
    counts = np.bincount(store.episode[np.random.default_rng(0).integers(0, len(store), 2000)], minlength=4)
    np.testing.assert_allclose(counts / 2000, np.asarray(STEPS) / sum(STEPS), atol=0.05)
    again = store.sample(np.random.default_rng(0), 2000)
    np.testing.assert_array_equal(again.obs.state, batch.obs.state)


def test_keys_subset_leaves_others_none(dataset: Path) -> None:
    store = load_dataset(dataset, keys=("state",), cache=False)
    assert store.images is None and store.privileged is None
    batch = store.sample(np.random.default_rng(1), 16)
    assert batch.obs.image is None and batch.next_obs.privileged is None
    np.testing.assert_array_equal(batch.next_obs.state[:, 1], batch.obs.state[:, 1] + 1)
    with pytest.raises(ValueError, match="state"):
        load_dataset(dataset, keys=("image",))


def test_relabel_reward_leaves_the_data_untouched(dataset: Path) -> None:
    store = load_dataset(dataset, relabel_reward=0.0, cache=False)
    assert store.rewards.dtype == np.float32
    np.testing.assert_array_equal(store.rewards, np.zeros(len(store)))
    original = load_dataset(dataset, cache=False)
    check_batch(original.sample_indices(np.arange(len(original))), STEPS)
    # Relabelled after a cache hit too, and the cache keeps the stored rewards.
    load_dataset(dataset)
    cached = load_dataset(dataset, relabel_reward=0.0)
    assert isinstance(cached.images, np.memmap)
    check_batch(cached.sample_indices(np.arange(len(cached))), STEPS, reward_of=0.0)
    np.testing.assert_array_equal(load_dataset(dataset).rewards, original.rewards)


# -- cache ---------------------------------------------------------------------------------------------------------
def test_cache_hit_memory_maps_the_same_arrays(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset(dataset)
    manifest = json.loads((dataset / "cache" / "manifest.json").read_text())
    assert manifest["keys"] == ["image", "state", "privileged"]
    assert not list((dataset / "cache").glob("*.tmp"))

    def no_hdf5(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit must not read the HDF5 file")

    monkeypatch.setattr(replay, "iter_episodes", no_hdf5)
    second = load_dataset(dataset)
    assert isinstance(second.images, np.memmap) and isinstance(second.states, np.memmap)
    assert not second.images.flags.writeable
    for name in ("images", "states", "privileged", "actions", "rewards", "terminated", "truncated", "obs_index"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name), err_msg=name)
    batch = second.sample(np.random.default_rng(2), 64)
    check_batch(batch, STEPS)
    assert type(batch.obs.image) is np.ndarray and type(batch.next_obs.state) is np.ndarray  # not memmap views
    # A subset of the cached keys is served from the cache too.
    assert load_dataset(dataset, keys=("state",)).images is None


def test_stale_cache_is_rebuilt(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path, "stale", [make_record(e, s) for e, s in enumerate(STEPS)])
    assert len(load_dataset(folder)) == sum(STEPS)
    steps = (2, 2, 6)
    write_dataset(tmp_path, "stale", [make_record(e, s) for e, s in enumerate(steps)])
    store = load_dataset(folder)
    assert len(store) == sum(steps)
    check_batch(store.sample_indices(np.arange(len(store))), steps)
    again = load_dataset(folder)
    assert isinstance(again.images, np.memmap) and len(again) == sum(steps)


def test_cache_missing_a_key_is_rebuilt(dataset: Path) -> None:
    load_dataset(dataset, keys=("state",))
    assert not (dataset / "cache" / "images.npy").exists()
    store = load_dataset(dataset)
    assert isinstance(store.images, np.memmap)
    assert json.loads((dataset / "cache" / "manifest.json").read_text())["keys"] == ["image", "state", "privileged"]


def test_interrupted_cache_write_is_never_used(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(dataset)
    monkeypatch.undo()
    cache = dataset / "cache"
    assert not (cache / "manifest.json").exists() and not list(cache.glob("*.npy*"))
    store = load_dataset(dataset)
    check_batch(store.sample_indices(np.arange(len(store))), STEPS)
    # A corrupt manifest or a truncated array file means a rebuild, never a crash or wrong data.
    (cache / "manifest.json").write_text("{not json")
    check_batch(load_dataset(dataset).sample_indices(np.arange(sum(STEPS))), STEPS)
    (cache / "states.npy").write_bytes(b"")
    check_batch(load_dataset(dataset).sample_indices(np.arange(sum(STEPS))), STEPS)


# -- interoperability ----------------------------------------------------------------------------------------------
def test_minari_reads_the_same_episodes(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = load_dataset(dataset)  # leaves a cache/ folder next to data/, which Minari must ignore
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset.parent))
    ours = minari.load_dataset(dataset.name)
    assert ours.total_episodes == store.num_episodes and ours.total_steps == len(store)
    for e, episode in enumerate(ours.iterate_episodes()):
        f0, t0, steps = (int(x[e]) for x in store.episodes[:3])
        frames = slice(f0, f0 + steps + 1)
        assert store.images is not None and store.privileged is not None
        np.testing.assert_array_equal(episode.observations["image"], store.images[frames])
        np.testing.assert_array_equal(episode.observations["state"], store.states[frames])
        np.testing.assert_array_equal(episode.observations["privileged"], store.privileged[frames])
        np.testing.assert_array_equal(episode.actions, store.actions[t0 : t0 + steps])
        np.testing.assert_array_equal(episode.rewards, store.rewards[t0 : t0 + steps])
        np.testing.assert_array_equal(episode.terminations, store.terminated[t0 : t0 + steps])
        np.testing.assert_array_equal(episode.truncations, store.truncated[t0 : t0 + steps])


# -- errors --------------------------------------------------------------------------------------------------------
def test_missing_key_names_file_episode_and_key(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path, "noprivileged", [make_record(e, 2, privileged=False) for e in range(2)])
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: episode 0 has no observation 'privileged'"):
        load_dataset(folder, keys=("image", "state", "privileged"))
    assert not (folder / "cache" / "manifest.json").exists()
    assert load_dataset(folder).privileged is None  # by default, the keys the dataset has


def test_observation_length_must_be_steps_plus_one(tmp_path: Path) -> None:
    records = [make_record(0, 3), make_record(1, 3, obs_len=3)]
    folder = write_dataset(tmp_path, "short", records)
    with pytest.raises(DatasetError, match=r"main_data\.hdf5: episode 1: observation '\w+' holds 3 entries for 3"):
        load_dataset(folder)
    assert not list((folder / "cache").glob("*.npy*"))


def test_inconsistent_shapes_name_the_episode(tmp_path: Path) -> None:
    odd = make_record(1, 2)
    odd.observations["image"] = np.zeros((3, H + 1, W, 3), np.uint8)
    folder = write_dataset(tmp_path, "shapes", [make_record(0, 2), odd])
    with pytest.raises(DatasetError, match=r"episode 1: observation 'image' has frames of shape \(7, 8, 3\)"):
        load_dataset(folder)
    wide = make_record(2, 2)
    wide.actions = np.zeros((2, A + 1), np.float32)
    folder = write_dataset(tmp_path, "actions", [make_record(0, 2), make_record(1, 2), wide])
    with pytest.raises(DatasetError, match="episode 2: actions of shape"):
        load_dataset(folder)


@pytest.mark.parametrize("field", ["actions", "rewards", "state"])
def test_non_finite_values_name_the_episode(tmp_path: Path, field: str) -> None:
    records = [make_record(e, 3) for e in range(4)]
    bad = records[2]
    if field == "actions":
        bad.actions[1, 3] = np.nan
    elif field == "rewards":
        bad.rewards[2] = np.inf
    else:
        bad.observations["state"][3, 2] = -np.inf  # the final observation: a frame with no transition of its own
    folder = write_dataset(tmp_path, "nonfinite", records)
    name = "states" if field == "state" else field
    with pytest.raises(DatasetError, match=rf"main_data\.hdf5: non-finite values in {name} of episode\(s\) \[2\]"):
        load_dataset(folder)
    assert not (folder / "cache" / "manifest.json").exists()


def test_metadata_totals_must_match_the_episodes(dataset: Path) -> None:
    meta_path = dataset / DATA_DIR / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**metadata, "total_steps": 5}))
    with pytest.raises(DatasetError, match=r"episode 1: the episodes hold more steps than total_steps=5"):
        load_dataset(dataset, cache=False)
    meta_path.write_text(json.dumps(metadata))
    with h5py.File(dataset / DATA_DIR / MAIN_FILE, "a") as f:
        del f["episode_3"]
    with pytest.raises(DatasetError, match=r"3 episodes of 9 steps in all, metadata\.json says 4 episodes of 13"):
        load_dataset(dataset, cache=False)


# -- pooling -------------------------------------------------------------------------------------------------------
def test_concatenate_pools_episodes_in_order(tmp_path: Path) -> None:
    a = load_dataset(write_dataset(tmp_path, "a", [make_record(e, s) for e, s in enumerate(STEPS)]))
    b_steps = (2, 6)
    b = load_dataset(
        write_dataset(tmp_path, "b", [make_record(e, s) for e, s in enumerate(b_steps)]), relabel_reward=0.0
    )
    pooled = concatenate([a, b])
    assert len(pooled) == len(a) + len(b) and pooled.num_episodes == a.num_episodes + b.num_episodes
    assert [s.name for s in pooled.sources] == ["a", "b"] and pooled.info.name == "a"
    np.testing.assert_array_equal(pooled.episodes.source, [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(pooled.episodes.first_frame, [0, 4, 10, 12, 17, 20])
    check_batch(pooled.sample_indices(np.arange(len(a))), STEPS)
    tail = pooled.sample_indices(np.arange(len(a), len(pooled)))
    check_batch(tail, b_steps, reward_of=0.0)
    batch = pooled.sample(np.random.default_rng(3), 500)
    np.testing.assert_array_equal(batch.next_obs.state[:, :2], batch.obs.state[:, :2] + [0, 1])


def test_concatenate_refuses_mismatched_stores(tmp_path: Path) -> None:
    base = load_dataset(write_dataset(tmp_path, "base", [make_record(0, 2)]), cache=False)
    bigger = [make_record(0, 2)]
    bigger[0].observations["image"] = np.zeros((3, H, H, 3), np.uint8)
    other_image = load_dataset(write_dataset(tmp_path, "img", bigger, image_hw=(H, H)), cache=False)
    with pytest.raises(ValueError, match=r"image shape \(6, 6, 3\) vs \(6, 8, 3\)"):
        concatenate([base, other_image])
    renamed = load_dataset(
        write_dataset(tmp_path, "names", [make_record(0, 2)], action_names=["a", "b", "c", "d", "e"]), cache=False
    )
    with pytest.raises(ValueError, match="action names"):
        concatenate([base, renamed])
    no_priv = load_dataset(write_dataset(tmp_path, "nopriv", [make_record(0, 2)]), keys=("image", "state"))
    with pytest.raises(ValueError, match="privileged size"):
        concatenate([base, no_priv])


@pytest.mark.parametrize("problem", ["action_bounds", "boundary"])
def test_loading_checks_what_validation_checks(tmp_path: Path, problem: str) -> None:
    """The loader reads the file once and runs validation's array checks on what it read."""
    records = [make_record(e, 4) for e in range(3)]
    if problem == "action_bounds":
        records[1].actions[2, 0] = 1.5
        message = r"episode 1: actions outside \[-1, 1\] \(max \|a\| = 1.5\)"
    else:
        records[2].truncations[1] = True
        message = r"episode 2: episode boundary wrong: terminated/truncated at steps \[1, 3\]"
    folder = write_dataset(tmp_path, "invalid", records)
    with pytest.raises(DatasetError, match=message):
        validate_dataset(folder)
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder)
    assert not (folder / "cache" / "manifest.json").exists()

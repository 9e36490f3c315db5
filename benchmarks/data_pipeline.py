"""Data pipeline speed: loading a Minari dataset into a `TransitionStore` (first load and cached) and sampling.

Sections (each a function returning flat results, so that more can be added alongside):
- collection: the `drawer-closed-prior` and `pickplace-prior` recipes, `--collect-episodes` episodes each, with 1
  and 2 worker processes, timed end to end (worker start-up included) by `sim_envs.collect.collect`; transitions/s
  in all and per worker, and the bytes per transition of the real datasets written.
- load: a synthetic 100k-transition dataset (2000 episodes x 50 steps, 48x48 images of flat-colour rectangles
  drifting a pixel a step, which compress like real renders) written with `write_minari_dataset` to a temporary
  folder; `load_dataset` timed with the cache cold (reading the HDF5 file and writing the cache; the HDF5 file
  itself is in the OS page cache, as right after collection), without a cache, and from the cache.
- sampling: batch-256 `sample` times (median over calls) from a 1M-transition store built directly from arrays
  (20000 episodes x 50 steps, 48x48 images: ~7 GB of frames, in RAM or with `--frames-on-disk` in a memory-mapped
  temporary file) and from the cached 100k store of the load section (memory-mapped, as training uses it).

Single process; numpy and HDF5 run single-threaded here. Timings are medians over repeats: the development machine
is a shared 2-core box.

    python benchmarks/data_pipeline.py [--out FILE.json] [--repeats 3] [--calls 2000] [--frames-on-disk]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from robot_rl.data.episodes import DATA_DIR, MAIN_FILE, DatasetInfo, EpisodeMeta, EpisodeRecord, write_minari_dataset
from robot_rl.data.inspect import dataset_stats
from robot_rl.data.replay import TransitionStore, load_dataset

IMAGE_SIZE = 48
STATE_SIZE = 5
ACTION_NAMES = ["vx", "vy", "vz", "yaw_rate", "gripper"]
STEPS = 50
KEYS = ("image", "state")
"""What an image run loads (the synthetic data has no privileged state)."""
TARGETS = {
    "drawer_collect_transitions_per_s_per_worker_1w": ">= 250",
    "drawer_collect_transitions_per_s_per_worker_2w": ">= 250",
    "drawer_bytes_per_transition": "<= 7500",
    "pick_place_bytes_per_transition": "<= 7500",
    "load_100k_first_s": "< 5",
    "load_100k_cached_s": "< 1",
    "batch256_sample_ms": "< 1",
    "batch256_sample_ms_100k": "< 1",
}
"""The issue's targets; a metric without one is informative only."""


# -- synthetic data ------------------------------------------------------------------------------------------------
def synthetic_renders(rng: np.random.Generator, frames: int, size: int = IMAGE_SIZE) -> NDArray[np.uint8]:
    """(frames, size, size, 3) flat-colour rectangles on a flat background, some drifting a pixel a step.

    White noise would not compress at all and would make loading look slower than it is with real renders
    (gzip stores a 48x48 render in ~0.3 KB); flat colours and slow motion are what the renders look like.
    """
    images = np.empty((frames, size, size, 3), np.uint8)
    images[:] = rng.integers(0, 256, 3, dtype=np.uint8)  # (frames, S, S, 3): background
    ys = np.arange(size)[None, :, None]  # (1, S, 1)
    xs = np.arange(size)[None, None, :]  # (1, 1, S)
    t = np.arange(frames)
    for _ in range(4):
        h, w = rng.integers(4, size // 2, 2)
        vy, vx = rng.integers(-1, 2, 2)
        y0 = np.clip(rng.integers(0, size - h) + vy * t, 0, size - h)[:, None, None]  # (frames, 1, 1)
        x0 = np.clip(rng.integers(0, size - w) + vx * t, 0, size - w)[:, None, None]  # (frames, 1, 1)
        mask = (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)  # (frames, S, S)
        images[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
    return images


def synthetic_records(episodes: int, steps: int, seed: int = 0) -> Iterator[EpisodeRecord]:
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        yield EpisodeRecord(
            observations={
                "image": synthetic_renders(rng, steps + 1),
                "state": rng.standard_normal((steps + 1, STATE_SIZE)).astype(np.float32),
            },
            actions=rng.uniform(-1, 1, (steps, len(ACTION_NAMES))).astype(np.float32),
            rewards=np.zeros(steps, np.float32),
            terminations=np.zeros(steps, np.bool_),
            truncations=np.arange(steps) == steps - 1,
            meta=EpisodeMeta(e, e, "synthetic", "closed", 0.1, 0.0, -1, False),
        )


def write_synthetic_dataset(root: Path, episodes: int, steps: int) -> Path:
    """A Minari dataset of synthetic episodes in `root/synthetic-v0`; returns that folder."""
    folder = root / "synthetic-v0"
    folder.mkdir(parents=True)
    observation_space = gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
            "state": gym.spaces.Box(-np.inf, np.inf, (STATE_SIZE,), np.float32),
        }
    )
    info = DatasetInfo(
        name="synthetic",
        kind="prior",
        env_id="synthetic",
        env_kwargs={},
        env_spec={
            "scene": "synthetic",
            "action_names": ACTION_NAMES,
            "action_scales": [1.0] * len(ACTION_NAMES),
            "state_names": [f"s{i}" for i in range(STATE_SIZE)],
            "privileged_names": None,
            "image_shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
            "horizons": {"synthetic": STEPS},
        },
        recipe={},
        versions={"numpy": np.__version__},
        keep_failed=True,
    )
    action_space = gym.spaces.Box(-1, 1, (len(ACTION_NAMES),), np.float32)
    write_minari_dataset(folder, synthetic_records(episodes, steps), observation_space, action_space, None, info)
    return folder


def synthetic_store(transitions: int, steps: int, frames_dir: Path | None) -> TransitionStore:
    """A store of `transitions` built directly from arrays (no HDF5), frames in RAM or memory-mapped in a file.

    Frames repeat a block of distinct renders; every page is written, so sampling reads real memory (untouched
    pages of a fresh allocation would all map to one zero page and flatter the gather).
    """
    episodes = transitions // steps
    frames = transitions + episodes
    shape = (frames, IMAGE_SIZE, IMAGE_SIZE, 3)
    if frames_dir is None:
        images = np.empty(shape, np.uint8)
    else:
        images = np.lib.format.open_memmap(frames_dir / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(1)
    block = synthetic_renders(rng, 4096)  # (4096, S, S, 3)
    for start in range(0, frames, len(block)):
        stop = min(start + len(block), frames)
        images[start:stop] = block[: stop - start]
    info = DatasetInfo("synthetic_1m", "prior", "synthetic", {}, {"action_names": ACTION_NAMES}, {}, {}, True)
    return TransitionStore(
        images=images,
        states=rng.standard_normal((frames, STATE_SIZE), dtype=np.float32),
        actions=rng.uniform(-1, 1, (transitions, len(ACTION_NAMES))).astype(np.float32),
        rewards=np.zeros(transitions, np.float32),
        terminated=np.zeros(transitions, np.bool_),
        truncated=np.tile(np.arange(steps) == steps - 1, episodes),
        steps=np.full(episodes, steps),
        info=info,
    )


# -- sections ------------------------------------------------------------------------------------------------------
def median_sample_ms(store: TransitionStore, calls: int, batch_size: int = 256) -> float:
    """Median wall time of one `sample` call in ms (after a warm-up), over `calls` calls."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        store.sample(rng, batch_size)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        store.sample(rng, batch_size)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_load(root: Path, repeats: int, calls: int) -> dict[str, float]:
    """Load times of a synthetic 100k-transition dataset, its size on disk, and sampling from the cached store."""
    episodes = 100_000 // STEPS
    t0 = time.perf_counter()
    folder = write_synthetic_dataset(root, episodes, STEPS)
    write_s = time.perf_counter() - t0
    transitions = episodes * STEPS
    first, nocache, cached = [], [], []
    for _ in range(repeats):
        shutil.rmtree(folder / "cache", ignore_errors=True)
        t0 = time.perf_counter()
        load_dataset(folder, keys=KEYS)
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_dataset(folder, keys=KEYS, cache=False)
        nocache.append(time.perf_counter() - t0)
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        store = load_dataset(folder, keys=KEYS)
        cached.append(time.perf_counter() - t0)
    assert len(store) == transitions
    return {
        "load_transitions": transitions,
        "write_100k_s": round(write_s, 2),
        "load_100k_first_s": round(statistics.median(first), 3),
        "load_100k_nocache_s": round(statistics.median(nocache), 3),
        "load_100k_cached_s": round(statistics.median(cached), 4),
        "bytes_per_transition_synthetic": round((folder / DATA_DIR / MAIN_FILE).stat().st_size / transitions, 1),
        "store_bytes_per_transition_synthetic": round(store.nbytes / transitions, 1),
        "batch256_sample_ms_100k": round(median_sample_ms(store, calls), 4),
    }


def bench_sampling(root: Path, calls: int, frames_on_disk: bool) -> dict[str, float]:
    """Batch-256 sampling time from a 1M-transition store."""
    store = synthetic_store(1_000_000, STEPS, root if frames_on_disk else None)
    return {
        "sample_transitions": len(store),
        "sample_store_gb": round(store.nbytes / 1e9, 2),
        "batch256_sample_ms": round(median_sample_ms(store, calls), 4),
    }


def bench_collection(root: Path, episodes: int) -> dict[str, float]:
    """Collect real scripted data with 1 and 2 workers; throughput and on-disk size per transition."""
    import dataclasses

    from sim_envs.collect import collect, load_recipe

    recipes = {"drawer": "drawer-closed-prior.yaml", "pick_place": "pickplace-prior.yaml"}
    results: dict[str, float] = {"collect_episodes": episodes}
    for scene, file in recipes.items():
        recipe = load_recipe(Path(__file__).parents[1] / "datasets" / "recipes" / file)
        recipe = dataclasses.replace(recipe, episodes={"smoke": episodes, "small": episodes, "paper": episodes})
        for workers in (1, 2):
            result = collect(recipe, "smoke", root / f"{scene}_{workers}", workers=workers, progress=False)
            rate = result.transitions / result.seconds
            results[f"{scene}_collect_transitions_per_s_{workers}w"] = round(rate, 1)
            results[f"{scene}_collect_transitions_per_s_per_worker_{workers}w"] = round(rate / workers, 1)
        results[f"{scene}_bytes_per_transition"] = round(dataset_stats(result.folder).bytes_per_transition, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline.json"))
    parser.add_argument("--repeats", type=int, default=3, help="first (cache-cold) loads; cached loads: max(5, this)")
    parser.add_argument("--calls", type=int, default=2000, help="sample calls per store")
    parser.add_argument("--frames-on-disk", action="store_true", help="memory-map the 1M store's frames from a file")
    parser.add_argument("--collect-episodes", type=int, default=100, help="episodes per collection run")
    args = parser.parse_args()

    results: dict[str, float] = {"image_size": IMAGE_SIZE, "episode_steps": STEPS}
    with tempfile.TemporaryDirectory(prefix="data_pipeline_") as tmp:
        results.update(bench_collection(Path(tmp), args.collect_episodes))
    with tempfile.TemporaryDirectory(prefix="data_pipeline_") as tmp:
        results.update(bench_load(Path(tmp), args.repeats, args.calls))
    with tempfile.TemporaryDirectory(prefix="data_pipeline_") as tmp:
        results.update(bench_sampling(Path(tmp), args.calls, args.frames_on_disk))

    print(f"{'metric':<50} {'ours':>10} {'target':>10}")
    for key, value in results.items():
        target = TARGETS.get(key)
        print(f"{key:<50} {value:>10} {target or '':>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

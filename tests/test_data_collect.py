"""Collection, validation and inspection of scripted datasets, on real (tiny) collections."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from robot_rl.cli import main
from robot_rl.data.episodes import (
    DATA_DIR,
    MAIN_FILE,
    METADATA_FILE,
    SHARD_DIR,
    DatasetError,
    finished_indices,
    read_info,
)
from robot_rl.data.inspect import dataset_stats
from robot_rl.data.validate import check_compatible, validate_dataset
from sim_envs.collect import LOCK_FILE, RECIPE_FILE, SCALES, Recipe, _worker, collect, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "datasets" / "recipes"


def tiny(recipe: Recipe, episodes: int) -> Recipe:
    return dataclasses.replace(recipe, episodes=dict.fromkeys(SCALES, episodes))


def dataset_arrays(folder: Path) -> dict[str, np.ndarray | object]:
    """Every array and episode attribute of a dataset, keyed by its HDF5 path."""
    out: dict[str, np.ndarray | object] = {}
    with h5py.File(folder / DATA_DIR / MAIN_FILE, "r") as f:

        def visit(name: str, node: h5py.HLObject) -> None:
            if isinstance(node, h5py.Dataset):
                out[name] = node[()]
            for key, value in node.attrs.items():
                out[f"{name}@{key}"] = value

        f.visititems(visit)
    return out


def assert_same_dataset(a: Path, b: Path) -> None:
    arrays_a, arrays_b = dataset_arrays(a), dataset_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key, value in arrays_a.items():
        assert np.array_equal(np.asarray(value), np.asarray(arrays_b[key])), key


def partial_collection(root: Path, recipe: Recipe, episodes: list[int], record_recipe: bool = True) -> Path:
    """A collection interrupted part-way: the shards of `episodes` (and the recipe they came from) on disk under
    `root`, as `collect` leaves them. Returns the shard folder."""
    shard_dir = recipe.dataset_folder(root, "smoke") / SHARD_DIR
    shard_dir.mkdir(parents=True)
    if record_recipe:
        (shard_dir / RECIPE_FILE).write_text(json.dumps(json.loads(json.dumps(recipe.to_dict()))))

    class Sink:
        def put(self, _: int) -> None:
            pass

    _worker(recipe, episodes, shard_dir, Sink())
    return shard_dir


@pytest.fixture(scope="module")
def prior_recipe() -> Recipe:
    return tiny(load_recipe(RECIPES / "drawer-closed-prior.yaml"), 5)


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory, prior_recipe: Recipe) -> Path:
    root = tmp_path_factory.mktemp("one_worker")
    return collect(prior_recipe, "smoke", root, workers=1, progress=False).folder


def test_every_shipped_recipe_loads() -> None:
    recipes = sorted(RECIPES.glob("*.yaml"))
    names = {load_recipe(path).name for path in recipes}
    # each task's prior and task data; corrective, two push-back priors, the chained and the stuck-opening
    # blocked-by-object priors, two pick-place retry priors
    assert len(names) == len(recipes) == 15
    assert {path.stem for path in recipes} == names  # a recipe's file is named after it (experiments find it so)
    kinds = {(load_recipe(p).task, load_recipe(p).kind) for p in recipes}
    for task in ("closed_drawer", "blocked_drawer", "blocked_by_object_drawer", "pick_place"):
        assert {(task, "prior"), (task, "task")} <= kinds


def test_collection_is_the_same_whatever_the_number_of_workers(
    tmp_path: Path, prior_recipe: Recipe, collected: Path
) -> None:
    two = collect(prior_recipe, "smoke", tmp_path, workers=2, progress=False)
    assert two.episodes == 5
    assert_same_dataset(collected, two.folder)


def test_collected_dataset_holds_what_the_recipe_says(collected: Path, prior_recipe: Recipe) -> None:
    report = validate_dataset(collected)
    info, metadata = read_info(collected)
    assert report.episodes == metadata["total_episodes"] == 5
    assert info.kind == "prior" and info.recipe["name"] == prior_recipe.name
    assert info.action_names == ["dx", "dy", "dz", "dyaw", "gripper"]
    assert info.image_shape == (48, 48, 3)
    assert info.versions["pybullet"] != "not installed"
    assert not (collected / SHARD_DIR).exists()  # shards are removed once the dataset is written and valid
    mixture = {(m.skill, m.initial_condition) for m in prior_recipe.mixture}
    with h5py.File(collected / DATA_DIR / MAIN_FILE, "r") as f:
        for i in range(5):
            attrs = f[f"episode_{i}"].attrs
            assert (attrs["skill"], attrs["initial_condition"]) in mixture
            assert attrs["noise"] == pytest.approx(0.1)


def test_an_interrupted_collection_keeps_its_episodes_and_resumes(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) part-way: finished episodes stay on disk; the same command then completes the dataset."""
    # The interruption comes at the first finished episode and must land before the last: 20 leave it a wide window.
    episodes = 20
    recipe_path = tmp_path / "recipe.yaml"
    raw = yaml.safe_load((RECIPES / "drawer-closed-prior.yaml").read_text())
    raw["episodes"] = dict.fromkeys(SCALES, episodes)
    recipe_path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "robot_rl", "collect", str(recipe_path), "--scale", "smoke"]
    command += ["--root", str(tmp_path), "--workers", "1", "--no-progress"]
    folder = tmp_path / "drawer-closed-prior-smoke-v1"
    # SIGINT back to its default in the child: a test run started in the background by a non-interactive shell
    # inherits it ignored (and so would the collection, which then ran to the end).
    process = subprocess.Popen(
        command,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not finished_indices(folder / SHARD_DIR) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=30)
    kept = finished_indices(folder / SHARD_DIR)
    assert not (folder / DATA_DIR).exists(), "the collection finished before the interruption reached it"
    assert process.returncode != 0
    assert 1 <= len(kept) < episodes, "the interruption should land mid-collection"

    subprocess.run(command, check=True, capture_output=True, timeout=120)
    recipe = tiny(load_recipe(RECIPES / "drawer-closed-prior.yaml"), episodes)
    assert_same_dataset(collect(recipe, "smoke", tmp_path / "uninterrupted", workers=1, progress=False).folder, folder)


def test_collecting_a_finished_dataset_again_keeps_it(tmp_path: Path, prior_recipe: Recipe) -> None:
    first = collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False)
    data = first.folder / DATA_DIR / MAIN_FILE
    before = (data.stat().st_mtime_ns, data.read_bytes())
    again = collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False)
    assert (again.collected_now, again.episodes, again.transitions) == (0, first.episodes, first.transitions)
    assert (data.stat().st_mtime_ns, data.read_bytes()) == before
    # Another scale's count (a scale added or resized later) does not change this scale's data: still kept.
    other_scales = dataclasses.replace(prior_recipe, episodes={**prior_recipe.episodes, "paper": 12345})
    assert collect(other_scales, "smoke", tmp_path, workers=1, progress=False).collected_now == 0
    fewer = dataclasses.replace(prior_recipe, episodes={**prior_recipe.episodes, "smoke": 2})
    with pytest.raises(DatasetError, match=r"another recipe \(it differs in episodes\)"):
        collect(fewer, "smoke", tmp_path, workers=1, progress=False)
    assert (data.stat().st_mtime_ns, data.read_bytes()) == before


def test_a_dataset_recorded_before_a_mixture_field_existed_is_kept(tmp_path: Path, prior_recipe: Recipe) -> None:
    """Fields added to mixture entries since (approach_error, backoff_push) read as their defaults in an older
    recorded recipe; set to anything else, the recipe differs."""
    folder = collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False).folder
    metadata = folder / DATA_DIR / METADATA_FILE
    raw = json.loads(metadata.read_text())
    for entry in raw["robot_rl"]["recipe"]["mixture"]:
        del entry["approach_error"], entry["backoff_push"]
    metadata.write_text(json.dumps(raw))
    assert collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False).collected_now == 0
    grasps = tuple(
        dataclasses.replace(e, approach_error=0.02) if e.skill == "grasp_from_drawer" else e
        for e in prior_recipe.mixture
    )
    with pytest.raises(DatasetError, match=r"another recipe \(it differs in mixture\)"):
        collect(dataclasses.replace(prior_recipe, mixture=grasps), "smoke", tmp_path, workers=1, progress=False)


def test_another_recipe_never_overwrites_or_joins_collected_episodes(tmp_path: Path, prior_recipe: Recipe) -> None:
    folder = collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False).folder
    data = folder / DATA_DIR / MAIN_FILE
    before = data.read_bytes()
    changed = dataclasses.replace(prior_recipe, noise=0.2)
    with pytest.raises(DatasetError, match=r"finished dataset collected from another recipe \(it differs in noise\)"):
        collect(changed, "smoke", tmp_path, workers=1, progress=False)
    assert data.read_bytes() == before

    # Part-way through a collection (shards on disk), a changed recipe is refused too, and the shards stay.
    root = tmp_path / "partial"
    shard_dir = partial_collection(root, prior_recipe, [0, 1])
    with pytest.raises(DatasetError, match=r"holds episodes collected from another recipe \(it differs in noise\)"):
        collect(changed, "smoke", root, workers=1, progress=False)
    assert finished_indices(shard_dir) == {0, 1}
    recorded = (shard_dir / RECIPE_FILE).read_text()
    (shard_dir / RECIPE_FILE).write_text(recorded[: len(recorded) // 2])  # cut short: refused by name, kept
    with pytest.raises(DatasetError, match=f"{RECIPE_FILE}: cannot read the recipe these shards came from"):
        collect(prior_recipe, "smoke", root, workers=1, progress=False)
    assert finished_indices(shard_dir) == {0, 1}
    (shard_dir / RECIPE_FILE).write_text(recorded)
    assert collect(prior_recipe, "smoke", root, workers=1, progress=False).collected_now == 3


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_second_collection_into_the_same_folder_is_refused_and_the_first_keeps_its_shards(
    tmp_path: Path, prior_recipe: Recipe
) -> None:
    import fcntl

    shard_dir = partial_collection(tmp_path, prior_recipe, [0, 1])
    before = {p.name: p.read_bytes() for p in shard_dir.glob("episode_*.npz")}
    with open(shard_dir / LOCK_FILE, "w") as held:  # as the first collection's process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DatasetError, match="another process is collecting into it"):
            collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False)
        assert {p.name: p.read_bytes() for p in shard_dir.glob("episode_*.npz")} == before
    result = collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False)  # the lock is free again
    assert (result.collected_now, result.episodes) == (3, 5)
    assert not shard_dir.exists()


def test_resume_skips_finished_shards_and_drops_partial_writes(tmp_path: Path, prior_recipe: Recipe) -> None:
    shard_dir = partial_collection(tmp_path, prior_recipe, [0, 3], record_recipe=False)
    (shard_dir / "episode_0000001.npz.tmp").write_bytes(b"half a shard")  # a write cut off mid-way
    result = collect(prior_recipe, "smoke", tmp_path, workers=1, progress=False)
    assert result.collected_now == 3
    assert result.episodes == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scene": "kitchen"}, "unknown scene 'kitchen'"),
        ({"mixture": [{"skill": "juggle", "initial_condition": "closed", "weight": 1.0}]}, "unknown skill 'juggle'"),
        (
            {"mixture": [{"skill": "open_bottom_drawer", "initial_condition": "upside_down", "weight": 1.0}]},
            "unknown initial condition 'upside_down'",
        ),
        ({"mixture": [{"skill": "place_in_tray", "initial_condition": "closed", "weight": 1.0}]}, "belongs to scene"),
        ({"episodes": {"smoke": 1, "small": 0, "medium": 1, "paper": 1}}, "positive count"),
        ({"episodes": {"smoke": 1, "small": 1, "paper": 1}}, "missing: medium"),
        ({"flavour": "mint"}, "unknown recipe keys"),
        ({"kind": "both"}, "kind must be one of"),
        ({"env_kwargs": {"tcp_floor": 0.015}}, r"may not set \['tcp_floor'\].*robot_rl/Drawer-v1"),
        (
            {
                "mixture": [
                    {"skill": "open_bottom_drawer", "initial_condition": "closed", "weight": 1, "approach_error": 0.02}
                ]
            },
            "approach_error is for the grasps",
        ),
        (
            {
                "mixture": [
                    {"skill": "grasp_from_drawer", "initial_condition": "open", "weight": 1, "approach_error": -0.01}
                ]
            },
            "approach_error must be 0-0.05 m",
        ),
        (
            {
                "mixture": [
                    {"skill": "grasp_from_drawer", "initial_condition": "open", "weight": 1, "approach_error": ".nan"}
                ]
            },
            "approach_error must be 0-0.05 m",
        ),
        (
            {
                "mixture": [
                    {"skill": "grasp_from_drawer", "initial_condition": "open", "weight": 1, "backoff_push": 0.03}
                ]
            },
            "backoff_push is for open_bottom_drawer",
        ),
        (
            {
                "mixture": [
                    {"skill": "open_bottom_drawer", "initial_condition": "closed", "weight": 1, "backoff_push": 0.1}
                ]
            },
            "backoff_push must be 0-0.08 m",
        ),
        (
            {
                "mixture": [
                    {"skill": "open_bottom_drawer", "initial_condition": "ajar", "weight": 1, "backoff_push": True}
                ]
            },
            "backoff_push must be 0-0.08 m",
        ),
        (
            {"mixture": [{"skill": "open_bottom_drawer", "initial_condition": "closed", "weight": 1, "retries": 1}]},
            "retries and first_miss are for the grasps",
        ),
        (
            {"mixture": [{"skill": "grasp_from_drawer", "initial_condition": "open", "weight": 1, "retries": 1.5}]},
            "retries must be an integer 0-5",
        ),
        (
            {"mixture": [{"skill": "grasp_from_drawer", "initial_condition": "open", "weight": 1, "first_miss": 0.04}]},
            "first_miss needs retries >= 1",
        ),
        (
            {
                "mixture": [
                    {
                        "skill": "grasp_from_drawer",
                        "initial_condition": "open",
                        "weight": 1,
                        "retries": 1,
                        "first_miss": 0.2,
                    }
                ]
            },
            "first_miss must be 0-0.08 m",
        ),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(tmp_path: Path, change: dict[str, object], message: str) -> None:
    raw = yaml.safe_load((RECIPES / "drawer-closed-prior.yaml").read_text())
    raw.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DatasetError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


def test_a_truncated_file_is_reported_and_nothing_else_is_touched(tmp_path: Path, collected: Path) -> None:
    copy = tmp_path / collected.name
    shutil.copytree(collected, copy)
    main_file = copy / DATA_DIR / MAIN_FILE
    size = main_file.stat().st_size
    with open(main_file, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        validate_dataset(copy)
    assert (copy / DATA_DIR / "metadata.json").read_text() == (collected / DATA_DIR / "metadata.json").read_text()


def test_nan_actions_are_reported_with_their_episode(tmp_path: Path, collected: Path) -> None:
    copy = tmp_path / collected.name
    shutil.copytree(collected, copy)
    with h5py.File(copy / DATA_DIR / MAIN_FILE, "r+") as f:
        f["episode_3/actions"][7, 2] = np.nan
    with pytest.raises(DatasetError, match="episode 3: actions contain NaN"):
        validate_dataset(copy)


def test_broken_episode_boundaries_and_shapes_are_reported(tmp_path: Path, collected: Path) -> None:
    copy = tmp_path / collected.name
    shutil.copytree(collected, copy)
    with h5py.File(copy / DATA_DIR / MAIN_FILE, "r+") as f:
        f["episode_1/truncations"][10] = True
        del f["episode_2/observations/state"]
        f["episode_2/observations"].create_dataset("state", data=np.zeros((3, 5), np.float32))
    with pytest.raises(DatasetError) as error:
        validate_dataset(copy)
    assert "episode 1: episode boundary wrong" in str(error.value)
    assert "episode 2: observations/state has shape (3, 5)" in str(error.value)


def test_datasets_that_differ_cannot_be_combined(tmp_path: Path, collected: Path) -> None:
    pick = collect(tiny(load_recipe(RECIPES / "pickplace-task.yaml"), 2), "smoke", tmp_path, 1, False).folder
    big = dataclasses.replace(tiny(load_recipe(RECIPES / "drawer-closed-task.yaml"), 2), env_kwargs={"image_size": 64})
    big_images = collect(big, "smoke", tmp_path / "big", 1, False).folder  # same name, another recipe: own root
    infos = [read_info(p)[0] for p in (collected, pick, big_images)]
    check_compatible([infos[0], infos[0]], [collected, collected])
    with pytest.raises(DatasetError, match="scene differ"):
        check_compatible([infos[0], infos[1]], [collected, pick])
    with pytest.raises(DatasetError, match="image shape differ"):
        check_compatible([infos[0], infos[2]], [collected, big_images])
    older = dataclasses.replace(infos[0], env_id="robot_rl/Drawer-v0")  # the same scene before its fingertip floor
    with pytest.raises(DatasetError, match="environment differ"):
        check_compatible([infos[0], older], [collected, collected])


def test_stats_and_inspect_command(tmp_path: Path, collected: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = dataset_stats(collected)
    assert stats.episodes == 5 and stats.transitions == sum(s.mean_steps * s.episodes for s in stats.per_skill.values())
    assert 0 < stats.bytes_per_transition < 7500
    assert all(-1.0 <= lo <= hi <= 1.0 for lo, hi in zip(stats.action_min, stats.action_max, strict=True))
    main(["inspect", str(collected), "--out", str(tmp_path / "inspect")])
    printed = capsys.readouterr().out
    assert "5 episodes" in printed and "bytes per transition" in printed
    for name in ("stats.json", "frames.png", "episodes.mp4"):
        assert (tmp_path / "inspect" / name).stat().st_size > 0
    main(["inspect", str(collected), "--check"])
    assert "valid" in capsys.readouterr().out


def test_inspect_check_exits_2_with_the_problem_on_stderr(
    tmp_path: Path, collected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / collected.name
    shutil.copytree(collected, copy)
    with h5py.File(copy / DATA_DIR / MAIN_FILE, "r+") as f:
        f["episode_0/rewards"][0] = np.inf
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(copy), "--check"])
    assert exit_info.value.code == 2
    assert "episode 0: rewards contain NaN or inf" in capsys.readouterr().err

"""Scripted data collection: recipes (YAML) -> episodes in worker processes -> a Minari dataset.

A recipe names a scene, a mixture of (skill, initial condition, suboptimal fraction) entries with weights, the
action noise, a seed and the number of episodes at each scale. Episode i draws its seed from the recipe's seed and
i alone (`numpy.random.SeedSequence`), and from that seed its mixture entry, env reset and policy noise; an episode
also never depends on what its worker ran before (the env rebuilds its world at reset). So the dataset is the same
whatever the number of workers. Each finished episode is written atomically as a shard; a rerun skips the shards
already there, so an interrupted collection resumes and loses at most the episodes in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from tqdm import tqdm

from robot_rl.data.episodes import (
    DATA_DIR,
    METADATA_FILE,
    SHARD_DIR,
    DatasetError,
    DatasetInfo,
    EpisodeMeta,
    EpisodeRecord,
    dataset_dir,
    finished_indices,
    read_info,
    read_shard,
    shard_path,
    write_minari_dataset,
    write_shard,
)
from sim_envs import ENV_IDS, env_version
from sim_envs.env import ManipulationEnv
from sim_envs.skills import GRASPS, MAX_RETRIES, SKILLS, ScriptedPolicy, make_skill

RECIPE_FILE = "recipe.json"
"""The recipe of a collection in progress, kept with its shards so that a resume cannot mix two recipes."""

SCALES = ("smoke", "small", "medium", "paper")
KINDS = ("prior", "task")


@dataclass(frozen=True)
class MixtureEntry:
    """One component of a recipe's behaviour mixture."""

    skill: str
    initial_condition: str
    weight: float
    suboptimal_prob: float = 0.0
    approach_error: float = 0.0
    """Metres; for the grasps (`sim_envs.skills.GRASPS`): descend beside the object, then correct (see `_Grasp`)."""
    backoff_push: float = 0.0
    """Metres; for `open_bottom_drawer`: push the drawer back in this far (half to all of it) before backing off
    (see `OpenBottomDrawer`)."""
    retries: int = 0
    """For the grasps: reopen and try again after lifting an empty gripper, up to this many times (see `_Grasp`)."""
    first_miss: float = 0.0
    """Metres; for the grasps, with retries: the first attempt closes this far (half to all of it) beside the object."""


@dataclass(frozen=True)
class Recipe:
    """A dataset recipe: what to collect, in what proportions, how much at each scale."""

    name: str
    kind: str
    """'prior' (task-agnostic behaviour, rewards ignored when mixed in) or 'task' (the task's sparse reward)."""
    task: str
    """The COG task this data serves (e.g. closed_drawer), for people and reports."""
    scene: str
    mixture: tuple[MixtureEntry, ...]
    episodes: dict[str, int]
    """Episodes at each scale: smoke (seconds, tests), small (minutes, the demo), medium (5x small), paper (COG's
    scale)."""
    seed: int = 0
    noise: float = 0.1
    keep_failed: bool = True
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def dataset_name(self, scale: str) -> str:
        return f"{self.name}-{scale}"

    def dataset_folder(self, root: Path, scale: str) -> Path:
        """`root/<name>-<scale>-v<N>`, N the version of the scene's current environment (`sim_envs.ENV_IDS`)."""
        return dataset_dir(root, self.dataset_name(scale), env_version(self.scene))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe; every problem is reported with the file and the offending entry."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read recipe ({e})") from e
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(raw) - fields
    if unknown:
        raise DatasetError(f"{path}: unknown recipe keys {sorted(unknown)}; known: {sorted(fields)}")
    try:
        mixture = tuple(MixtureEntry(**entry) for entry in raw.pop("mixture"))
        recipe = Recipe(mixture=mixture, **raw)
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{path}: malformed recipe ({e})") from e
    check_recipe(recipe, str(path))
    return recipe


MAX_APPROACH_ERROR = 0.05
"""A grasp aimed further beside the object than this is not a grasp."""
MAX_BACKOFF_PUSH = 0.08
"""The push a back-off may make: at 0.06 the drawer goes 1.6-4.7 cm back in; much more would shut it."""
MAX_FIRST_MISS = 0.08
"""A deliberate miss further than this from the object is not near it (the learnt pick-place policies' misses close
2.7-6.8 cm away)."""

PHYSICS_KWARGS = {"arm", "tcp_floor"}
"""`ManipulationEnv` arguments a recipe may not set: data collected with them is not the env its version names."""


def check_recipe(recipe: Recipe, where: str) -> None:
    if recipe.scene not in ENV_IDS:
        raise DatasetError(f"{where}: unknown scene {recipe.scene!r}; choose from {sorted(ENV_IDS)}")
    if recipe.kind not in KINDS:
        raise DatasetError(f"{where}: kind must be one of {KINDS}, got {recipe.kind!r}")
    if not recipe.mixture:
        raise DatasetError(f"{where}: the mixture is empty")
    conditions = ManipulationEnv.conditions_of(recipe.scene)
    for i, entry in enumerate(recipe.mixture):
        if entry.skill not in SKILLS:
            raise DatasetError(f"{where}: mixture[{i}]: unknown skill {entry.skill!r}; choose from {sorted(SKILLS)}")
        if entry.skill != "random_exploration" and SKILLS[entry.skill].scene != recipe.scene:
            raise DatasetError(
                f"{where}: mixture[{i}]: skill {entry.skill!r} belongs to scene {SKILLS[entry.skill].scene!r}"
            )
        if entry.initial_condition not in conditions:
            raise DatasetError(
                f"{where}: mixture[{i}]: unknown initial condition {entry.initial_condition!r} for scene "
                f"{recipe.scene!r}; choose from {conditions}"
            )
        if not (entry.weight > 0 and math.isfinite(entry.weight)) or not 0 <= entry.suboptimal_prob <= 1:
            raise DatasetError(f"{where}: mixture[{i}]: need weight > 0 and 0 <= suboptimal_prob <= 1")
        error = entry.approach_error
        if isinstance(error, bool) or not isinstance(error, (int, float)) or not 0 <= error <= MAX_APPROACH_ERROR:
            raise DatasetError(f"{where}: mixture[{i}]: approach_error must be 0-{MAX_APPROACH_ERROR} m, got {error!r}")
        if error > 0 and entry.skill not in GRASPS:
            raise DatasetError(f"{where}: mixture[{i}]: approach_error is for the grasps {GRASPS}, not {entry.skill!r}")
        push = entry.backoff_push
        if isinstance(push, bool) or not isinstance(push, (int, float)) or not 0 <= push <= MAX_BACKOFF_PUSH:
            raise DatasetError(f"{where}: mixture[{i}]: backoff_push must be 0-{MAX_BACKOFF_PUSH} m, got {push!r}")
        if push > 0 and entry.skill != "open_bottom_drawer":
            raise DatasetError(f"{where}: mixture[{i}]: backoff_push is for open_bottom_drawer, not {entry.skill!r}")
        retries, miss = entry.retries, entry.first_miss
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise DatasetError(f"{where}: mixture[{i}]: retries must be an integer 0-{MAX_RETRIES}, got {retries!r}")
        if isinstance(miss, bool) or not isinstance(miss, (int, float)) or not 0 <= miss <= MAX_FIRST_MISS:
            raise DatasetError(f"{where}: mixture[{i}]: first_miss must be 0-{MAX_FIRST_MISS} m, got {miss!r}")
        if (retries or miss) and entry.skill not in GRASPS:
            raise DatasetError(
                f"{where}: mixture[{i}]: retries and first_miss are for the grasps {GRASPS}, not {entry.skill!r}"
            )
        if miss > 0 and (retries < 1 or error > 0):
            raise DatasetError(f"{where}: mixture[{i}]: first_miss needs retries >= 1 and no approach_error")
    missing = [scale for scale in SCALES if scale not in recipe.episodes]
    if missing or any(not isinstance(n, int) or n < 1 for n in recipe.episodes.values()):
        lacking = f" (missing: {', '.join(missing)})" if missing else ""
        raise DatasetError(f"{where}: episodes must give a positive count for each of {SCALES}{lacking}")
    if recipe.noise < 0:
        raise DatasetError(f"{where}: noise must be >= 0")
    physics = sorted(set(recipe.env_kwargs) & PHYSICS_KWARGS)
    if physics:
        raise DatasetError(
            f"{where}: env_kwargs may not set {physics}: they change the physics that the dataset's version "
            f"({ENV_IDS[recipe.scene]}) names"
        )


def episode_seed(recipe_seed: int, index: int) -> int:
    """Seed of episode `index`: a function of the recipe's seed and the index alone."""
    return int(np.random.SeedSequence(recipe_seed, spawn_key=(index,)).generate_state(1)[0])


def make_env(recipe: Recipe) -> ManipulationEnv:
    return ManipulationEnv(recipe.scene, privileged_state=True, **recipe.env_kwargs)


def collect_episode(env: ManipulationEnv, recipe: Recipe, index: int) -> EpisodeRecord:
    """Run episode `index` of `recipe` in `env` and return its arrays (observations T+1) and metadata."""
    seed = episode_seed(recipe.seed, index)
    rng = np.random.default_rng(seed)
    weights = np.array([e.weight for e in recipe.mixture])
    entry = recipe.mixture[int(rng.choice(len(weights), p=weights / weights.sum()))]
    skill = make_skill(entry.skill, rng, entry.approach_error, entry.backoff_push, entry.retries, entry.first_miss)
    policy = ScriptedPolicy(skill, rng, noise=recipe.noise, suboptimal_prob=entry.suboptimal_prob)
    obs, info = env.reset(seed=seed, options={"initial_condition": entry.initial_condition})
    observations: dict[str, list[Any]] = {key: [value] for key, value in obs.items()}
    actions, rewards, terminations, truncations = [], [], [], []
    done = False
    while not done:
        action = policy(env.scene_state())
        obs, reward, terminated, truncated, info = env.step(action)
        for key, value in obs.items():
            observations[key].append(value)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        done = terminated or truncated
    success = skill.succeeded(env.scene_state()) if skill.has_goal else None
    return EpisodeRecord(
        observations={key: np.stack(values) for key, values in observations.items()},
        actions=np.stack(actions).astype(np.float32),
        rewards=np.array(rewards, dtype=np.float32),
        terminations=np.array(terminations, dtype=bool),
        truncations=np.array(truncations, dtype=bool),
        meta=EpisodeMeta(
            index=index,
            seed=seed,
            skill=entry.skill,
            initial_condition=entry.initial_condition,
            noise=recipe.noise,
            suboptimal_prob=entry.suboptimal_prob,
            success=-1 if success is None else int(success),
            task_success=bool(info["success"]),
        ),
    )


def _worker(recipe: Recipe, indices: list[int], shard_dir: Path, progress: Any) -> int:
    """Collect the given episodes into shards, reporting each one's length on `progress`; returns transitions."""
    env = make_env(recipe)
    transitions = 0
    try:
        for index in indices:
            record = collect_episode(env, recipe, index)
            write_shard(shard_dir, record)
            transitions += record.steps
            progress.put(record.steps)
    finally:
        env.close()
    return transitions


@dataclass
class CollectionResult:
    folder: Path
    episodes: int
    transitions: int
    collected_now: int
    """Episodes collected by this call (the rest were already there from an earlier, interrupted run)."""
    seconds: float


def collect(
    recipe: Recipe,
    scale: str,
    root: Path,
    workers: int | None = None,
    progress: bool = True,
) -> CollectionResult:
    """Collect `recipe` at `scale` into `recipe.dataset_folder(root, scale)` (resuming from its shards), then write the
    dataset."""
    if scale not in SCALES:
        raise DatasetError(f"unknown scale {scale!r}; choose from {SCALES}")
    total = recipe.episodes[scale]
    name = recipe.dataset_name(scale)
    folder = recipe.dataset_folder(root, scale)
    shard_dir = folder / SHARD_DIR
    wanted = json.loads(json.dumps(recipe.to_dict()))  # as JSON keeps it, to compare with what was recorded
    if (folder / DATA_DIR / METADATA_FILE).is_file() and not shard_dir.exists():
        return _finished(folder, wanted, scale)
    shard_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(shard_dir):
        finished = (folder / DATA_DIR / METADATA_FILE).is_file()
        if finished and not finished_indices(shard_dir) and not (shard_dir / RECIPE_FILE).exists():
            shutil.rmtree(shard_dir)  # empty: another process finished the dataset between the check above and here
            return _finished(folder, wanted, scale)
        return _collect_shards(recipe, scale, total, name, folder, shard_dir, wanted, workers, progress)


def _finished(folder: Path, wanted: dict[str, Any], scale: str) -> CollectionResult:
    """A dataset already collected (and validated then): kept. A finished dataset is never overwritten, least of all
    from another recipe. Its counts come from its metadata; validating it again would read every episode."""
    info, metadata = read_info(folder)
    _check_same_recipe(info.recipe, wanted, scale, f"{folder} holds a finished dataset")
    try:
        episodes, transitions = int(metadata["total_episodes"]), int(metadata["total_steps"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{folder}: malformed metadata, no episode or step total ({e!r})") from e
    return CollectionResult(folder, episodes, transitions, 0, 0.0)


LOCK_FILE = ".lock"
"""In the shard folder: held (flock) by the process collecting into it."""


@contextlib.contextmanager
def _exclusive(shard_dir: Path) -> Iterator[None]:
    """Hold the shard folder's lock; DatasetError at once if another process holds it (two collections into one
    folder would write the same episodes and delete each other's shards). Unlocked where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(shard_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetError(
                f"{shard_dir.parent}: another process is collecting into it (it holds {shard_dir / LOCK_FILE}); "
                "wait for it to finish, or stop it and run this again to resume"
            ) from None
        yield


def _collect_shards(
    recipe: Recipe,
    scale: str,
    total: int,
    name: str,
    folder: Path,
    shard_dir: Path,
    wanted: dict[str, Any],
    workers: int | None,
    progress: bool,
) -> CollectionResult:
    """`collect` with the shard folder locked: the missing episodes, then the dataset, validated."""
    from robot_rl.data.validate import validate_dataset
    from robot_rl.runs import software_versions

    recorded = shard_dir / RECIPE_FILE
    if recorded.is_file():  # resuming: the episodes already there must come from the same recipe
        try:
            previous = json.loads(recorded.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(
                f"{recorded}: cannot read the recipe these shards came from ({e}); nothing was changed"
            ) from e
        _check_same_recipe(previous, wanted, scale, f"{shard_dir} holds episodes")
    elif not finished_indices(shard_dir):
        recorded.write_text(json.dumps(wanted, indent=1))
    for stale in shard_dir.glob("*.tmp"):  # writes cut off by an interruption
        stale.unlink()
    done = finished_indices(shard_dir)
    todo = [i for i in range(total) if i not in done]
    workers = max(1, min(workers or multiprocessing.cpu_count(), len(todo) or 1))
    start = time.perf_counter()
    if todo:
        _run_workers(recipe, name, todo, shard_dir, workers, total, len(done), progress)
    seconds = time.perf_counter() - start

    env = make_env(recipe)
    try:
        spec = env.spec_record().to_dict()
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    env_spec = gym.spec(ENV_IDS[recipe.scene])
    env_spec = dataclasses.replace(env_spec, kwargs={**env_spec.kwargs, "privileged_state": True, **recipe.env_kwargs})
    info = DatasetInfo(
        name=name,
        kind=recipe.kind,
        env_id=ENV_IDS[recipe.scene],
        env_kwargs={"privileged_state": True, **recipe.env_kwargs},
        env_spec=spec,
        recipe=recipe.to_dict(),
        versions=software_versions(),
        keep_failed=recipe.keep_failed,
    )
    records = (read_shard(shard_path(shard_dir, i)) for i in range(total))
    kept = (r for r in records if recipe.keep_failed or r.meta.success != 0)
    write_minari_dataset(folder, kept, observation_space, action_space, env_spec, info)  # type: ignore[arg-type]
    report = validate_dataset(folder)
    shutil.rmtree(shard_dir)  # everything is in the validated dataset now
    return CollectionResult(folder, report.episodes, report.transitions, len(todo), seconds)


def _check_same_recipe(recorded: dict[str, Any], wanted: dict[str, Any], scale: str, what: str) -> None:
    """Refuse when the recipe differs in anything that shapes this scale's data. Episode counts of other scales
    do not (a scale added to a recipe later leaves the datasets already collected valid)."""

    defaults = {f.name: f.default for f in dataclasses.fields(MixtureEntry) if f.default is not dataclasses.MISSING}

    def at_scale(recipe: dict[str, Any]) -> dict[str, Any]:
        episodes = recipe.get("episodes")
        mixture = recipe.get("mixture")
        if isinstance(mixture, list):  # an entry field added since, at its default, shapes the data as before
            mixture = [{**defaults, **e} if isinstance(e, dict) else e for e in mixture]
        episodes = episodes.get(scale) if isinstance(episodes, dict) else episodes
        return {**recipe, "episodes": episodes, "mixture": mixture}

    recorded, wanted = at_scale(recorded), at_scale(wanted)
    differing = sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))
    if differing:
        raise DatasetError(
            f"{what} collected from another recipe (it differs in {', '.join(differing)}); nothing was changed. "
            "Move that folder away, or collect into another --root, to collect this recipe."
        )


def _run_workers(
    recipe: Recipe,
    name: str,
    todo: list[int],
    shard_dir: Path,
    workers: int,
    total: int,
    already: int,
    progress: bool,
) -> None:
    """Spread `todo` over worker processes, showing episodes and transitions/s as they finish."""
    chunks = [todo[w::workers] for w in range(workers)]  # interleaved, so every worker gets a similar mix
    # "spawn": workers start clean instead of inheriting the parent's state (and any physics client it holds).
    context = multiprocessing.get_context("spawn")
    bar = tqdm(total=total, initial=already, desc=name, unit="ep", disable=not progress)
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        queue = manager.Queue()
        futures = [pool.submit(_worker, recipe, chunk, shard_dir, queue) for chunk in chunks]
        start, transitions = time.perf_counter(), 0
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                while not queue.empty():
                    transitions += queue.get()
                    bar.update(1)
                bar.set_postfix_str(f"{transitions / (time.perf_counter() - start):.0f} transitions/s")
                if any(f.exception() is not None for f in finished):
                    break
            for f in futures:
                if f.done():
                    f.result()  # re-raise a worker's error here, with its traceback
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()

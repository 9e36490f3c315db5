"""Evaluation rollouts: a policy, an env id and an initial condition; success as COG measured it.

Success is the task's success at the final step of the episode (COG), reported with "ever succeeded" (at any
step), and where episodes stop: the env's `info["milestones"]` (the task's sub-goals in order) give the share of
episodes that reached each sub-goal, and for each failed episode the first sub-goal it never reached.

Environments are reached through gymnasium ids only (`module:id` imports the module that registers the id), so
the learning core never imports the simulator. Rollouts run in worker processes; episode i uses seed `seed + i`,
so results do not depend on the number of workers. Evaluation seeds default to 1_000_000 and up, disjoint from
the seeds of collected data (a recipe's episode seeds come from `SeedSequence`, and training never resets envs).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from robot_rl.media import upscale, write_video

EVAL_SEED = 1_000_000


class ActingPolicy(Protocol):
    """Anything that maps one observation (as the env returns it) to an action in [-1, 1]."""

    def act(self, observation: dict[str, NDArray[Any]]) -> NDArray[np.float32]: ...


@dataclass(frozen=True)
class EvalConfig:
    """Which env, from where, how many episodes."""

    env_id: str = "robot_rl/Drawer-v1"
    """A registered gymnasium id."""
    env_module: str = "sim_envs"
    """Module imported (in each worker) to register `env_id`."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the env (image size, privileged state, ...)."""
    initial_condition: str = "closed"
    """The initial condition every episode starts from."""
    episodes: int = 50
    seed: int = EVAL_SEED
    """Episode i is reset with seed + i."""
    workers: int = 2
    videos: int = 2
    """Episodes (the first ones) recorded as videos when an output folder is given."""


@dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    """Task success at the final step."""
    ever_success: bool
    steps: int
    episode_return: float
    reached: dict[str, bool] = field(default_factory=dict)
    """Each milestone of the env's `info["milestones"]`, in task order: whether it held at any step."""
    final: dict[str, bool] = field(default_factory=dict)
    """Each milestone at the final step: a milestone reached but no longer holding was undone (a drawer opened and
    pushed shut again, an object grasped and dropped)."""
    first_step: dict[str, int] = field(default_factory=dict)
    """Each milestone reached: the step (1-based; 0 for one holding at reset) at which it first held."""

    @property
    def stopped_at(self) -> str | None:
        """None for a success; else the first milestone never reached, or `success_lost` when every milestone
        (success included) was reached but success did not hold at the final step."""
        if self.success:
            return None
        return next((name for name, hit in self.reached.items() if not hit), "success_lost")


@dataclass
class EvalResult:
    initial_condition: str
    episodes: list[EpisodeOutcome]
    videos: list[str]

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes]))

    @property
    def ever_success_rate(self) -> float:
        return float(np.mean([e.ever_success for e in self.episodes]))

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.episode_return for e in self.episodes]))

    def milestones(self) -> list[str]:
        """The milestones the episodes reported, in task order."""
        return list(dict.fromkeys(name for e in self.episodes for name in e.reached))

    def reached_rates(self) -> dict[str, float]:
        """Share of episodes that reached each milestone at some step, in task order."""
        return {name: float(np.mean([e.reached.get(name, False) for e in self.episodes])) for name in self.milestones()}

    def stopped_at(self) -> dict[str, int]:
        """Failed episodes counted by where they stopped (`EpisodeOutcome.stopped_at`), in task order."""
        counts: dict[str, int] = {name: 0 for name in self.milestones()}
        counts["success_lost"] = 0
        for e in self.episodes:
            if e.stopped_at is not None:
                counts[e.stopped_at] += 1
        return {name: n for name, n in counts.items() if n or name != "success_lost"}

    def undone_rates(self) -> dict[str, float]:
        """Share of episodes that reached each milestone but no longer held it at the final step, in task order."""
        return {
            name: float(np.mean([e.reached.get(name, False) and not e.final.get(name, False) for e in self.episodes]))
            for name in self.milestones()
        }

    def first_steps(self) -> dict[str, float]:
        """Median step at which each milestone first held, over the episodes that reached it (omitted where none
        did), in task order: whether a policy is slow, next to the horizon, or fails outright."""
        steps = {
            name: [e.first_step[name] for e in self.episodes if name in e.first_step] for name in self.milestones()
        }
        return {name: float(np.median(values)) for name, values in steps.items() if values}

    def summary(self) -> dict[str, float]:
        reached = {f"eval/reached/{name}": rate for name, rate in self.reached_rates().items()}
        return {
            "eval/success": self.success_rate,
            "eval/ever_success": self.ever_success_rate,
            "eval/return": self.mean_return,
            "eval/episodes": float(len(self.episodes)),
            **reached,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "initial_condition": self.initial_condition, "videos": self.videos,
                "stopped_at": self.stopped_at(), "undone": self.undone_rates(), "first_step": self.first_steps(),
                "per_episode": [asdict(e) for e in self.episodes]}  # fmt: skip


def make_env(cfg: EvalConfig) -> gym.Env[Any, Any]:
    return gym.make(f"{cfg.env_module}:{cfg.env_id}", **cfg.env_kwargs)


def _milestones(info: dict[str, Any]) -> dict[str, bool]:
    """The env's `info["milestones"]` (none if it gives none); anything but a dict of name -> bool is refused."""
    milestones = info.get("milestones", {})
    if not isinstance(milestones, dict) or not all(
        isinstance(k, str) and isinstance(v, (bool, np.bool_)) for k, v in milestones.items()
    ):
        raise ValueError(f"env info['milestones'] must map milestone names to bools, got {milestones!r}")
    return {name: bool(hit) for name, hit in milestones.items()}


def run_episode(
    env: gym.Env[Any, Any], policy: ActingPolicy, seed: int, condition: str, frames: list[NDArray[np.uint8]] | None
) -> EpisodeOutcome:
    """One episode from `condition`, reset with `seed`; appends camera frames to `frames` if given."""
    obs, info = env.reset(seed=seed, options={"initial_condition": condition})
    ever, total, steps, done = bool(info.get("success", False)), 0.0, 0, False
    current = _milestones(info)  # the milestones at the latest step
    reached = dict(current)
    first_step = {name: 0 for name, hit in current.items() if hit}
    if frames is not None and "image" in obs:
        frames.append(upscale(obs["image"], 192))
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
        total += float(reward)
        steps += 1
        ever = ever or bool(info.get("success", False))
        current = _milestones(info)
        for name, hit in current.items():
            reached[name] = reached.get(name, False) or hit
            if hit:
                first_step.setdefault(name, steps)
        done = terminated or truncated
        if frames is not None and "image" in obs:
            frames.append(upscale(obs["image"], 192))
    return EpisodeOutcome(seed, bool(info.get("success", False)), ever, steps, total, reached, current, first_step)


def evaluate(
    policy: ActingPolicy, cfg: EvalConfig, out: Path | None = None, seeds: list[int] | None = None
) -> EvalResult:
    """Run the episodes in this process (used by workers, tests, and callers holding a policy in memory)."""
    env = make_env(cfg)
    outcomes, videos = [], []
    try:
        for seed in seeds if seeds is not None else range(cfg.seed, cfg.seed + cfg.episodes):
            record = out is not None and seed - cfg.seed < cfg.videos
            frames: list[NDArray[np.uint8]] | None = [] if record else None
            outcomes.append(run_episode(env, policy, seed, cfg.initial_condition, frames))
            if out is not None and frames:
                path = out / f"eval_{cfg.initial_condition}_seed{seed}.mp4"
                videos.append(str(write_video(path, frames)))
    finally:
        env.close()
    return EvalResult(cfg.initial_condition, outcomes, videos)


def _worker(load: Callable[[], ActingPolicy], cfg: EvalConfig, seeds: list[int], out: Path | None) -> EvalResult:
    import torch

    torch.set_num_threads(1)  # one thread per worker: the workers already fill the cores
    return evaluate(load(), cfg, out, seeds)


def evaluate_parallel(load: Callable[[], ActingPolicy], cfg: EvalConfig, out: Path | None = None) -> EvalResult:
    """`evaluate` spread over `cfg.workers` processes; `load` (picklable, e.g. a partial of `Policy.load`) builds
    the policy in each worker. Same results as one process: episode i always uses seed `cfg.seed + i`."""
    seeds = list(range(cfg.seed, cfg.seed + cfg.episodes))
    workers = max(1, min(cfg.workers, len(seeds)))
    if workers == 1:
        return _worker(load, cfg, seeds, out)
    chunks = [seeds[w::workers] for w in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_worker, [load] * workers, [cfg] * workers, chunks, [out] * workers))
    by_seed = {e.seed: e for r in results for e in r.episodes}
    return EvalResult(cfg.initial_condition, [by_seed[s] for s in seeds], sorted(v for r in results for v in r.videos))

"""Dataset inspection: what a dataset holds, in numbers and pictures."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from robot_rl.data.episodes import DATA_DIR, iter_episodes
from robot_rl.data.validate import validate_dataset
from robot_rl.media import label, upscale, write_png, write_video


@dataclass
class SkillStats:
    episodes: int
    success_rate: float | None
    """The skill's own success (None for skills without a goal)."""
    task_success_rate: float
    """The env's task success at the last step."""
    mean_steps: float


@dataclass
class DatasetStats:
    name: str
    kind: str
    episodes: int
    transitions: int
    per_skill: dict[str, SkillStats]
    per_initial_condition: dict[str, int]
    reward_mean: float
    reward_nonzero_fraction: float
    episode_return_mean: float
    episodes_with_reward_fraction: float
    action_names: list[str]
    action_min: list[float]
    action_max: list[float]
    action_mean: list[float]
    action_std: list[float]
    disk_bytes: int
    bytes_per_transition: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_stats(folder: Path) -> DatasetStats:
    """Validate the dataset, then summarise it (reads every array except the images)."""
    report = validate_dataset(folder)
    info = report.info
    by_skill: dict[str, list[tuple[int, bool, int]]] = defaultdict(list)
    by_condition: dict[str, int] = defaultdict(int)
    rewards, returns, actions = [], [], []
    for _, group in iter_episodes(folder):
        a = group.attrs
        steps = int(a["total_steps"])
        by_skill[str(a["skill"])].append((int(a["success"]), bool(a["task_success"]), steps))
        by_condition[str(a["initial_condition"])] += 1
        r = group["rewards"][()]
        rewards.append(r)
        returns.append(float(r.sum()))
        actions.append(group["actions"][()])
    all_rewards, all_actions = np.concatenate(rewards), np.concatenate(actions)
    per_skill = {}
    for skill, rows in sorted(by_skill.items()):
        goals = [s for s, _, _ in rows if s >= 0]
        per_skill[skill] = SkillStats(
            episodes=len(rows),
            success_rate=float(np.mean(goals)) if goals else None,
            task_success_rate=float(np.mean([t for _, t, _ in rows])),
            mean_steps=float(np.mean([n for _, _, n in rows])),
        )
    disk = sum(p.stat().st_size for p in (folder / DATA_DIR).glob("*") if p.is_file())
    return DatasetStats(
        name=info.name,
        kind=info.kind,
        episodes=report.episodes,
        transitions=report.transitions,
        per_skill=per_skill,
        per_initial_condition=dict(sorted(by_condition.items())),
        reward_mean=float(all_rewards.mean()),
        reward_nonzero_fraction=float(np.mean(all_rewards != 0)),
        episode_return_mean=float(np.mean(returns)),
        episodes_with_reward_fraction=float(np.mean(np.array(returns) > 0)),
        action_names=info.action_names,
        action_min=all_actions.min(0).tolist(),
        action_max=all_actions.max(0).tolist(),
        action_mean=all_actions.mean(0).tolist(),
        action_std=all_actions.std(0).tolist(),
        disk_bytes=disk,
        bytes_per_transition=disk / report.transitions,
    )


def frame_grid(folder: Path, episodes: int = 8, columns: int = 8, cell: int = 96, seed: int = 0) -> NDArray[np.uint8]:
    """Rows: episodes sampled at random (seeded); columns: frames evenly spaced from the first to the last."""
    chosen = _sample_episodes(folder, episodes, seed)
    rows = []
    for i, group in iter_episodes(folder):
        if i not in chosen:
            continue
        images = group["observations/image"]
        picks = np.linspace(0, len(images) - 1, columns).round().astype(int)
        frames = images[np.unique(picks)]
        cells = [upscale(f, cell) for f in frames]
        cells += [np.zeros_like(cells[0])] * (columns - len(cells))
        text = f"ep {i} {group.attrs['skill']} {'ok' if group.attrs['task_success'] else ''}"
        cells[0] = label(cells[0], text[:28])
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def episode_frames(folder: Path, episodes: int = 3, size: int = 192, seed: int = 1) -> list[NDArray[np.uint8]]:
    """Frames of a few sampled episodes, one after another, for a video."""
    chosen = _sample_episodes(folder, episodes, seed)
    frames: list[NDArray[np.uint8]] = []
    for i, group in iter_episodes(folder):
        if i in chosen:
            skill = str(group.attrs["skill"])
            frames += [label(upscale(f, size), f"ep {i} {skill}"[:30]) for f in group["observations/image"][()]]
    return frames


def _sample_episodes(folder: Path, count: int, seed: int) -> set[int]:
    total = sum(1 for _ in iter_episodes(folder))
    rng = np.random.default_rng(seed)
    return set(rng.choice(total, size=min(count, total), replace=False).tolist())


def inspect_dataset(folder: Path, out: Path | None = None) -> tuple[DatasetStats, dict[str, Path]]:
    """Statistics (also written as JSON), an image grid and a video of a few episodes, into `out`."""
    folder = Path(folder)
    stats = dataset_stats(folder)
    out = out or folder / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"stats": out / "stats.json"}
    paths["stats"].write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
    if stats_has_images(folder):
        paths["grid"] = write_png(out / "frames.png", frame_grid(folder))
        paths["video"] = write_video(out / "episodes.mp4", episode_frames(folder))
    return stats, paths


def stats_has_images(folder: Path) -> bool:
    for _, group in iter_episodes(folder):
        return "image" in group["observations"]
    return False


def format_stats(stats: DatasetStats) -> str:
    """A human-readable summary table."""
    lines = [
        f"dataset {stats.name} ({stats.kind}): {stats.episodes} episodes, {stats.transitions} transitions",
        f"disk {stats.disk_bytes / 1e6:.2f} MB, {stats.bytes_per_transition:.0f} bytes per transition",
        f"reward: mean {stats.reward_mean:.3f}, nonzero on {stats.reward_nonzero_fraction:.1%} of steps, "
        f"{stats.episodes_with_reward_fraction:.1%} of episodes get some reward",
        "",
        f"{'skill':<22} {'episodes':>8} {'success':>8} {'task':>6} {'steps':>6}",
    ]
    for skill, s in stats.per_skill.items():
        success = "n/a" if s.success_rate is None else f"{s.success_rate:.2f}"
        lines.append(f"{skill:<22} {s.episodes:>8} {success:>8} {s.task_success_rate:>6.2f} {s.mean_steps:>6.1f}")
    lines += ["", "initial conditions: " + ", ".join(f"{k} {v}" for k, v in stats.per_initial_condition.items())]
    lines += ["", f"{'action':<8} {'min':>7} {'max':>7} {'mean':>7} {'std':>7}"]
    for n, lo, hi, mu, sd in zip(
        stats.action_names, stats.action_min, stats.action_max, stats.action_mean, stats.action_std, strict=True
    ):
        lines.append(f"{n:<8} {lo:>7.3f} {hi:>7.3f} {mu:>7.3f} {sd:>7.3f}")
    return "\n".join(lines)

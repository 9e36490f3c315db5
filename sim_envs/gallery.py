"""Pictures of the scenes: a grid of what the camera sees in every initial condition, and a video of each skill."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from robot_rl.media import label, upscale, write_video
from sim_envs.env import ManipulationEnv
from sim_envs.skills import SKILLS, EpisodeResult, run_skill_episode


def scene_grid(image_size: int = 48, seeds: Iterable[int] = range(4), cell: int = 192) -> NDArray[np.uint8]:
    """One row per (scene, initial condition), one column per seed: the policy's camera image, upscaled."""
    rows = []
    for scene in ("drawer", "pick_place"):
        env = ManipulationEnv(scene, image_size=image_size)
        try:
            for condition in env.initial_conditions:
                cells: list[NDArray[np.uint8]] = []
                for seed in seeds:
                    obs, _ = env.reset(seed=seed, options={"initial_condition": condition})
                    text = f"{scene}/{condition} s{seed}" if not cells else f"seed {seed}"
                    cells.append(label(upscale(obs["image"], cell), text))
                rows.append(np.concatenate(cells, axis=1))
        finally:
            env.close()
    return np.concatenate(rows, axis=0)


def skill_videos(
    folder: Path,
    skills: Sequence[str] = (),
    seed: int = 0,
    noise: float = 0.1,
    image_size: int = 48,
    render_size: int = 256,
    progress: bool = True,
) -> dict[str, tuple[Path, EpisodeResult]]:
    """Run each skill once (seeded) and write `folder/NAME.mp4`: a large render beside the policy's camera image."""
    names = list(skills) or list(SKILLS)
    for name in names:
        if name not in SKILLS:
            raise ValueError(f"unknown skill {name!r}; choose from {sorted(SKILLS)}")
    envs: dict[str, ManipulationEnv] = {}
    out: dict[str, tuple[Path, EpisodeResult]] = {}
    try:
        for name in tqdm(names, desc="skill videos", disable=not progress):
            scene = SKILLS[name].scene
            if scene not in envs:
                envs[scene] = ManipulationEnv(
                    scene, image_size=image_size, render_mode="rgb_array", render_size=render_size
                )
            env = envs[scene]
            result = run_skill_episode(env, name, seed=seed, noise=noise, record=True)
            frames = [
                np.concatenate([big, upscale(small, render_size)], axis=1)
                for big, small in zip(result.renders, result.frames, strict=True)
            ]
            out[name] = (write_video(folder / f"{name}.mp4", frames), result)
    finally:
        for env in envs.values():
            env.close()
    return out

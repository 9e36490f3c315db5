"""Pictures of the scenes: a grid of what the camera sees in every initial condition, and a video of each skill."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from sim_envs.env import ManipulationEnv
from sim_envs.skills import SKILLS, EpisodeResult, run_skill_episode


def upscale(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Nearest-neighbour upscaling, so the pixels the policy sees stay visible as pixels."""
    return np.asarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)


def _label(image: NDArray[np.uint8], text: str) -> NDArray[np.uint8]:
    out = image.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_png(path: Path, rgb: NDArray[np.uint8]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
    return path


def write_video(path: Path, frames: Sequence[NDArray[np.uint8]], fps: int = 10) -> Path:
    """Write RGB frames as an MP4 (mp4v, which the headless OpenCV wheel encodes without system codecs)."""
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"could not open a video writer for {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


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
                    cells.append(_label(upscale(obs["image"], cell), text))
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

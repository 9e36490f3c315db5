"""The `robot-rl` console script: one subcommand per job, each a typed config dataclass turned into flags by tyro.

Simulator-specific commands import `sim_envs` inside the command, so that `import robot_rl` never pulls in
pybullet (the learning core reaches environments through gymnasium ids only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from robot_rl.runs import new_run_dir, write_run_record


@dataclass(frozen=True)
class GalleryConfig:
    """Render every scene and initial condition as the policy's camera sees it, and film every scripted skill."""

    out: Path | None = None
    """Output folder (default: runs/gallery-<timestamp>)."""
    image_size: int = 48
    """Side of the policy's camera image in pixels."""
    grid_seeds: int = 4
    """Columns of the image grid: initial states drawn with seeds 0..grid_seeds-1."""
    skills: tuple[str, ...] = ()
    """Skills to film (default: every single skill and chained solution)."""
    seed: int = 0
    """Seed of the filmed episodes."""
    noise: float = 0.1
    """Std of the Gaussian action noise of the scripted skills (COG used 0.1)."""
    render_size: int = 256
    """Side of the large render shown beside the camera image in the videos."""
    progress: bool = True
    """Show progress bars."""


def gallery(cfg: GalleryConfig, prefix: str = "gallery") -> Path:
    from sim_envs.gallery import scene_grid, skill_videos, write_png

    folder = new_run_dir(cfg.out, prefix)
    write_run_record(folder, prefix, cfg)
    grid = write_png(folder / "scenes_grid.png", scene_grid(cfg.image_size, range(cfg.grid_seeds)))
    videos = skill_videos(
        folder / "videos",
        cfg.skills,
        seed=cfg.seed,
        noise=cfg.noise,
        image_size=cfg.image_size,
        render_size=cfg.render_size,
        progress=cfg.progress,
    )
    summary = {
        name: {"success": r.success, "task_success": r.task_success, "steps": r.steps, "video": str(path)}
        for name, (path, r) in videos.items()
    }
    (folder / "skills.json").write_text(json.dumps(summary, indent=2) + "\n")
    width = max(len(name) for name in summary)
    print(f"\n{'skill':<{width}}  success  steps  (seed {cfg.seed}, noise {cfg.noise})")
    for name, (_, result) in videos.items():
        outcome = {True: "yes", False: "no", None: "n/a"}[result.success]
        print(f"{name:<{width}}  {outcome:>7}  {result.steps:>5}")
    print(f"\nimage grid: {grid}\nvideos:     {folder / 'videos'}\nrecord:     {folder / 'run.json'}")
    return folder


@dataclass(frozen=True)
class DemoConfig(GalleryConfig):
    """The main job. For now: run every scripted skill in every scene and write the image grid and videos."""


def demo(cfg: DemoConfig) -> Path:
    return gallery(cfg, prefix="demo")


def main(args: list[str] | None = None) -> None:
    cfg = tyro.extras.subcommand_cli_from_dict(
        {"demo": DemoConfig, "gallery": GalleryConfig},
        prog="robot-rl",
        description="robot-rl: offline RL with skill stitching (COG), online fine-tuning, and a ROS 2 robot path.",
        args=args,
    )
    match cfg:
        case DemoConfig():
            demo(cfg)
        case GalleryConfig():
            gallery(cfg)
        case _:
            raise AssertionError(f"no command for {type(cfg).__name__}")

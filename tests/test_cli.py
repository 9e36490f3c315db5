"""Smoke runs of every `robot-rl` command and benchmark with tiny budgets, and the project's wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from robot_rl.cli import main
from sim_envs.scenes import DrawerScene, PickPlaceScene

ROOT = Path(__file__).resolve().parents[1]


def video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while capture.read()[0]:
            count += 1
        return count
    finally:
        capture.release()


def test_gallery_writes_grid_videos_and_record(tmp_path: Path) -> None:
    command = "gallery"
    out = tmp_path / "run"
    skills = ["open_bottom_drawer", "place_in_tray"]
    main([command, "--out", str(out), "--grid-seeds", "2", "--skills", *skills, "--no-progress", "--render-size", "64"])

    grid = cv2.imread(str(out / "scenes_grid.png"))
    assert grid is not None
    rows = len(DrawerScene.initial_conditions) + len(PickPlaceScene.initial_conditions)
    assert rows == 10  # 8 drawer + 2 pick-place conditions
    assert grid.shape == (rows * 192, 2 * 192, 3)  # a row per condition, a column per seed

    summary = json.loads((out / "skills.json").read_text())
    assert sorted(summary) == sorted(skills)
    for name in skills:
        video = out / "videos" / f"{name}.mp4"
        assert video_frames(video) == summary[name]["steps"] + 1  # the reset frame and one per step
        assert summary[name]["success"] is True

    record = json.loads((out / "run.json").read_text())
    assert record["command"] == command
    assert record["config"]["skills"] == skills
    assert record["versions"]["pybullet"] != "not installed"


def test_gallery_rejects_an_unknown_skill(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown skill 'fly'"):
        main(["gallery", "--out", str(tmp_path), "--grid-seeds", "1", "--skills", "fly", "--no-progress"])


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "demo" in text and "gallery" in text


def test_learning_core_does_not_import_the_simulator() -> None:
    """`robot_rl` reaches environments through gymnasium ids only (DESIGN.md): importing it loads no pybullet."""
    code = "import sys, robot_rl, robot_rl.cli, robot_rl.runs; print('pybullet' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run extracts the README's second bash block; it must be the test command and nothing else."""
    readme = (ROOT / "README.md").read_text().splitlines()
    blocks = [readme[i + 1] for i, line in enumerate(readme) if line == "```bash"]
    assert len(blocks) >= 2
    assert blocks[0].endswith("robot-rl demo")
    assert blocks[1].endswith("pytest") and "ruff check" in blocks[1] and "mypy" in blocks[1]
    awk = r"/^```bash$/ { block++; next } block == 2 && !/^```/ { print; exit }"
    extracted = subprocess.run(["awk", awk, str(ROOT / "README.md")], capture_output=True, text=True, check=True)
    assert extracted.stdout.strip() == blocks[1]
    assert awk.replace("\\", "") in (ROOT / ".ci" / "run").read_text().replace("\\", "")


@pytest.mark.parametrize(
    ("script", "args", "keys"),
    [
        (
            "sim_speed.py",
            ["--steps", "60", "--repeats", "1"],
            ["drawer_env_steps_per_s", "pick_place_env_steps_per_s", "drawer_reset_ms", "pick_place_reset_ms"],
        ),
        (
            "scripted_success.py",
            ["--episodes", "2", "--workers", "1"],
            ["open_then_grasp_success_rate", "place_in_tray_success_rate", "pick_then_place_success_rate"],
        ),
    ],
)
def test_benchmarks_write_their_json(tmp_path: Path, script: str, args: list[str], keys: list[str]) -> None:
    out = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--out", str(out), *args],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    result = json.loads(out.read_text())
    for key in keys:
        assert isinstance(result[key], (int, float)) and result[key] > 0, key


def test_finetune_without_runs_says_what_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="give --runs RUN"):
        main(["finetune"])


def test_finetune_on_a_folder_that_is_not_a_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--runs", str(tmp_path)])
    assert exit_info.value.code == 2
    assert str(tmp_path) in capsys.readouterr().err

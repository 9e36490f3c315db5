"""Run folders: every command writes its resolved config and the software versions next to its outputs."""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("robot-rl", "numpy", "torch", "gymnasium", "pybullet", "opencv-python-headless", "tyro")


def software_versions() -> dict[str, str]:
    """Python, platform, the versions of our dependencies that are installed, and the git commit if any."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            versions["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def new_run_dir(out: Path | None, prefix: str, root: Path = Path("runs")) -> Path:
    """`out` if given, else `runs/PREFIX-YYYYmmdd-HHMMSS` (suffixed if that exists); created empty or reused."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = root / f"{prefix}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = root / f"{prefix}-{stamp}-{n}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_run_record(folder: Path, command: str, config: Any) -> Path:
    """Write `folder/run.json`: the command, its resolved config and the software versions."""
    record = {"command": command, "config": _jsonable(config), "versions": software_versions()}
    path = folder / "run.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path

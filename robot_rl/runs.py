"""Run folders: every command writes its resolved config and the software versions next to its outputs."""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
import types
import typing
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


def config_from_dict(cls: type[Any], data: Any, where: str = "config") -> Any:
    """Rebuild a (nested, frozen) config dataclass from its `run.json` form, checking names and types.

    Used to resume a run with exactly the config it was started with. Unknown or missing fields, and values of
    the wrong type, are reported with their path (e.g. `config.cql.sampled_actions`).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)} for {cls.__name__}")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except (ValueError, TypeError):
                continue
        raise ValueError(f"{where}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {args}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return config_from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        return tuple(_convert(item, v, where) if item is not None else v for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Path:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value

"""One logger for every run: a local JSON-lines metrics file always, Weights & Biases when asked.

Metric names live in fixed namespaces (`train/`, `critic/`, `actor/`, `alpha/`, `eval/`, `time/`). W&B is off by
default and in tests; with `mode="offline"` it writes locally and needs no network (`wandb sync` uploads later).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import TracebackType
from typing import Any, Literal


class Logger:
    def __init__(
        self,
        folder: Path,
        config: dict[str, Any] | None = None,
        wandb_mode: Literal["online", "offline"] | None = None,
        project: str = "robot-rl",
        name: str | None = None,
        resume_step: int | None = None,
    ) -> None:
        """`wandb_mode`: None (off), "online" or "offline". `resume_step`: the step a resumed run continues from;
        rows logged after it (by the stretch a crash lost, which the run now replays) are dropped, so that each
        step has one row of each kind."""
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if not _logged_after(line, resume_step)]
            if len(kept) < len(lines):
                partial = self.path.with_suffix(".jsonl.partial")
                partial.write_text("".join(kept))
                partial.replace(self.path)  # atomic: a crash here leaves the old file or the new one
        cut_off = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed in close(); appends on resume
        if cut_off:  # a crash mid-row: end that line, so that the next row is not glued to it
            self._file.write("\n")
        self._wandb: Any = None
        if wandb_mode is not None:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("--wandb needs the wandb package: pip install 'robot-rl[wandb]'") from e
            self._wandb = wandb.init(
                project=project, name=name or folder.name, dir=str(folder), config=config, mode=wandb_mode
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> Logger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _logged_after(line: str, step: int) -> bool:
    """Whether a metrics line is a row of a step after `step` (a line that does not parse is kept as it is)."""
    try:
        row = json.loads(line)
        return isinstance(row, dict) and int(row.get("step", 0)) > step
    except (json.JSONDecodeError, TypeError, ValueError):
        return False


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (a row cut off by a crash, the last one, is skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows

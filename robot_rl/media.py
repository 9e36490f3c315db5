"""Images, grids and videos, through OpenCV (the headless wheel: no system GL or codecs needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray


def upscale(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Nearest-neighbour upscaling, so the pixels the policy sees stay visible as pixels."""
    return np.asarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)


def label(image: NDArray[np.uint8], text: str) -> NDArray[np.uint8]:
    """`text` in white with a dark outline in the image's top-left corner."""
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


def line_plots(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], width: int = 360, height: int = 200
) -> NDArray[np.uint8]:
    """One panel per named (x, y) series, stacked vertically: a polyline with its y range and last value.

    Deliberately plain (OpenCV only, no plotting library): enough to see a learning curve in a run folder.
    """
    panels = []
    margin = 28
    for name, (xs, ys) in series.items():
        panel = np.full((height, width, 3), 255, np.uint8)
        x, y = np.asarray(xs, float), np.asarray(ys, float)
        lo, hi = float(np.min(y)), float(np.max(y))
        span_y = hi - lo or 1.0
        span_x = float(x.max() - x.min()) or 1.0
        px = margin + (x - x.min()) / span_x * (width - 2 * margin)
        py = height - margin - (y - lo) / span_y * (height - 2 * margin)
        cv2.rectangle(panel, (margin, margin), (width - margin, height - margin), (200, 200, 200), 1)
        points = np.stack([px, py], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(panel, [points], False, (40, 90, 200), 2, cv2.LINE_AA)
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(panel, f"{name}  last {y[-1]:.3g}", (margin, 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(panel, f"{hi:.3g}", (2, margin + 4), font, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.putText(panel, f"{lo:.3g}", (2, height - margin), font, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.putText(panel, f"step {int(x.max())}", (width - 110, height - 8), font, 0.35, (80, 80, 80), 1)
        panels.append(panel)
    return np.concatenate(panels, axis=0)

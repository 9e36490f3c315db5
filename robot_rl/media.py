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


PALETTE = [(40, 90, 200), (220, 90, 40), (40, 160, 70), (150, 60, 170), (120, 120, 120), (200, 170, 30)]
"""RGB colours of the series, in order."""


def curve_chart(
    title: str, lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], width: int = 480, height: int = 300
) -> NDArray[np.uint8]:
    """Several named (x, y) curves on one set of axes (y from 0 to max(1, y)), with a legend."""
    panel = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 40, 110, 28, 30
    x_max = max((max(xs) for xs, _ in lines.values() if len(xs)), default=1.0) or 1.0
    y_max = max(1.0, max((max(ys) for _, ys in lines.values() if len(ys)), default=1.0))
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(panel, (left, top), (width - right, height - bottom), (200, 200, 200), 1)
    cv2.putText(panel, title, (left, 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, f"{y_max:.2g}", (4, top + 4), font, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(panel, "0", (4, height - bottom), font, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(panel, f"step {int(x_max)}", (width - right - 90, height - 10), font, 0.35, (80, 80, 80), 1)
    for i, (name, (xs, ys)) in enumerate(lines.items()):
        colour = PALETTE[i % len(PALETTE)]
        x, y = np.asarray(xs, float), np.asarray(ys, float)
        px = left + x / x_max * (width - left - right)
        py = height - bottom - y / y_max * (height - top - bottom)
        points = np.stack([px, py], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(panel, [points], False, colour, 2, cv2.LINE_AA)
        for point in points[:, 0]:
            cv2.circle(panel, (int(point[0]), int(point[1])), 3, colour, -1, cv2.LINE_AA)
        cv2.putText(panel, name, (width - right + 8, top + 14 + 16 * i), font, 0.4, colour, 1, cv2.LINE_AA)
    return panel


def bar_chart(
    title: str, groups: Mapping[str, Mapping[str, tuple[float, float]]], height: int = 300
) -> NDArray[np.uint8]:
    """Grouped bars in [0, 1]: one group per key of `groups`, one bar per (name -> (value, error)) inside it, the
    error drawn as a whisker (skipped when nan). Colours follow the order in which names first appear."""
    names: list[str] = []
    for bars in groups.values():
        names.extend(n for n in bars if n not in names)
    bar_w, gap, left, top, bottom = 18, 24, 30, 28, 40
    width = max(360, left + len(groups) * (len(names) * bar_w + gap) + 110)
    panel = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    base, span = height - bottom, height - top - bottom
    cv2.putText(panel, title, (left, 18), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(panel, (left, base), (width - 110, base), (120, 120, 120), 1)
    cv2.putText(panel, "1", (8, top + 4), font, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    x = left + gap // 2
    for group, bars in groups.items():
        start = x
        for name in names:
            if name in bars:
                value, error = bars[name]
                if not np.isnan(value):
                    colour = PALETTE[names.index(name) % len(PALETTE)]
                    y = round(base - min(max(value, 0.0), 1.0) * span)
                    cv2.rectangle(panel, (x, y), (x + bar_w - 3, base), colour, -1)
                    if not np.isnan(error):
                        lo = round(base - min(max(value - error, 0.0), 1.0) * span)
                        hi = round(base - min(max(value + error, 0.0), 1.0) * span)
                        cv2.line(panel, (x + bar_w // 2 - 1, lo), (x + bar_w // 2 - 1, hi), (0, 0, 0), 1)
            x += bar_w
        cv2.putText(panel, group[:16], (start, base + 16), font, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        x += gap
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        cv2.putText(panel, name, (width - 100, top + 14 + 16 * i), font, 0.4, colour, 1, cv2.LINE_AA)
    return panel

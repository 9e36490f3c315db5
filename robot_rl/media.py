"""Images, grids and videos, through OpenCV (the headless wheel: no system GL or codecs needed)."""

from __future__ import annotations

from collections.abc import Sequence
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

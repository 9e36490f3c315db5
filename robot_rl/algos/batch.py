"""Replay batches on the training device: uint8 HWC images become float CHW in [0, 1], optionally shifted."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from robot_rl.data.replay import Batch, Observation


class TorchObs(NamedTuple):
    image: Tensor | None
    """(B, C, H, W) float in [0, 1]."""
    state: Tensor
    """(B, S)."""


class TorchBatch(NamedTuple):
    obs: TorchObs
    action: Tensor
    reward: Tensor
    next_obs: TorchObs
    terminated: Tensor
    """(B,) float: 1 where the episode ended in a terminal state (no bootstrap)."""
    truncated: Tensor
    """(B,) float: 1 where the episode was cut by its time limit (bootstrap as usual); kept for logging."""
    discount: Tensor | None = None
    """(B,) gamma^m of n-step returns; None: one-step transitions (the agent's gamma)."""


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision for an agent's forward passes: autocast to `dtype` on `device`, or a no-op for None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Pad by `pad` pixels (edge-replicated) and crop back at a random offset, one offset per image (DrQ-style).

    images (B, C, H, W) -> (B, C, H, W); integer pixel shifts, gathered with one advanced index (no loop).
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # (B, C, H+2p, W+2p)
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device="cpu").to(images.device)  # (B, 2)
    rows = shifts[:, :1] + torch.arange(h, device=images.device)  # (B, H)
    cols = shifts[:, 1:] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def _image(images: np.ndarray | None, device: torch.device) -> Tensor | None:
    if images is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def observation_to_torch(obs: Observation, device: torch.device, use_privileged: bool = False) -> TorchObs:
    """One side of a batch (its observations) on `device`; `use_privileged` appends the privileged state to the
    proprioceptive state (state-mode experiments)."""
    state = obs.state
    if use_privileged:
        if obs.privileged is None:
            raise ValueError("use_privileged is set but the batch has no privileged state")
        state = np.concatenate([state, obs.privileged], axis=1)
    return TorchObs(_image(obs.image, device), torch.from_numpy(state).to(device))


def to_torch(
    batch: Batch,
    device: torch.device,
    augment_pad: int = 0,
    generator: torch.Generator | None = None,
    use_privileged: bool = False,
) -> TorchBatch:
    """Move a replay batch to `device`; with `augment_pad` > 0, shift every image independently.

    `use_privileged` appends the privileged state to the proprioceptive state (state-mode experiments).
    """
    obs = observation_to_torch(batch.obs, device, use_privileged)
    next_obs = observation_to_torch(batch.next_obs, device, use_privileged)
    if augment_pad > 0 and obs.image is not None and next_obs.image is not None:
        obs = obs._replace(image=random_shift(obs.image, augment_pad, generator))
        next_obs = next_obs._replace(image=random_shift(next_obs.image, augment_pad, generator))
    return TorchBatch(
        obs=obs,
        action=torch.from_numpy(batch.action).to(device),
        reward=torch.from_numpy(batch.reward).to(device),
        next_obs=next_obs,
        terminated=torch.from_numpy(batch.terminated).to(device).float(),
        truncated=torch.from_numpy(batch.truncated).to(device).float(),
        discount=None if batch.discount is None else torch.from_numpy(batch.discount).to(device),
    )

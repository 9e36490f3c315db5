"""Behaviour cloning: maximum likelihood of the data's actions under the tanh-Gaussian actor.

The baseline of COG (Singh et al., CoRL 2020, https://arxiv.org/abs/2010.14500) and the CQL paper's BC
(Kumar et al., NeurIPS 2020). The same actor as CQL's (`TanhGaussianActor`), so a BC policy deploys, checkpoints and
evaluates exactly as a CQL one. For a batch of (s, a):

    L_BC = -mean_i log pi(a_i | s_i),   pi(a|s) = N(atanh a; mu(s), sigma(s)^2) / prod_j (1 - a_j^2)

with a clamped to [-1 + eps, 1 - eps] before the atanh (gripper commands of exactly +-1 would be infinitely
unlikely). BC on task data or on all data is a choice of sampler (`robot_rl.replay.mixing`), not of this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from robot_rl.algos.batch import TorchBatch, autocast
from robot_rl.algos.optim import adam
from robot_rl.networks import ConvConfig, TanhGaussianActor


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning of the tanh-Gaussian actor. Network defaults match `CQLConfig` so that the two compare."""

    actor_lr: float = 1e-4
    """Adam's learning rate (CQL's actor rate)."""
    hidden: tuple[int, ...] = (1024, 512, 256)
    """Hidden layers of the actor head (COG)."""
    conv: ConvConfig = field(default_factory=ConvConfig)
    """Image encoder of the actor (COG's by default)."""
    weight_decay: float = 0.0
    """L2 penalty through Adam's `weight_decay` (robomimic's `regularization.L2`); 0 as in COG."""
    action_margin: float = 0.01
    """Data actions are clamped to [-1 + margin, 1 - margin] in the likelihood. Saturated commands (a gripper
    at exactly +-1) are otherwise atanh(1 - 1e-6) = 7.3 away in the Gaussian's space, next to noisy ones at 0.85
    (atanh 1.3): fitting both gave the gripper a standard deviation near 3, so sampled actions flipped it."""


def bc_loss(actor: TanhGaussianActor, batch: TorchBatch, margin: float = 0.01) -> tuple[Tensor, dict[str, float]]:
    """L_BC = -mean log pi(a|s) over the batch (see the module docstring). Returns (loss, metrics).

    The metrics add what the likelihood hides: how far the deterministic action tanh(mu(s)) is from the data's
    (what deployment executes), and the policy's mean log standard deviation (a collapsing sigma inflates the
    likelihood of well-fit samples while the rest get worse).
    """
    features = actor.encode(batch.obs.image, batch.obs.state)  # (B, F)
    log_prob = actor.log_prob(features, batch.action, eps=margin)  # (B,)
    loss = -log_prob.mean()
    with torch.no_grad():
        mean, log_std = actor.distribution(features)  # (B, A), (B, A)
        action_mse = (torch.tanh(mean) - batch.action).pow(2).mean()
    metrics = {
        "actor/loss": loss.item(),
        "actor/action_mse": action_mse.item(),
        "actor/log_std": log_std.mean().item(),
    }
    return loss, metrics


class BC:
    """The BC agent: the actor and its optimiser; `update` takes one gradient step on L_BC."""

    def __init__(
        self,
        cfg: BCConfig,
        image_shape: tuple[int, int, int] | None,
        state_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.actor = TanhGaussianActor(image_shape, state_dim, action_dim, cfg.hidden, cfg.conv).to(self.device)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
        self.steps = 0
        self.autocast_dtype: torch.dtype | None = None
        """Mixed precision of the forward pass (see `CQL.autocast_dtype`); None: fp32."""

    def update(self, batch: TorchBatch) -> dict[str, float]:
        with autocast(self.device, self.autocast_dtype):
            loss, metrics = bc_loss(self.actor, batch, self.cfg.action_margin)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        self.steps += 1
        return metrics

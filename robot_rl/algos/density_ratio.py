"""The density-ratio estimator of balanced replay: w(s, a) ~ d_online(s, a) / d_offline(s, a).

Lee et al., "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic Q-Ensemble" (CoRL 2021,
https://arxiv.org/abs/2107.00591), Sec. 4.1: a small network is trained to tell online from offline (s, a) through
the variational (f-GAN) lower bound of an f-divergence (Nguyen et al. 2010; Nowozin et al. 2016), with f the
Jensen-Shannon generator

    f(y) = y log y - (y + 1) log((y + 1) / 2),    D_f(P_on || P_off) = E_off[ f(d_on / d_off) ] = 2 JSD(P_on, P_off).

Its convex conjugate is f*(t) = -log(2 - e^t) and f'(y) = log(2y / (y + 1)), so with the critic T = f'(w) the bound

    D_f >= E_on[ f'(w(s, a)) ] - E_off[ f*(f'(w(s, a))) ]
         = E_on[ log(2w / (w + 1)) ] - E_off[ log((w + 1) / 2) ]

is tight exactly at w = d_on / d_off (pointwise, d/dw of the bound is d_on / (w (w + 1)) - d_off / (w + 1) = 0). The
loss is its negative; online samples are the "positives" (they enter through f'), offline the "negatives":

    L(psi) = E_off[ log((w_psi + 1) / 2) ] - E_on[ log(2 w_psi / (w_psi + 1)) ].

Output: w = exp(h), h the network's scalar output (the authors' code uses a ReLU output with +1e-10 inside the
logs). With w = exp(h) the loss becomes, exactly,

    L = E_off[ softplus(h) ] + E_on[ softplus(-h) ] - 2 log 2,

i.e. logistic regression of "online" against "offline" with logit h (w = D / (1 - D), D = sigmoid(h)): evaluated in
that form it needs no epsilon, never overflows, and its gradient never vanishes, whereas a ReLU output that reaches
w = 0 has zero gradient there and can stay stuck, and a softplus output needs an epsilon and represents the small
ratios (which are most of the offline data late in fine-tuning) only through large negative pre-activations. The
optimum h* = log(d_on / d_off) is unbounded either way, which the exponential covers naturally; `ratio` clamps h
only when reporting w so that exp cannot overflow. The last layer starts at zero, so w = 1 everywhere (uniform
replay) before the first update. -L is the lower bound on 2 JSD, in [0, 2 log 2]; it is logged as
`density_ratio/js_bound` (0: the two batches look alike, 1.386: perfectly told apart).

The network sees feature vectors, not observations: the caller passes the critic's detached image features for
image observations, or the state itself, and the actions (a different encoder here would cost a second CNN pass).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robot_rl.algos.optim import adam


@dataclass(frozen=True)
class DensityRatioConfig:
    """The density-ratio network and its training; the defaults are the authors' code's (2 x 256, Adam 3e-4)."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden layers of the ReLU MLP on [features; action]."""
    lr: float = 3e-4
    """Adam's learning rate."""
    online_batch_size: int = 256
    """Online (s, a) per update (drawn by the trainer from the online store, uniformly)."""
    offline_batch_size: int = 256
    """Offline (s, a) per update (drawn by the trainer from the offline store, uniformly)."""
    max_log_ratio: float = 20.0
    """`ratio` reports w = exp(clamp(h, -max, max)): keeps exp finite; priorities are clipped far inside anyway."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.online_batch_size < 1 or self.offline_batch_size < 1 or self.max_log_ratio <= 0:
            raise ValueError(f"DensityRatioConfig needs lr > 0, batch sizes >= 1 and max_log_ratio > 0, got {self}")


class DensityRatioNetwork(nn.Module):
    """h(s, a) = log w(s, a): a ReLU MLP on the concatenation [features; action], zero-initialised last layer."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.feature_dim, self.action_dim = feature_dim, action_dim
        sizes = [feature_dim + action_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(sizes[-1], 1)
        # w = exp(0) = 1 for every (s, a) before training: balanced replay starts as uniform replay.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, features: Tensor, actions: Tensor) -> Tensor:
        """features (B, F), actions (B, A) -> log w (B,)."""
        if features.dim() != 2 or actions.dim() != 2 or features.shape[0] != actions.shape[0]:
            raise ValueError(f"features (B, F) and actions (B, A) expected, got {features.shape}, {actions.shape}")
        if features.shape[1] != self.feature_dim or actions.shape[1] != self.action_dim:
            raise ValueError(
                f"expected {self.feature_dim} features and {self.action_dim} action dimensions, "
                f"got {features.shape[1]} and {actions.shape[1]}"
            )
        out: Tensor = self.net(torch.cat([features, actions], dim=1))  # (B, 1)
        return out.squeeze(1)


def js_density_ratio_loss(online_log_ratio: Tensor, offline_log_ratio: Tensor) -> tuple[Tensor, dict[str, float]]:
    """L = E_off[log((w + 1) / 2)] - E_on[log(2w / (w + 1))] with w = exp(h), from h on an online batch (B_on,) and
    an offline batch (B_off,); computed as E_off softplus(h) + E_on softplus(-h) - 2 log 2 (see the module docstring).
    """
    loss = F.softplus(offline_log_ratio).mean() + F.softplus(-online_log_ratio).mean() - 2.0 * math.log(2.0)
    with torch.no_grad():
        # A balanced classifier's accuracy at w = 1 (h = 0): how well the two batches are told apart.
        accuracy = 0.5 * ((online_log_ratio > 0).float().mean() + (offline_log_ratio <= 0).float().mean())
        metrics = {
            "density_ratio/loss": loss.item(),
            "density_ratio/js_bound": -loss.item(),
            # Means of log w, not of w: once the batches are told apart h grows without bound (the optimum is
            # log(d_on / d_off)), and the mean of exp(h) overflowed after ~10k updates in a 20k-step run.
            "density_ratio/online_log_ratio": online_log_ratio.mean().item(),
            "density_ratio/offline_log_ratio": offline_log_ratio.mean().item(),
            "density_ratio/accuracy": accuracy.item(),
        }
    return loss, metrics


class DensityRatio:
    """The estimator: network and Adam; `update` takes one gradient step, `ratio` evaluates w without gradient.

    Checkpoints save `network.state_dict()`, `optimizer.state_dict()` and `steps`.
    """

    def __init__(
        self, cfg: DensityRatioConfig, feature_dim: int, action_dim: int, device: torch.device | str = "cpu"
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.network = DensityRatioNetwork(feature_dim, action_dim, cfg.hidden).to(self.device)
        self.optimizer = adam(self.network.parameters(), lr=cfg.lr)
        self.steps = 0

    def update(
        self, online_features: Tensor, online_actions: Tensor, offline_features: Tensor, offline_actions: Tensor
    ) -> dict[str, float]:
        """One gradient step of L on an online batch (B_on, F), (B_on, A) and an offline batch (B_off, F), (B_off, A).

        The features are detached here: this loss never trains the encoder that produced them.
        """
        b_on = online_features.shape[0]
        features = torch.cat([online_features, offline_features]).detach()  # (B_on + B_off, F): one forward
        actions = torch.cat([online_actions, offline_actions]).detach()  # (B_on + B_off, A)
        log_ratio = self.network(features, actions)  # (B_on + B_off,)
        loss, metrics = js_density_ratio_loss(log_ratio[:b_on], log_ratio[b_on:])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return metrics

    def ratio(self, features: Tensor, actions: Tensor) -> Tensor:
        """w(s, a) >= 0 for features (B, F) and actions (B, A): (B,), without gradient."""
        with torch.no_grad():
            log_ratio: Tensor = self.network(features, actions)  # (B,)
            bound = self.cfg.max_log_ratio
            return log_ratio.clamp(-bound, bound).exp()

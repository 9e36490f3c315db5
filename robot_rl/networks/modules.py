"""Ensembles of encoders, MLPs, Q-functions and the tanh-Gaussian actor.

Shapes: B batch, N ensemble members, K sampled actions per observation, F features, A action dimension.
Images enter as float (B, C, H, W) in [0, 1]; conversion from uint8 HWC and augmentation happen in the batch
transfer, not here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ConvConfig:
    """An image encoder's convolutions. The default is COG's: three 3x3 convolutions with 16 channels, 2x2 max
    pooling after the first two (48x48 -> 12x12x16 = 2304 features)."""

    channels: tuple[int, ...] = (16, 16, 16)
    """Output channels of each convolution."""
    kernel: int = 3
    """Kernel size of every convolution, odd (padded by kernel // 2 to keep the size)."""
    pool: tuple[bool, ...] = (True, True, False)
    """2x2 max pooling after each convolution (ignored when `strided`)."""
    strided: bool = False
    """The strided variant: each convolution with `pool` set has stride 2 instead of being followed by pooling."""

    def __post_init__(self) -> None:
        if len(self.pool) != len(self.channels) or not self.channels or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"ConvConfig needs one pool flag per convolution and an odd kernel >= 1, got {self}")


class MaxPool2x2(nn.MaxPool2d):
    """2x2 max pooling, stride 2 (`nn.MaxPool2d(2)`), computed without pooling indices when no gradient is needed.

    The target critics and the actor's pass over the next observations run without gradient; there the maximum of
    the four shifted views is the same result as oneDNN's pooling, which also writes an index per output, and ran
    3x faster (channels-last, measured on CPU). With gradient, `F.max_pool2d` as usual."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.max_pool2d(x, 2)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # odd sizes drop their last row/column, as MaxPool2d
        if h == 0 or w == 0:
            raise ValueError(f"2x2 max pooling needs inputs of at least 2x2, got {tuple(x.shape[-2:])}")
        x = x[..., :h, :w]
        top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
        bottom = torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2])
        return torch.maximum(top, bottom)


class EnsembleConvEncoder(nn.Module):
    """N independent CNNs computed as one, with grouped convolutions.

    Every member sees the same image, so the first layer is one plain convolution with N * C' filters over the
    image itself: the grouped convolution over N stacked copies of it computes the same outputs with the same
    weight shape (N * C', C, k, k), but copies the input N times and ran 2.3x slower (forward and backward, measured
    on CPU with oneDNN). Later layers are grouped: member m's filters see only member m's channels."""

    def __init__(self, members: int, image_shape: tuple[int, int, int], config: ConvConfig = ConvConfig()) -> None:
        super().__init__()
        height, width, channels = image_shape
        self.members = members
        layers: list[nn.Module] = []
        in_channels = channels
        for i, (out_channels, pool) in enumerate(zip(config.channels, config.pool, strict=True)):
            stride = 2 if (pool and config.strided) else 1
            groups = 1 if i == 0 else members
            layers.append(
                nn.Conv2d(
                    in_channels * groups,
                    out_channels * members,
                    config.kernel,
                    stride=stride,
                    padding=config.kernel // 2,
                    groups=groups,
                )
            )
            # Pool first, then ReLU (in place): max-pooling commutes with the monotone ReLU, so it is the same
            # function, and the ReLU and its backward touch a quarter of the memory.
            if pool and not config.strided:
                layers.append(MaxPool2x2())
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
        # Channels-last: oneDNN's convolutions and pooling ran 1.4x faster in it on CPU (measured), as on GPUs.
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        with torch.no_grad():
            probe = self.net(torch.zeros(1, channels, height, width))
        self.output_dim = probe[0].numel() // members
        """Features per member."""

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (N, B, F)."""
        b = images.shape[0]
        out: Tensor = self.net(images.contiguous(memory_format=torch.channels_last))  # (B, N*C', H', W')
        # Member-major channels: flatten each member's (C', H', W') block in the usual NCHW order.
        out = out.contiguous().reshape(b, self.members, -1)  # (B, N, F)
        return out.transpose(0, 1)  # (N, B, F)


class EnsembleLinear(nn.Module):
    """N independent linear layers: (N, B, I) -> (N, B, O) in one batched matrix product."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True, fan_in: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features)) if bias else None
        bound = 1.0 / math.sqrt(fan_in or in_features)  # nn.Linear's default initialisation, per member
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)  # (N, B, O)
        return torch.baddbmm(self.bias, x, self.weight)  # (N, B, O)


class EnsembleLayerNorm(nn.Module):
    """Layer normalisation over the last dimension of (N, B, F), with each member's own gain and bias (N, 1, F)."""

    def __init__(self, members: int, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), self.weight)


class EnsembleMLP(nn.Module):
    """ReLU MLP of `EnsembleLinear` layers; the last layer has no activation. With `layer_norm`, each hidden layer
    is normalised (`EnsembleLayerNorm`) before its ReLU.

    Under mixed-precision autocast the hidden layers run in the low precision and the last layer in fp32: the
    outputs are Q-values (bf16 resolves 0.5 at Q = 100, coarser than the one-step differences CQL has to rank) and
    the policy's mean and log-std; that narrow layer costs next to nothing in fp32."""

    def __init__(
        self, members: int, in_features: int, hidden: Sequence[int], out_features: int, layer_norm: bool = False
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(EnsembleLinear(members, a, b))
            if i < len(sizes) - 2:
                if layer_norm:
                    layers.append(EnsembleLayerNorm(members, b))
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        *hidden, last = self.net
        for layer in hidden:
            x = layer(x)
        if not torch.is_autocast_enabled(x.device.type):
            return last(x)  # type: ignore[no-any-return]
        with torch.autocast(x.device.type, enabled=False):
            return last(x.float())  # type: ignore[no-any-return]


class EnsembleObservationEncoder(nn.Module):
    """Features of an observation for each of N members: CNN features of the image (if any) and the state vector.

    Without an image the features are the state itself (the MLP head does the work); with both, the state is
    appended to the image features. The state is standardised first, (state - state_mean) / state_std, with
    statistics set from the training data (`set_state_statistics`); they are buffers, so checkpoints and exported
    policies carry them. The default (0, 1) leaves the state as it is.
    """

    def __init__(
        self,
        members: int,
        image_shape: tuple[int, int, int] | None,
        state_dim: int,
        conv: ConvConfig = ConvConfig(),
    ) -> None:
        super().__init__()
        self.members = members
        self.conv = EnsembleConvEncoder(members, image_shape, conv) if image_shape is not None else None
        self.state_dim = state_dim
        self.output_dim = (self.conv.output_dim if self.conv is not None else 0) + state_dim
        self.state_mean: Tensor
        self.state_std: Tensor
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set_state_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Standardise states with this mean and standard deviation (each (S,), std > 0) from now on."""
        if mean.shape != (self.state_dim,) or std.shape != (self.state_dim,):
            raise ValueError(f"state statistics must have shape ({self.state_dim},), got {mean.shape}, {std.shape}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("state statistics must be finite with a positive standard deviation")
        self.state_mean.copy_(mean)
        self.state_std.copy_(std)

    def forward(self, image: Tensor | None, state: Tensor) -> Tensor:
        """image (B, C, H, W) or None, state (B, S) -> (N, B, F)."""
        parts = []
        if self.conv is not None:
            if image is None:
                raise ValueError("this encoder was built for images, but the observation has none")
            parts.append(self.conv(image))  # (N, B, Fi)
        if self.state_dim:
            state = (state - self.state_mean) / self.state_std
            parts.append(state.unsqueeze(0).expand(self.members, -1, -1))  # (N, B, S)
        return torch.cat(parts, dim=-1)


def set_state_statistics(modules: Iterable[nn.Module], mean: Tensor, std: Tensor) -> None:
    """Set the state standardisation of every observation encoder inside `modules`."""
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, EnsembleObservationEncoder):
                sub.set_state_statistics(mean.to(sub.state_mean), std.to(sub.state_std))


class QEnsemble(nn.Module):
    """N Q-functions Q_n(s, a), each with its own encoder; an observation is encoded once and its features are
    reused for every action it is paired with (the reference CQL implementations re-encode per sampled action).

    The head's first layer on [features; action] is computed as W_f features + W_a action + b: the large W_f
    product runs once per observation, not once per (observation, action) pair. It is the same function and the
    same parameter count as a layer on the concatenation.

    With `layer_norm`, every hidden layer of the head (the first included, after the sum) is layer-normalised before
    its ReLU, each member with its own gain and bias. It bounds what a critic can extrapolate to actions and states
    far from the data (Ball et al. 2023, "Efficient Online RL with Offline Data"; Tarasov et al. 2023, ReBRAC).
    """

    def __init__(
        self,
        members: int,
        image_shape: tuple[int, int, int] | None,
        state_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (1024, 512, 256),
        conv: ConvConfig = ConvConfig(),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("QEnsemble needs at least one hidden layer")
        self.members, self.action_dim, self.layer_norm = members, action_dim, layer_norm
        self.encoder = EnsembleObservationEncoder(members, image_shape, state_dim, conv)
        fan_in = self.encoder.output_dim + action_dim
        self.feature_in = EnsembleLinear(members, self.encoder.output_dim, hidden[0], fan_in=fan_in)
        self.action_in = EnsembleLinear(members, action_dim, hidden[0], bias=False, fan_in=fan_in)
        self.norm_in = EnsembleLayerNorm(members, hidden[0]) if layer_norm else None
        self.head = EnsembleMLP(members, hidden[0], hidden[1:], 1, layer_norm)

    def encode(self, image: Tensor | None, state: Tensor) -> Tensor:
        return self.encoder(image, state)  # type: ignore[no-any-return]  # (N, B, F)

    def q(self, features: Tensor, actions: Tensor) -> Tensor:
        """features (N, B, F), actions (B, K, A) or (N, B, K, A) -> Q (N, B, K)."""
        n, b, _ = features.shape
        k = actions.shape[-2]
        if actions.dim() == 3:
            actions = actions.unsqueeze(0).expand(n, -1, -1, -1)  # (N, B, K, A)
        from_obs = self.feature_in(features)  # (N, B, H): once per observation
        from_action = self.action_in(actions.reshape(n, b * k, -1)).reshape(n, b, k, -1)  # (N, B, K, H)
        hidden = (from_obs.unsqueeze(2) + from_action).reshape(n, b * k, -1)  # (N, B*K, H)
        if self.norm_in is not None:
            hidden = self.norm_in(hidden)
        q: Tensor = self.head(torch.relu(hidden))  # (N, B*K, 1)
        return q.reshape(n, b, k)

    def forward(self, image: Tensor | None, state: Tensor, action: Tensor) -> Tensor:
        """Q of each member for one action per observation: (N, B)."""
        return self.q(self.encode(image, state), action.unsqueeze(1)).squeeze(-1)


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(u), u ~ N(mu(s), sigma(s)^2): SAC's squashed Gaussian policy (Haarnoja et al., 2018)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None,
        state_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (1024, 512, 256),
        conv: ConvConfig = ConvConfig(),
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.encoder = EnsembleObservationEncoder(1, image_shape, state_dim, conv)
        self.head = EnsembleMLP(1, self.encoder.output_dim, hidden, 2 * action_dim)

    def encode(self, image: Tensor | None, state: Tensor) -> Tensor:
        return self.encoder(image, state)[0]  # type: ignore[no-any-return]  # (B, F)

    def distribution(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, F) -> mean (B, A), log_std (B, A) of the Gaussian before the tanh."""
        out = self.head(features.unsqueeze(0))[0]  # (B, 2A)
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, features: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """K reparameterised actions per observation and their log-probabilities: (B, K, A), (B, K)."""
        mean, log_std = self.distribution(features)
        noise = torch.randn(mean.shape[0], k, mean.shape[1], device=mean.device, dtype=mean.dtype)  # (B, K, A)
        u = mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * noise  # (B, K, A)
        action = torch.tanh(u)
        # log N(u; mu, sigma) - sum log(1 - tanh(u)^2), the latter in the stable form 2 (log 2 - u - softplus(-2u)).
        log_prob = (-0.5 * noise.pow(2) - log_std.unsqueeze(1) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return action, log_prob

    def log_prob(self, features: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
        """log pi(a|s) for given actions (B, A) in (-1, 1): (B,). Used by BC and the BC warm start."""
        mean, log_std = self.distribution(features)
        a = action.clamp(-1 + eps, 1 - eps)
        u = torch.atanh(a)
        log_n = (-0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_n - torch.log1p(-a.pow(2) + eps).sum(-1)

    def deterministic(self, features: Tensor) -> Tensor:
        """The mean action tanh(mu(s)): (B, A)."""
        return torch.tanh(self.distribution(features)[0])

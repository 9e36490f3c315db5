"""The pessimistic Q-ensemble of Lee et al. (CoRL 2021, https://arxiv.org/abs/2107.00591), Sec. 4.2: the pieces that
do not depend on the fine-tuning trainer.

The idea, in our words: N agents are pre-trained offline with CQL, independently (different seeds), so each has a
pessimistic critic and its own policy. For fine-tuning they are joined into one agent. Its value is the average of
the members' values, which stays pessimistic where all of them are (the offline values do not collapse when the
first online data arrive) while no single member's error on unfamiliar actions decides the policy update. Its
policy is one Gaussian that matches the first two moments of the equal-weight mixture of the members' Gaussians.
The whole ensemble is then fine-tuned with SAC (no CQL term), from balanced replay.

Definitions used here (the authors' code, `rlkit/torch/sac/ours.py` and `examples/ours.py` of shlee94/Off2OnRL,
where each CQL agent has twin critics):

    Q_i(s, a)   = min_{m=1,2} Q_{i,m}(s, a)                  agent i's value: the min over its own twin
    Q^E(s, a)   = 1/N sum_i Q_i(s, a)                        the ensemble's value (`ensemble_q`)
    pi^E(.|s)   = tanh of N(mu, sigma^2),  mu = 1/N sum_i mu_i(s),
                  sigma^2 = 1/N sum_i (sigma_i(s)^2 + mu_i(s)^2) - mu^2       (per action dimension, pre-tanh)

and, in that code's SAC update, with one a' ~ pi^E(.|s') shared by all agents:

    y_i = r + gamma (1 - d) (min_m Qbar_{i,m}(s', a') - alpha log pi^E(a'|s'))   agent i's own target (`agent_min_q`)
    L_Q = sum_i sum_m mean (Q_{i,m}(s, a) - y_i)^2
    L_pi = mean alpha log pi^E(a~|s) - Q^E(s, a~),  a~ ~ pi^E(.|s)

so the policy that is trained is the moment-matched one: its gradient reaches every member's mu_i and sigma_i through
the moment matching. Per-member sampling and log-probabilities (`EnsembleActor.sample`, `log_prob`) are here as
well, for per-member losses and for checks.

Layout: the N agents' twin critics are one `QEnsemble` with N * M members, agent-major (member i * M + m is critic m
of agent i; `stack_critics`), and the N actors one `EnsembleActor`; each is computed in one batched forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robot_rl.networks import (
    ConvConfig,
    EnsembleConvEncoder,
    EnsembleLinear,
    EnsembleMLP,
    EnsembleObservationEncoder,
    QEnsemble,
    TanhGaussianActor,
)
from robot_rl.networks.modules import LOG_STD_MAX, LOG_STD_MIN

DEFAULT_CONV = ConvConfig()
"""COG's image encoder, the default of every network here."""


# -- the ensemble's value ----------------------------------------------------------------------------------------
def agent_min_q(q_all: Tensor, agents: int, critics_per_agent: int) -> Tensor:
    """Each agent's value, the min over its own critics: q_all (N*M, ...) agent-major -> (N, ...).

    This is what each agent's TD target bootstraps from (with the target critics' values)."""
    if agents < 1 or critics_per_agent < 1 or q_all.dim() < 1 or q_all.shape[0] != agents * critics_per_agent:
        raise ValueError(
            f"q_all must have agents * critics_per_agent = {agents} * {critics_per_agent} rows, "
            f"got {tuple(q_all.shape)}"
        )
    per_critic = q_all.reshape(agents, critics_per_agent, *q_all.shape[1:])  # (N, M, ...)
    return per_critic.min(dim=1).values  # (N, ...)


def ensemble_q(q_all: Tensor, agents: int, critics_per_agent: int) -> Tensor:
    """Q^E = the mean over agents of each agent's min over its twin: q_all (N*M, ...) agent-major -> (...).

    The value the ensemble's policy maximises (see the module docstring)."""
    return agent_min_q(q_all, agents, critics_per_agent).mean(dim=0)


# -- the ensemble's policy -----------------------------------------------------------------------------------------
def moment_matched_gaussian(means: Tensor, stds: Tensor) -> tuple[Tensor, Tensor]:
    """The Gaussian with the first two moments of the equal-weight mixture of N diagonal Gaussians.

    means, stds (N, ..., A), e.g. (N, B, A) -> mean, std (..., A):

        mean = 1/N sum_n mu_n,    var = 1/N sum_n (sigma_n^2 + mu_n^2) - mean^2,

    per dimension (the mixture's covariance across dimensions is dropped: the result is diagonal, like the
    members). Computed as var = 1/N sum_n sigma_n^2 + 1/N sum_n (mu_n - mean)^2, the same quantity without the
    cancellation of two large terms, so it is never negative and identical members give back that member exactly.

    It is applied to the pre-tanh Gaussians: the acting policy is a = tanh(u), u ~ N(mean, std^2), or tanh(mean)
    for deterministic acting. (The moments of the squashed actions themselves are not matched.)
    """
    if means.shape != stds.shape or means.dim() < 2 or means.shape[0] < 1:
        raise ValueError(f"means and stds must both be (N, ..., A), got {tuple(means.shape)}, {tuple(stds.shape)}")
    mean = means.mean(dim=0)  # (..., A)
    var = stds.pow(2).mean(dim=0) + (means - mean).pow(2).mean(dim=0)  # (..., A)
    return mean, var.sqrt()


def tanh_gaussian_sample(mean: Tensor, log_std: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """K reparameterised samples a = tanh(u), u ~ N(mean, exp(log_std)^2), and log pi(a): mean, log_std (..., A) ->
    actions (..., K, A), log-probabilities (..., K). The same density as `TanhGaussianActor.sample`."""
    noise = torch.randn(*mean.shape[:-1], k, mean.shape[-1], device=mean.device, dtype=mean.dtype)  # (..., K, A)
    u = mean.unsqueeze(-2) + log_std.exp().unsqueeze(-2) * noise  # (..., K, A)
    # log N(u; mu, sigma) - sum log(1 - tanh(u)^2), the latter in the stable form 2 (log 2 - u - softplus(-2u)).
    log_prob = (-0.5 * noise.pow(2) - log_std.unsqueeze(-2) - 0.5 * math.log(2 * math.pi)).sum(-1)  # (..., K)
    log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
    return torch.tanh(u), log_prob


def tanh_gaussian_log_prob(mean: Tensor, log_std: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
    """log pi(a) of actions (..., A) in (-1, 1) under tanh(N(mean, exp(log_std)^2)), mean and log_std broadcastable
    to (..., A): (...). The same density and clamping as `TanhGaussianActor.log_prob`."""
    a = action.clamp(-1 + eps, 1 - eps)
    u = torch.atanh(a)
    log_n = (-0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return log_n - torch.log1p(-a.pow(2) + eps).sum(-1)


class EnsembleActor(nn.Module):
    """N independent tanh-Gaussian actors in one batched forward; acting uses their moment-matched Gaussian.

    Member n is exactly a `TanhGaussianActor` with member n's weights (same parameter names, stacked along the
    first dimension), so `from_members` can join N trained actors.
    """

    def __init__(
        self,
        members: int,
        image_shape: tuple[int, int, int] | None,
        state_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (1024, 512, 256),
        conv: ConvConfig = DEFAULT_CONV,
    ) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.members, self.action_dim = members, action_dim
        self.encoder = EnsembleObservationEncoder(members, image_shape, state_dim, conv)
        self.head = EnsembleMLP(members, self.encoder.output_dim, hidden, 2 * action_dim)

    def encode(self, image: Tensor | None, state: Tensor) -> Tensor:
        """image (B, C, H, W) or None, state (B, S) -> each member's features (N, B, F)."""
        return self.encoder(image, state)  # type: ignore[no-any-return]

    def distribution(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, B, F) -> each member's mean (N, B, A) and log_std (N, B, A) of the Gaussian before the tanh."""
        out = self.head(features)  # (N, B, 2A)
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, features: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """K reparameterised actions per observation from each member, and their log-probabilities under that
        member: features (N, B, F) -> (N, B, K, A), (N, B, K)."""
        return tanh_gaussian_sample(*self.distribution(features), k)

    def log_prob(self, features: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
        """log pi_n(a|s) of each member for actions (B, A) (the same for all members) or (N, B, A): (N, B)."""
        mean, log_std = self.distribution(features)  # (N, B, A) each
        return tanh_gaussian_log_prob(mean, log_std, action, eps)

    def moment_matched(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The ensemble policy's pre-tanh Gaussian: features (N, B, F) -> mean (B, A), log_std (B, A).

        log_std is clamped to the members' range [LOG_STD_MIN, LOG_STD_MAX] (as the authors' code clamps the
        matched std): members whose means disagree widely can give a matched std above exp(LOG_STD_MAX)."""
        means, log_stds = self.distribution(features)  # (N, B, A) each
        mean, std = moment_matched_gaussian(means, log_stds.exp())  # (B, A) each
        return mean, std.log().clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample_moment_matched(self, features: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """K reparameterised actions of the ensemble policy pi^E and log pi^E: features (N, B, F) -> (B, K, A), (B, K).
        This is what the authors' SAC update samples for both the actor's loss and the TD target."""
        return tanh_gaussian_sample(*self.moment_matched(features), k)

    def log_prob_moment_matched(self, features: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
        """log pi^E(a|s) of actions (B, A): (B,)."""
        mean, log_std = self.moment_matched(features)  # (B, A) each
        return tanh_gaussian_log_prob(mean, log_std, action, eps)

    def act(self, image: Tensor | None, state: Tensor, deterministic: bool = True) -> Tensor:
        """The ensemble policy's action (B, A), without gradient: tanh of the moment-matched mean, or of one sample of
        the moment-matched Gaussian (torch's global generator)."""
        with torch.no_grad():
            mean, log_std = self.moment_matched(self.encode(image, state))  # (B, A) each
            if deterministic:
                return torch.tanh(mean)
            return tanh_gaussian_sample(mean, log_std, 1)[0][:, 0]  # (B, A)

    @classmethod
    def from_members(cls, actors: Sequence[TanhGaussianActor]) -> EnsembleActor:
        """One N-member ensemble holding copies of N trained actors of the same architecture, member n = actors[n].

        The architecture is read from the actors' weights and layers. Their state standardisation (the encoder's
        state_mean and state_std buffers) is shared by all members, so it must be identical; otherwise, or if the
        architectures differ, a ValueError is raised. The result is on the first actor's device.
        """
        if not actors:
            raise ValueError("from_members needs at least one actor")
        first = actors[0]
        image_shape, conv = _image_architecture(first.encoder)
        hidden = _mlp_sizes(first.head)[1:-1]
        for actor in actors[1:]:
            if _image_architecture(actor.encoder)[1] != conv:
                raise ValueError("the actors' image encoders differ in architecture")
        ensemble = cls(len(actors), image_shape, first.encoder.state_dim, first.action_dim, hidden, conv)
        _load_stacked(ensemble, actors)
        return ensemble.to(next(first.parameters()).device)


# -- joining trained networks ------------------------------------------------------------------------------------
def stack_critics(qs: Sequence[QEnsemble]) -> QEnsemble:
    """One `QEnsemble` with N * M members from N critics of M members each (same architecture), agent-major:
    member i * M + m is member m of qs[i] (the layout `agent_min_q` and `ensemble_q` expect).

    Stacking is along the first dimension of every parameter: grouped-convolution weights and biases are stacked
    along output channels (member-major), `EnsembleLinear` weights (M, in, out) and biases (M, 1, out) along members.
    The state standardisation buffers are shared and must be identical across the critics, else ValueError. Use it
    for the online critics and, separately, for their targets. The result is on the first critic's device.
    """
    if not qs:
        raise ValueError("stack_critics needs at least one critic")
    first = qs[0]
    image_shape, conv = _image_architecture(first.encoder)
    for q in qs[1:]:
        if q.members != first.members or _image_architecture(q.encoder)[1] != conv:
            raise ValueError("the critics differ in members or image-encoder architecture")
    hidden = (first.feature_in.weight.shape[2], *_mlp_sizes(first.head)[1:-1])
    if any(q.layer_norm != first.layer_norm for q in qs[1:]):
        raise ValueError("the critics differ in layer normalisation")
    stacked = QEnsemble(
        len(qs) * first.members, image_shape, first.encoder.state_dim, first.action_dim, hidden, conv, first.layer_norm
    )
    _load_stacked(stacked, qs)
    return stacked.to(next(first.parameters()).device)


def actor_architecture(actor: TanhGaussianActor | EnsembleActor) -> tuple[tuple[int, ...], ConvConfig]:
    """An actor's hidden sizes and image-encoder `ConvConfig` (COG's default without images), read from its layers."""
    return tuple(_mlp_sizes(actor.head)[1:-1]), _image_architecture(actor.encoder)[1]


def _mlp_sizes(mlp: EnsembleMLP) -> list[int]:
    """[in, hidden..., out] of an `EnsembleMLP`, from its weights (N, in, out)."""
    linears = [layer for layer in mlp.net if isinstance(layer, EnsembleLinear)]
    return [layer.weight.shape[1] for layer in linears] + [linears[-1].weight.shape[2]]


def _image_architecture(encoder: EnsembleObservationEncoder) -> tuple[tuple[int, int, int] | None, ConvConfig]:
    """The `ConvConfig` of an observation encoder's CNN, read from its layers, and an image shape (H, W, C) that
    rebuilds it with the same number of features (None without a CNN).

    A CNN's weights do not depend on H and W, and the encoders use the image shape only to count their output
    features, which the head's first layer fixes. So the stand-in shape (cells * 2^p, 2^p, C), with p the number of
    halvings and cells = features / last channels, rebuilds an identical network that accepts the real images.
    """
    cnn = encoder.conv
    if cnn is None:
        return None, ConvConfig()
    channels, kernels, strides, pooled = _conv_layers(cnn)
    if len(set(kernels)) != 1:
        raise ValueError(f"convolutions with different kernel sizes {kernels} are not a ConvConfig")
    strided = any(s == 2 for s in strides)
    pool = tuple(s == 2 for s in strides) if strided else tuple(pooled)
    conv = ConvConfig(channels=tuple(channels), kernel=kernels[0], pool=pool, strided=strided)
    first = next(layer for layer in cnn.net if isinstance(layer, nn.Conv2d))
    in_channels = first.in_channels // first.groups  # the image's channels (the first layer is not grouped)
    cells, rest = divmod(cnn.output_dim, channels[-1])
    if rest:
        raise ValueError(f"{cnn.output_dim} image features are not a multiple of {channels[-1]} channels")
    side = 2 ** sum(pool)
    return (cells * side, side, in_channels), conv


def _conv_layers(cnn: EnsembleConvEncoder) -> tuple[list[int], list[int], list[int], list[bool]]:
    """Per convolution of an ensemble CNN: output channels per member, kernel size, stride, pooled after it."""
    channels: list[int] = []
    kernels: list[int] = []
    strides: list[int] = []
    pooled: list[bool] = []
    for layer in cnn.net:
        if isinstance(layer, nn.Conv2d):
            channels.append(layer.out_channels // cnn.members)
            kernels.append(int(layer.kernel_size[0]))
            strides.append(int(layer.stride[0]))
            pooled.append(False)
        elif isinstance(layer, nn.MaxPool2d):
            pooled[-1] = True
    return channels, kernels, strides, pooled


def _load_stacked(ensemble: nn.Module, members: Sequence[nn.Module]) -> None:
    """Load into `ensemble` the members' parameters concatenated along their first dimension; buffers (the state
    standardisation) are shared and must be equal across members."""
    states = [member.state_dict() for member in members]
    buffers = {name for name, _ in members[0].named_buffers()}
    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != reference.keys() or any(state[k].shape != reference[k].shape for k in reference):
            raise ValueError(f"member {i} differs from member 0 in architecture (parameter names or shapes)")
    stacked: dict[str, Tensor] = {}
    for name, value in reference.items():
        values = [state[name].to(value.device) for state in states]
        if name in buffers:
            if not all(torch.equal(v, value) for v in values[1:]):
                raise ValueError(f"the members' {name} differ; the ensemble shares one state standardisation")
            stacked[name] = value
        else:
            stacked[name] = torch.cat(values, dim=0)
    ensemble.load_state_dict(stacked)

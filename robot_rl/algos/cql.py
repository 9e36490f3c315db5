"""Conservative Q-Learning on SAC, CQL(H) (Kumar et al., NeurIPS 2020, https://arxiv.org/abs/2006.04779).

COG (Singh et al., CoRL 2020) is this algorithm trained on batches mixed from task and prior data (prior rewards
relabelled to 0); the mixing lives in the samplers, not here.

Critic ensemble Q_1..Q_N with targets Qbar_n, tanh-Gaussian policy pi, entropy temperature alpha. For a batch of
(s, a, r, s', d) with d = terminated (truncation bootstraps as usual):

    y = r + gamma (1 - d) (min_n Qbar_n(s', a') - [entropy backup] alpha log pi(a'|s')),  a' ~ pi(.|s')
      (with n-step returns, r is the data's discounted m-step sum and gamma is gamma^m, per transition)
    L_TD(Q_n) = mean (Q_n(s, a) - y)^2
    L_CQL(Q_n) = mean_s [ log sum_j exp(Q_n(s, a_j) - log w_j) ] - mean Q_n(s, a)
      over K uniform actions (w = 2^-A, the uniform density on [-1,1]^A), K actions from pi(.|s) and K from
      pi(.|s') (w = their policy density); the log-sum-exp estimates log int exp Q(s, a) da (CQL(H), eq. 4,
      importance sampled as in the authors' code)
    L_critic = sum_n L_TD(Q_n) + w_cql L_CQL(Q_n),  w_cql fixed or alpha' (Lagrange): alpha' (L_CQL - tau)
    L_actor = mean alpha log pi(a~|s) - min_n Q_n(s, a~),  a~ ~ pi(.|s)   (BC warm start: log pi(a|s) in place of Q;
      with bc_weight w, - w mean|Q| log pi(a|s) is added after it; with actor_objective "awr", the critic's term
      is replaced by w(s, a) log pi(a|s), w = min(exp(A / (T mean|Q|)), max weight) normalised by its batch mean,
      A(s, a) = min_n Q_n(s, a) - min_n Q_n(s, a~))
    L_alpha = -mean log alpha (log pi(a~|s) + target entropy)

Each observation is encoded once per network and its features are reused for every action it is paired with.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from robot_rl.algos.batch import TorchBatch, autocast
from robot_rl.algos.optim import adam, frozen, polyak
from robot_rl.networks import ConvConfig, QEnsemble, TanhGaussianActor


@dataclass(frozen=True)
class CQLConfig:
    """CQL(H) on SAC. Defaults follow COG's image experiments where they state them."""

    discount: float = 0.99
    """gamma."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    critics: int = 2
    """Members of the critic ensemble (twin by default)."""
    hidden: tuple[int, ...] = (1024, 512, 256)
    """Hidden layers of the critic and actor heads (COG)."""
    conv: ConvConfig = field(default_factory=ConvConfig)
    """Image encoder of each network (COG's by default)."""
    critic_layer_norm: bool = False
    """Layer-normalise every hidden layer of the critics' heads (see `QEnsemble`). COG: off."""
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 1e-4
    init_alpha: float = 1.0
    target_entropy: float | None = None
    """Target policy entropy; None means -A (SAC's heuristic)."""
    cql_weight: float = 1.0
    """w_cql, the conservative term's weight (the start value of alpha' with `lagrange`)."""
    lagrange: bool = False
    """Tune the conservative weight alpha' by dual gradient descent against `target_gap`."""
    target_gap: float = 10.0
    """tau of the Lagrange version: the aimed-for gap between the log-sum-exp and the data's Q."""
    sampled_actions: int = 1
    """K: uniform and policy actions sampled per observation for the conservative term (COG 1, CQL paper 10)."""
    importance_sampling: bool = True
    """Divide each sampled action's exp Q by its density in the log-sum-exp (CQL(H) as in the authors' code). Off,
    the log-sum-exp runs over the raw Q-values (uniform weights): a concentrated policy's actions are then pushed
    down as hard as uniform ones, where importance weights 1/pi(a|s) let them escape the penalty."""
    target_range: tuple[float, float] | None = None
    """Clip the TD target y to [low, high]: the returns any policy can have, e.g. (0, 1 / (1 - gamma)) for rewards in
    [0, 1]. Values outside are impossible; CQL's push-down on the policy's actions otherwise compounds through the
    bootstrap (each backup loses the gap between the data's action and the policy's), so Q drifts far below 0."""
    backup: Literal["entropy", "deterministic"] = "deterministic"
    """Entropy term in the TD target or not (COG: deterministic)."""
    bc_warm_start_steps: int = 0
    """Train the actor by behaviour cloning for this many first updates (COG: 10000)."""
    bc_action_margin: float = 0.01
    """The BC warm start clamps data actions to [-1 + margin, 1 - margin] (see `BCConfig.action_margin`)."""
    bc_weight: float = 0.0
    """After the warm start, add the data's log-likelihood to the actor's objective with this weight times the
    batch's mean |Q| (TD3+BC's normalisation, Fujimoto & Gu 2021, for a stochastic policy): the policy stays near
    the data's actions where the critic does not clearly prefer others. 0 (COG): the critic alone."""
    actor_objective: Literal["sac", "awr"] = "sac"
    """After the warm start, "sac" (COG) trains the actor on the critic's value of its own sampled actions; "awr"
    extracts it from the data instead, by advantage-weighted regression (AWR, Peng et al. 2019; CRR, Wang et al.
    2020): maximise exp(A(s, a) / T) log pi(a|s) over the batch's actions a (the weights normalised by their batch
    mean, as AWAC), A(s, a) = Q(s, a) - Q(s, a~), a~ ~ pi(.|s). The critic is trained as before (CQL); the actor
    never leaves the data's support, and among the data's actions it prefers those the critic ranks above what the
    policy does now."""
    awr_temperature: float = 0.05
    """T of "awr", in units of the batch's mean |Q| (so that it does not depend on the reward's scale): with
    rewards scaled to Q in [0, 100] and |Q| ~ 70, 0.05 weighs an advantage of 3.5 by e."""
    awr_max_weight: float = 100.0
    """Clip of the AWR weights exp(A / T), so that a few overestimated actions cannot take over the batch."""
    actor_lr_cosine_steps: int = 0
    """0 (COG): the actor's learning rate stays `actor_lr`. N > 0: after the BC warm start it follows a half cosine
    from `actor_lr` down to 0 at update N (IQL's schedule, Kostrikov et al. 2021), then stays 0; set N to the run's
    steps. An actor that follows a critic which keeps moving can lose what it had learnt late in a run; the
    schedule lets it settle. The rate depends on the update count alone, so a resumed run takes up the same rates."""
    actor_average: float = 0.0
    """Polyak rate of a running average of the actor's weights (`CQL.actor_average`, updated after every actor
    step); when above 0, the averaged actor is the one evaluated and deployed (the live one is evaluated beside it).
    0: no average (COG). The live actor follows a critic that keeps moving, and its success swings from one
    evaluation to the next; the average over the last ~1 / rate steps does not chase each swing."""


def check_cql_config(cfg: CQLConfig) -> None:
    """Refuse settings that cannot train (ValueError naming the field)."""
    if not (math.isfinite(cfg.bc_weight) and cfg.bc_weight >= 0):
        raise ValueError(f"bc_weight must be a finite number >= 0, got {cfg.bc_weight}")
    if cfg.actor_objective not in ("sac", "awr"):
        raise ValueError(f"actor_objective must be 'sac' or 'awr', got {cfg.actor_objective!r}")
    if not (math.isfinite(cfg.awr_temperature) and cfg.awr_temperature > 0):
        raise ValueError(f"awr_temperature must be a finite number > 0, got {cfg.awr_temperature}")
    if not (math.isfinite(cfg.awr_max_weight) and cfg.awr_max_weight >= 1):
        raise ValueError(f"awr_max_weight must be a finite number >= 1, got {cfg.awr_max_weight}")
    if not (math.isfinite(cfg.actor_average) and 0 <= cfg.actor_average <= 1):
        raise ValueError(f"actor_average must be a number in [0, 1], got {cfg.actor_average}")
    if cfg.actor_lr_cosine_steps < 0:
        raise ValueError(f"actor_lr_cosine_steps must be >= 0, got {cfg.actor_lr_cosine_steps}")
    if 0 < cfg.actor_lr_cosine_steps <= cfg.bc_warm_start_steps:
        raise ValueError(
            f"actor_lr_cosine_steps ({cfg.actor_lr_cosine_steps}) must be above bc_warm_start_steps "
            f"({cfg.bc_warm_start_steps}): the cosine runs from the end of the warm start"
        )
    if cfg.lagrange and cfg.cql_weight <= 0:
        raise ValueError(f"cql_weight must be > 0 with lagrange (it is alpha'), got {cfg.cql_weight}")


def actor_learning_rate(cfg: CQLConfig, step: int) -> float:
    """The actor's learning rate at update `step` (0-based; see `CQLConfig.actor_lr_cosine_steps`)."""
    start, end = cfg.bc_warm_start_steps, cfg.actor_lr_cosine_steps
    if end <= 0 or step < start:
        return cfg.actor_lr
    progress = min(1.0, (step - start) / (end - start))
    return cfg.actor_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def conservative_gap(
    q_all: Tensor, policy_log_prob: Tensor, next_policy_log_prob: Tensor, action_dim: int, importance_sampling: bool
) -> Tensor:
    """L_CQL per member. q_all (N, B, 1 + 3K) holds Q at the data's action, then at K uniform, K pi(.|s) and K
    pi(.|s') actions, in that order; the log-probabilities are (B, K) each. Returns (N,): the log-sum-exp over the
    3K samples, each divided by its density (or all by 3K without importance sampling), minus Q at the data's
    action, both averaged over the batch."""
    b, k = policy_log_prob.shape
    if importance_sampling:
        uniform = torch.full((b, k), -action_dim * math.log(2.0), device=q_all.device)  # uniform on [-1, 1]^A
        log_density = torch.cat([uniform, policy_log_prob, next_policy_log_prob], dim=1)  # (B, 3K)
    else:
        log_density = torch.full((b, 3 * k), math.log(3 * k), device=q_all.device)  # the mean over the samples
    logsumexp = torch.logsumexp(q_all[:, :, 1:] - log_density.unsqueeze(0), dim=2)  # (N, B)
    return logsumexp.mean(dim=1) - q_all[:, :, 0].mean(dim=1)


def critic_loss(
    q: QEnsemble,
    q_target: QEnsemble,
    actor: TanhGaussianActor,
    actor_features: Tensor,
    batch: TorchBatch,
    alpha: Tensor,
    cql_weight: Tensor,
    cfg: CQLConfig,
) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    """L_critic (see the module docstring). `actor_features` (B, Fa) are the actor's features of s (used detached
    here). Returns (loss, the conservative term per member (N,), the critic's detached features of s (N, B, F) for
    the actor's loss, metrics)."""
    k, a_dim = cfg.sampled_actions, q.action_dim
    actor_features = actor_features.detach()
    with torch.no_grad():
        next_actor_features = actor.encode(batch.next_obs.image, batch.next_obs.state)  # (B, Fa)
        next_action, next_log_prob = actor.sample(next_actor_features, 1)  # (B, 1, A), (B, 1)
        next_q = q_target.q(q_target.encode(batch.next_obs.image, batch.next_obs.state), next_action)  # (N, B, 1)
        next_v = next_q.min(dim=0).values.squeeze(-1)  # (B,)
        if cfg.backup == "entropy":
            next_v = next_v - alpha * next_log_prob.squeeze(-1)
        discount = cfg.discount if batch.discount is None else batch.discount  # gamma, or gamma^m (n-step)
        target = batch.reward + discount * (1.0 - batch.terminated) * next_v  # (B,)
        if cfg.target_range is not None:
            target = target.clamp(cfg.target_range[0], cfg.target_range[1])

        policy_actions, policy_log_prob = actor.sample(actor_features, k)  # (B, K, A), (B, K)
        next_policy_actions, next_policy_log_prob = actor.sample(next_actor_features, k)  # (B, K, A), (B, K)
        b = batch.action.shape[0]
        uniform = torch.rand(b, k, a_dim, device=batch.action.device) * 2 - 1  # (B, K, A)

    features = q.encode(batch.obs.image, batch.obs.state)  # (N, B, F): once for all 1 + 3K actions
    actions = torch.cat([batch.action.unsqueeze(1), uniform, policy_actions, next_policy_actions], dim=1)
    q_all = q.q(features, actions)  # (N, B, 1 + 3K)
    q_data = q_all[:, :, 0]  # (N, B)
    td = (q_data - target.unsqueeze(0)).pow(2).mean(dim=1)  # (N,)

    conservative = conservative_gap(q_all, policy_log_prob, next_policy_log_prob, a_dim, cfg.importance_sampling)
    penalty = cql_weight * (conservative - cfg.target_gap) if cfg.lagrange else cql_weight * conservative
    loss = (td + penalty).sum()
    metrics = {
        "critic/td_loss": td.mean().item(),
        "critic/cql_gap": conservative.mean().item(),
        "critic/q_data": q_data.mean().item(),
        "critic/target": target.mean().item(),
    }
    return loss, conservative, features.detach(), metrics


def actor_loss(
    q: QEnsemble,
    actor: TanhGaussianActor,
    features: Tensor,
    critic_features: Tensor,
    batch: TorchBatch,
    alpha: Tensor,
    bc: bool,
    bc_margin: float = 0.01,
    bc_weight: float = 0.0,
    awr: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """L_actor; with `bc`, the BC warm start; with `awr` = (temperature, max weight), advantage-weighted regression
    onto the data's actions (see `CQLConfig.actor_objective`). `features` (B, Fa) are the actor's features of s (with
    gradient); `critic_features` (N, B, F) the critic's, detached, so that only the actor is trained by this loss.
    Returns (loss, log pi of the sampled actions (B,), metrics)."""
    action, log_prob = actor.sample(features, 1)  # (B, 1, A), (B, 1)
    log_prob = log_prob.squeeze(1)
    metrics: dict[str, float] = {}
    # BC warm start: the data's log-likelihood in place of the critic's value.
    if bc:
        value = actor.log_prob(features, batch.action, eps=bc_margin)
    elif awr is not None:
        temperature, max_weight = awr
        with torch.no_grad():
            both = torch.cat([batch.action.unsqueeze(1), action], dim=1)  # (B, 2, A): the data's, the policy's
            q_both = q.q(critic_features, both).min(dim=0).values  # (B, 2)
            advantage = q_both[:, 0] - q_both[:, 1]
            scale = temperature * q_both.abs().mean().clamp(min=1e-6)
            log_weight = (advantage / scale).clamp(max=math.log(max_weight))
            # min(exp(.), max) over its batch mean, as a softmax (AWAC's): BC's scale whatever the advantages, and no
            # overflow or 0/0 however small the temperature.
            share = torch.softmax(log_weight, dim=0)  # (B,)
        value = share * len(share) * actor.log_prob(features, batch.action, eps=bc_margin)
        metrics = {"actor/awr_advantage": advantage.mean().item(), "actor/awr_max_share": share.max().item()}
    else:
        with frozen(q):
            value = q.q(critic_features, action).min(dim=0).values[:, 0]
        if bc_weight > 0:  # TD3+BC-style anchor: the data's log-likelihood, on the scale of the batch's Q
            value = value + bc_weight * value.abs().mean().detach() * actor.log_prob(features, batch.action, bc_margin)
    loss = (alpha.detach() * log_prob - value).mean()
    return loss, log_prob.detach(), {"actor/loss": loss.item(), "actor/entropy": -log_prob.mean().item(), **metrics}


def alpha_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> tuple[Tensor, dict[str, float]]:
    """L_alpha: raise alpha when the policy's entropy is below the target, lower it when above."""
    loss = -(log_alpha * (log_prob + target_entropy)).mean()
    return loss, {"alpha/value": log_alpha.exp().item()}


class CQL:
    """The CQL agent: networks, targets, temperatures and optimisers; `update` takes one gradient step of each."""

    def __init__(
        self,
        cfg: CQLConfig,
        image_shape: tuple[int, int, int] | None,
        state_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.q = QEnsemble(
            cfg.critics, image_shape, state_dim, action_dim, cfg.hidden, cfg.conv, cfg.critic_layer_norm
        ).to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.actor = TanhGaussianActor(image_shape, state_dim, action_dim, cfg.hidden, cfg.conv).to(self.device)
        self.actor_average = copy.deepcopy(self.actor).requires_grad_(False) if cfg.actor_average > 0 else None
        """The running average of the actor's weights (with `cfg.actor_average` > 0), else None."""
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha), device=self.device))
        check_cql_config(cfg)
        # alpha' is a parameter only when tuned (log of the weight, so that it stays positive); a fixed weight may
        # be 0, which makes this plain SAC on offline data.
        log_weight = math.log(cfg.cql_weight) if cfg.lagrange else 0.0
        self.log_cql_weight = nn.Parameter(torch.tensor(log_weight, device=self.device))
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.critic_optimizer = adam(self.q.parameters(), lr=cfg.critic_lr)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.alpha_optimizer = adam([self.log_alpha], lr=cfg.alpha_lr)
        self.cql_weight_optimizer = adam([self.log_cql_weight], lr=cfg.critic_lr)
        self.steps = 0
        self.autocast_dtype: torch.dtype | None = None
        """Mixed precision of the forward passes (torch.bfloat16 on CUDA by the trainer's default); None: fp32.
        Parameters, optimiser states and the backward's accumulation stay fp32."""

    @property
    def deployed_actor(self) -> TanhGaussianActor:
        """The actor the run deploys: the running average with `cfg.actor_average` > 0, else the live actor. It is
        what evaluation exports as the run's policy and what fine-tuning starts from."""
        return self.actor if self.actor_average is None else self.actor_average

    def autocast(self) -> torch.autocast:
        return autocast(self.device, self.autocast_dtype)

    def update(self, batch: TorchBatch) -> dict[str, float]:
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()
        cql_weight = self.log_cql_weight.exp().clamp(max=1e6) if cfg.lagrange else torch.tensor(cfg.cql_weight)
        # The actor's features of s, computed once: detached for the critic's policy samples, with gradient for
        # the actor's loss (the actor does not change before its own step).
        with self.autocast():
            actor_features = self.actor.encode(batch.obs.image, batch.obs.state)  # (B, Fa)
            loss, conservative, features, metrics = critic_loss(
                self.q, self.q_target, self.actor, actor_features, batch, alpha, cql_weight.detach(), cfg
            )
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()

        with self.autocast():
            a_loss, log_prob, a_metrics = actor_loss(
                self.q,
                self.actor,
                actor_features,
                features,
                batch,
                alpha,
                self.steps < cfg.bc_warm_start_steps,
                cfg.bc_action_margin,
                cfg.bc_weight,
                (cfg.awr_temperature, cfg.awr_max_weight) if cfg.actor_objective == "awr" else None,
            )
        self.actor_optimizer.zero_grad(set_to_none=True)
        a_loss.backward()
        if cfg.actor_lr_cosine_steps:
            for group in self.actor_optimizer.param_groups:
                group["lr"] = actor_learning_rate(cfg, self.steps)
        self.actor_optimizer.step()
        if self.actor_average is not None:
            polyak(self.actor_average, self.actor, cfg.actor_average)

        t_loss, t_metrics = alpha_loss(self.log_alpha, log_prob.float(), self.target_entropy)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        t_loss.backward()
        self.alpha_optimizer.step()

        if cfg.lagrange:
            # Dual ascent on alpha': it grows while the gap exceeds target_gap.
            weight = self.log_cql_weight.exp().clamp(max=1e6)
            w_loss = -(weight * (conservative.detach() - cfg.target_gap)).mean()
            self.cql_weight_optimizer.zero_grad(set_to_none=True)
            w_loss.backward()
            self.cql_weight_optimizer.step()
            metrics["critic/cql_weight"] = weight.item()

        polyak(self.q_target, self.q, cfg.tau)
        self.steps += 1
        if cfg.actor_lr_cosine_steps:
            a_metrics["actor/lr"] = self.actor_optimizer.param_groups[0]["lr"]
        return {**metrics, "critic/loss": loss.item(), **a_metrics, **t_metrics}

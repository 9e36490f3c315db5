"""The pessimistic Q-ensemble agent of Lee et al. (CoRL 2021, https://arxiv.org/abs/2107.00591), Sec. 4.2: N agents
pre-trained offline with CQL, joined into one agent and fine-tuned online with SAC.

The pieces (the moment-matched actor, the stacked critics, the ensemble's value) and their definitions live in
`robot_rl.algos.ensemble`; this file holds the losses and the agent that steps them. With N agents of M critics each
(M = 2, twin critics), Q_{i,m} agent-major in one `QEnsemble` of N * M members, targets Qbar, the moment-matched policy
pi^E (`EnsembleActor.sample_moment_matched`) and one temperature alpha, for a batch of (s, a, r, s', d), d =
terminated:

    a' ~ pi^E(.|s'), ONE action per s' shared by all agents (as the authors' code, `rlkit/torch/sac/ours.py`)
    y_i = r + gamma (1 - d) (min_m Qbar_{i,m}(s', a') - [entropy backup] alpha log pi^E(a'|s'))   (`agent_min_q`)
    L_TD = sum_i sum_m mean (Q_{i,m}(s, a) - y_i)^2
    L_CQL (only with `keep_cql`, an ablation) = sum_{i,m} w_cql (mean_s log sum_j exp(Q_{i,m}(s, a_j) - log w_j)
          - mean Q_{i,m}(s, a)), the CQL(H) term of `robot_rl.algos.cql` with pi^E as the sampling policy
    L_pi = mean alpha log pi^E(a~|s) - Q^E(s, a~),  a~ ~ pi^E(.|s),  Q^E = 1/N sum_i min_m Q_{i,m}   (`ensemble_q`)
    L_alpha = -mean log alpha (log pi^E(a~|s) + target entropy)

Why each agent bootstraps from its own twin-min at a shared a' ~ pi^E: every agent's critic then evaluates the one
policy that acts (the moment-matched one), so the TD targets are those of that policy, while each agent keeps its own
pessimism (no agent's target is pulled towards another's values). The alternative, a' from agent i's own member
policy, would make each critic evaluate a policy that never acts; we follow the authors.

N = 1 is a plain SAC agent started from one CQL agent (the paper's "single agent" ablation): the moment matching of
one Gaussian returns that Gaussian, and Q^E is its twin-min.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from robot_rl.algos.batch import TorchBatch, autocast
from robot_rl.algos.cql import CQL, alpha_loss, conservative_gap
from robot_rl.algos.ensemble import EnsembleActor, agent_min_q, ensemble_q, stack_critics
from robot_rl.algos.optim import adam, frozen, polyak
from robot_rl.networks import QEnsemble


@dataclass(frozen=True)
class PessimisticEnsembleConfig:
    """SAC fine-tuning of the joined ensemble. Defaults follow the authors' code (`examples/ours.py`) unless noted."""

    discount: float | None = None
    """gamma; None: the members' own (`CQLConfig.discount`), which must agree. The critics' values are sums
    discounted by the gamma they were trained with; fine-tuning with another one moves every Q-value at once."""
    tau: float = 0.005
    """Polyak rate of the target critics (every update)."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float | None = None
    """Starting temperature; None: the geometric mean of the members' learned temperatures. (The authors restart at
    1.0, which suits D4RL's dense returns of hundreds; with our sparse 0/1 reward Q is O(1) and alpha = 1 would let
    the entropy bonus swamp the pre-trained values in the first updates.)"""
    target_entropy: float | None = None
    """Target entropy of pi^E; None means -A (SAC's heuristic)."""
    backup: Literal["entropy", "deterministic"] = "entropy"
    """Entropy term in the TD target (SAC, the authors' fine-tuning) or not (COG's offline backup)."""
    target_range: tuple[float, float] | None = None
    """Clip the TD target y to [low, high] (see `CQLConfig.target_range`); None leaves it as it is."""
    keep_cql: bool = False
    """Keep CQL's conservative term during fine-tuning (an ablation; the paper drops it)."""
    cql_weight: float = 1.0
    """w_cql of the kept conservative term (fixed; no Lagrange tuning online)."""
    cql_sampled_actions: int = 1
    """K: uniform and policy actions per observation in the kept conservative term."""
    cql_importance_sampling: bool = True
    """Importance weights 1/density in the log-sum-exp (see `CQLConfig.importance_sampling`)."""

    def __post_init__(self) -> None:
        if (self.discount is not None and not 0.0 <= self.discount < 1.0) or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"need 0 <= discount < 1 and 0 < tau <= 1, got {self.discount}, {self.tau}")
        if min(self.actor_lr, self.critic_lr, self.alpha_lr) <= 0:
            raise ValueError("learning rates must be > 0")
        if self.init_alpha is not None and not (math.isfinite(self.init_alpha) and self.init_alpha > 0):
            raise ValueError(f"init_alpha must be finite and > 0 (or None), got {self.init_alpha}")
        if self.keep_cql and (self.cql_weight < 0 or self.cql_sampled_actions < 1):
            raise ValueError("keep_cql needs cql_weight >= 0 and cql_sampled_actions >= 1")


# -- losses --------------------------------------------------------------------------------------------------------
def ensemble_critic_loss(
    q: QEnsemble,
    q_target: QEnsemble,
    actor: EnsembleActor,
    actor_features: Tensor,
    batch: TorchBatch,
    alpha: Tensor,
    agents: int,
    cfg: PessimisticEnsembleConfig,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """L_TD (+ L_CQL with `keep_cql`), see the module docstring. `actor_features` (N, B, Fa) are the members'
    features of s (used detached). Returns (loss, the critics' detached features of s (N*M, B, F) for the actor's
    loss, metrics)."""
    critics = q.members // agents
    with torch.no_grad():
        next_actor_features = actor.encode(batch.next_obs.image, batch.next_obs.state)  # (N, B, Fa)
        next_action, next_log_prob = actor.sample_moment_matched(next_actor_features, 1)  # (B, 1, A), (B, 1)
        next_q = q_target.q(q_target.encode(batch.next_obs.image, batch.next_obs.state), next_action)  # (N*M, B, 1)
        next_v = agent_min_q(next_q, agents, critics).squeeze(-1)  # (N, B): each agent's own twin-min
        if cfg.backup == "entropy":
            next_v = next_v - alpha * next_log_prob.squeeze(-1)  # (N, B)
        assert cfg.discount is not None  # PessimisticEnsemble refuses a config without one
        discount = cfg.discount if batch.discount is None else batch.discount  # gamma, or gamma^m (n-step)
        target = batch.reward + discount * (1.0 - batch.terminated) * next_v  # (N, B)
        if cfg.target_range is not None:
            target = target.clamp(cfg.target_range[0], cfg.target_range[1])
        target = target.repeat_interleave(critics, dim=0)  # (N*M, B): critic i*M + m regresses on y_i

    features = q.encode(batch.obs.image, batch.obs.state)  # (N*M, B, F): once for every action below
    actions = batch.action.unsqueeze(1)  # (B, 1, A)
    if cfg.keep_cql:
        k, b, a_dim = cfg.cql_sampled_actions, batch.action.shape[0], q.action_dim
        with torch.no_grad():
            policy_actions, policy_log_prob = actor.sample_moment_matched(actor_features.detach(), k)  # (B, K, A)
            next_actions, next_policy_log_prob = actor.sample_moment_matched(next_actor_features, k)  # (B, K, A)
            uniform = torch.rand(b, k, a_dim, device=batch.action.device) * 2 - 1  # (B, K, A)
        actions = torch.cat([actions, uniform, policy_actions, next_actions], dim=1)  # (B, 1 + 3K, A)
    q_all = q.q(features, actions)  # (N*M, B, 1 [+ 3K])
    q_data = q_all[:, :, 0]  # (N*M, B)
    td = (q_data - target).pow(2).mean(dim=1)  # (N*M,)
    loss = td.sum()
    metrics = {
        "critic/td_loss": td.mean().item(),
        "critic/q_data": q_data.mean().item(),
        "critic/target": target.mean().item(),
        "critic/q_spread": agent_min_q(q_data, agents, critics).std(dim=0).mean().item() if agents > 1 else 0.0,
    }
    if cfg.keep_cql:
        conservative = conservative_gap(  # (N*M,)
            q_all, policy_log_prob, next_policy_log_prob, a_dim, cfg.cql_importance_sampling
        )
        loss = loss + cfg.cql_weight * conservative.sum()
        metrics["critic/cql_gap"] = conservative.mean().item()
    return loss, features.detach(), metrics


def ensemble_actor_loss(
    q: QEnsemble, actor: EnsembleActor, actor_features: Tensor, critic_features: Tensor, alpha: Tensor, agents: int
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """L_pi = mean alpha log pi^E(a~|s) - Q^E(s, a~), a~ ~ pi^E(.|s). `actor_features` (N, B, Fa) with gradient;
    `critic_features` (N*M, B, F) detached (only the actor's optimiser steps on this loss). The gradient reaches every
    member's mean and std through the moment matching. Returns (loss, log pi^E of the samples (B,), metrics)."""
    action, log_prob = actor.sample_moment_matched(actor_features, 1)  # (B, 1, A), (B, 1)
    with frozen(q):  # the gradient reaches the action, not the critics' weights
        value = ensemble_q(q.q(critic_features, action), agents, q.members // agents)[:, 0]  # (B,)
    log_prob = log_prob[:, 0]  # (B,)
    loss = (alpha.detach() * log_prob - value).mean()
    return loss, log_prob.detach(), {"actor/loss": loss.item(), "actor/entropy": -log_prob.mean().item()}


# -- the agent -----------------------------------------------------------------------------------------------------
class PessimisticEnsemble:
    """N joined agents (one vectorised actor and critic ensemble), their targets, one temperature, the optimisers.

    Build it with `from_cql_agents`. `update` takes one gradient step of the critics, the actor and the temperature
    and moves the targets; `act` runs the moment-matched policy.
    """

    def __init__(
        self,
        cfg: PessimisticEnsembleConfig,
        actor: EnsembleActor,
        q: QEnsemble,
        q_target: QEnsemble,
        init_alpha: float,
    ) -> None:
        """`actor` has N members, `q` and `q_target` N * M members in `stack_critics`' agent-major layout; `cfg` has
        its discount set (`from_cql_agents` takes the members' where it is None)."""
        if cfg.discount is None:
            raise ValueError("the ensemble needs a discount; from_cql_agents takes the members' own")
        if q.members % actor.members or q.members != q_target.members:
            raise ValueError(
                f"{actor.members} agents need critics in multiples of {actor.members}, got {q.members} critics "
                f"and {q_target.members} targets"
            )
        self.cfg = cfg
        self.agents, self.critics_per_agent = actor.members, q.members // actor.members
        self.actor, self.q = actor, q
        self.q_target = q_target.requires_grad_(False)
        self.device = next(actor.parameters()).device
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha), device=self.device))
        self.target_entropy = -float(actor.action_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.critic_optimizer = adam(self.q.parameters(), lr=cfg.critic_lr)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.alpha_optimizer = adam([self.log_alpha], lr=cfg.alpha_lr)
        self.steps = 0
        self.autocast_dtype: torch.dtype | None = None
        """Mixed precision of the forward passes (as `CQL.autocast_dtype`: the hidden layers in bf16, the output
        layers, parameters, optimiser states and the backward's accumulation in fp32); None: fp32."""

    @classmethod
    def from_cql_agents(cls, agents: Sequence[CQL], cfg: PessimisticEnsembleConfig) -> PessimisticEnsemble:
        """Join trained CQL agents (same architecture and state standardisation): copies of their deployed actors
        (`CQL.deployed_actor`: the averaged one where a run keeps an average), critics and target critics; the
        agents themselves are not changed. ValueError if they cannot be joined."""
        if not agents:
            raise ValueError("from_cql_agents needs at least one agent")
        critics = {agent.cfg.critics for agent in agents}
        if len(critics) != 1:
            raise ValueError(f"the agents have different numbers of critics {sorted(critics)}")
        if cfg.discount is None:
            discounts = {agent.cfg.discount for agent in agents}
            if len(discounts) != 1:
                raise ValueError(f"the agents were trained with different discounts {sorted(discounts)}; "
                                 "set the fine-tuning's discount to choose one")  # fmt: skip
            cfg = dataclasses.replace(cfg, discount=discounts.pop())
        actor = EnsembleActor.from_members([agent.deployed_actor for agent in agents])
        q = stack_critics([agent.q for agent in agents])
        q_target = stack_critics([agent.q_target for agent in agents])  # new modules: the agents are not shared
        if cfg.init_alpha is None:
            init_alpha = math.exp(float(np.mean([agent.log_alpha.item() for agent in agents])))
        else:
            init_alpha = cfg.init_alpha
        return cls(cfg, actor, q, q_target, init_alpha)

    def update(self, batch: TorchBatch) -> dict[str, float]:
        """One gradient step of the critics, then the actor (on the updated critics), then alpha; then the targets."""
        alpha = self.log_alpha.exp().detach()
        # The members' features of s, computed once: detached for the critic's policy samples, with gradient for
        # the actor's loss (the actor does not change before its own step).
        with autocast(self.device, self.autocast_dtype):
            actor_features = self.actor.encode(batch.obs.image, batch.obs.state)  # (N, B, Fa)
            loss, critic_features, metrics = ensemble_critic_loss(
                self.q, self.q_target, self.actor, actor_features, batch, alpha, self.agents, self.cfg
            )
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()

        with autocast(self.device, self.autocast_dtype):  # a new region: the critics' bf16 copies are re-cast
            a_loss, log_prob, a_metrics = ensemble_actor_loss(
                self.q, self.actor, actor_features, critic_features, alpha, self.agents
            )
        self.actor_optimizer.zero_grad(set_to_none=True)
        a_loss.backward()
        self.actor_optimizer.step()

        t_loss, t_metrics = alpha_loss(self.log_alpha, log_prob.float(), self.target_entropy)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        t_loss.backward()
        self.alpha_optimizer.step()

        polyak(self.q_target, self.q, self.cfg.tau)
        self.steps += 1
        return {**metrics, "critic/loss": loss.item(), **a_metrics, **t_metrics}

    def act(
        self, state: NDArray[np.floating], image: NDArray[np.uint8] | None = None, deterministic: bool = False
    ) -> NDArray[np.float32]:
        """Actions (B, A) of the moment-matched policy for states (B, S) (with the privileged part appended in state
        mode, as training saw them) and images (B, H, W, 3) uint8 or None: tanh of the matched mean when
        `deterministic`, else one sample (torch's global generator)."""
        image_t = None
        if image is not None:
            pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
            image_t = pixels.permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, H, W), as `robot_rl.algos.batch`
        state_t = torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)).to(self.device)  # (B, S)
        action = self.actor.act(image_t, state_t, deterministic)  # (B, A)
        out: NDArray[np.float32] = action.cpu().numpy().astype(np.float32, copy=False)
        return out

"""Online fine-tuning of COG/CQL agents with balanced replay and a pessimistic Q-ensemble (Lee et al., CoRL 2021,
https://arxiv.org/abs/2107.00591).

Start: N offline runs (`robot-rl train`, algo cog or cql; sac too, as a baseline), same datasets, different seeds.
Their latest learners are joined into one `PessimisticEnsemble` (N = 1 with `ensemble=False`: the first run alone).
The offline data are those runs' task and prior datasets, loaded as they trained on them (prior rewards 0), pooled.

Loop, per environment step (the authors' code collects 1000 steps, then takes 1000 updates; one update per step
with `updates_per_step=1` is the same ratio, interleaved):

    act with a sample of the moment-matched policy pi^E, from the task's hard initial condition; store the step
    after `first_batch` steps: `burst_updates` updates once (the authors' first epoch: 10x), then `updates_per_step`
    each update (balanced replay):
        density ratio: one step on 256 online (s, a) against 256 offline (s, a), both uniform; features are the
                       standardised state (the agents' own standardisation), never the raw state, or with image
                       runs the first critic's detached features of (image, proprioception)
        RL batch:      drawn from one sum tree over offline + online transitions by priority (`DensityRatioSampler`)
        agent:         one SAC step of the ensemble (`PessimisticEnsemble.update`)
        priorities:    the batch's transitions get clip(w^(1/T) / mean_offline-batch w^(1/T)), w from the updated
                       network (the authors use the ratios from before its step; one step apart, either is an
                       estimate of the same ratio)
    ablations: `replay="uniform"` draws uniformly from the pooled offline + online data, `"online_only"` from the
    online data alone (no density ratio is trained for either).

Run folder: run.json (this config), metrics.jsonl (one row per `log_every` online steps and per evaluation, each with
`online_steps`; `train/offline_fraction` is the mean share of offline transitions in the RL batches since the last row),
learning_curves.png, policy/ (the deployable policy of the latest evaluation: all N actors, acting with their moment-
matched Gaussian; `robot-rl eval RUN/policy` runs it), policies/step{N}/ (the policy evaluated after N online steps,
one per evaluation), checkpoints/latest. A checkpoint holds the whole learner (agent,
density ratio, optimisers, sum-tree priorities, RNG states) and the online data (online.npz, plain arrays, loaded
without pickle), and is written when an episode ends, so that resuming (`resume=RUN`) continues exactly as the
uninterrupted run would: the next episode's reset seed is a function of (seed, episode number) and every random
generator is restored. A crash loses the steps since the last checkpoint, and nothing saved.

Image runs (`observation="image"`) fine-tune the same way: the online store keeps each frame's uint8 image once, the
RL batches are shifted as the members trained (their `augment_pad`, shifts from torch's generator, which checkpoints
restore), and the density ratio sees the first critic's features (DESIGN.md, Learning).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import safetensors.torch
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from tqdm import tqdm

from robot_rl.algos.batch import TorchObs, observation_to_torch, to_torch
from robot_rl.algos.cql import CQL
from robot_rl.algos.density_ratio import DensityRatio, DensityRatioConfig
from robot_rl.algos.pessimistic import PessimisticEnsemble, PessimisticEnsembleConfig
from robot_rl.checkpoints import export_policy, optimizer_records, optimizer_states
from robot_rl.data.replay import Batch, Observation, TransitionStore, concatenate
from robot_rl.policy import (
    CheckpointError,
    check_tensors,
    read_checked_json,
    read_checked_tensors,
    sha256_of,
    tensors_for_saving,
    write_folder_atomically,
)
from robot_rl.replay.balanced import BalancedReplayConfig, DensityRatioSampler
from robot_rl.replay.online import OnlineStore
from robot_rl.runs import config_from_dict, new_run_dir, software_versions, write_run_record
from robot_rl.train import offline
from robot_rl.train.evaluate import EvalConfig, evaluate
from robot_rl.train.logger import Logger
from robot_rl.train.offline import OfflineConfig, TrainingError

FINETUNE_FORMAT = "robot_rl.finetune"
FINETUNE_FORMAT_VERSION = 1
STATE_FILE = "finetune.safetensors"
RECORD_FILE = "finetune.json"
ONLINE_FILE = "online.npz"
FINETUNABLE = ("cog", "cql", "sac")
"""Offline algorithms whose learners are CQL agents (critics and a SAC actor); sac is CQL with weight 0."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Online fine-tuning of offline runs: balanced replay and a pessimistic Q-ensemble (Lee et al. 2021)."""

    runs: tuple[Path, ...] = ()
    """Offline run folders (robot-rl train; cog, cql or sac; state or image observations), one per ensemble member,
    all trained on the same datasets and observations; each one's checkpoints/latest is loaded. Required unless
    resuming."""
    replay: Literal["balanced", "uniform", "online_only"] = "balanced"
    """balanced: density-ratio priorities over offline + online data; uniform: offline + online pooled; online_only."""
    ensemble: bool = True
    """Join all runs into the pessimistic Q-ensemble; False fine-tunes the first run alone (single-agent ablation)."""
    online_steps: int = 100_000
    """Environment steps collected online (the budget)."""
    initial_condition: str | None = None
    """Initial condition of the online episodes and the evaluations; default: the task's hard one (as offline)."""
    max_episode_steps: int | None = None
    """Override the env's horizon (short episodes for tests and quick looks); None keeps the task's."""
    first_batch: int = 1000
    """Online steps collected before the first update (the authors' first epoch: 1000 steps)."""
    burst_updates: int = 10_000
    """Updates taken once the first batch is in (the authors: first_epoch_multiplier 10 x 1000 updates)."""
    updates_per_step: int = 1
    """Updates per online step after that (the update-to-data ratio; the authors' 1000 per 1000 steps)."""
    batch_size: int = 256
    """RL batch size."""
    reward_scale: float | None = None
    """Rewards times this in the TD targets; None: the members' own (`robot-rl train --reward-scale`), which must
    agree. Fine-tuning with another scale than the critics learnt would move every Q-value at once."""
    success_terminal: bool | None = None
    """Rewarded transitions end the bootstrap (see `OfflineConfig.success_terminal`); None: the members' own."""
    log_every: int = 1000
    """Online steps between metric rows."""
    eval_every: int = 10_000
    """Online steps between evaluations (also at step 0 and at the end); 0 evaluates only at the end."""
    eval_episodes: int = 20
    """Episodes per evaluation (deterministic moment-matched policy, in this process)."""
    checkpoint_every: int = 5000
    """Online steps between checkpoints; each is taken at the next episode end (and one after the burst of updates,
    and one at the end of the run)."""
    seed: int = 0
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    threads: int = 2
    """torch CPU threads."""
    precision: Literal["auto", "fp32", "bf16", "native"] = "auto"
    """The ensemble's forward passes in bf16 autocast or fp32, as `robot-rl train --precision` (auto: bf16 on CUDA;
    native: also on CPUs with bf16 matrix instructions). The density ratio and acting stay fp32."""
    out: Path | None = None
    """Run folder (default: runs/finetune-<timestamp>)."""
    progress: bool = True
    wandb: Literal["off", "online", "offline"] = "off"
    """Weights & Biases logging; offline needs no network."""
    agent: PessimisticEnsembleConfig = field(default_factory=PessimisticEnsembleConfig)
    density_ratio: DensityRatioConfig = field(default_factory=DensityRatioConfig)
    balanced: BalancedReplayConfig = field(default_factory=BalancedReplayConfig)
    resume: Path | None = None
    """Continue this fine-tuning run folder from its checkpoint, with the config in its run.json; of the other flags
    only `threads` and `progress` (how the run uses the machine, not what it computes) apply."""

    def __post_init__(self) -> None:
        positive = {
            "online_steps": self.online_steps,
            "first_batch": self.first_batch,
            "batch_size": self.batch_size,
            "log_every": self.log_every,
            "eval_episodes": self.eval_episodes,
            "checkpoint_every": self.checkpoint_every,
            "threads": self.threads,
        }
        bad = [f"{k}={v}" for k, v in positive.items() if v < 1]
        bad += [f"{k}={v}" for k, v in (("burst_updates", self.burst_updates), ("updates_per_step",
                self.updates_per_step), ("eval_every", self.eval_every)) if v < 0]  # fmt: skip
        if self.reward_scale is not None and not (math.isfinite(self.reward_scale) and self.reward_scale > 0):
            bad.append(f"reward_scale={self.reward_scale}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            bad.append(f"max_episode_steps={self.max_episode_steps}")
        if bad:
            raise ValueError(f"FinetuneConfig: invalid {', '.join(bad)}")


# -- the offline runs ------------------------------------------------------------------------------------------------
def run_config(run: Path) -> OfflineConfig:
    """The config an offline run trained with, refused (TrainingError) unless it is a CQL-family run with a checkpoint
    to load."""
    path = run / "run.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{run}: not an offline run folder (cannot read run.json: {e})") from e
    if not isinstance(record, dict) or record.get("command") != "train":
        command = record.get("command") if isinstance(record, dict) else None
        raise TrainingError(f"{run}: not an offline training run (run.json command {command!r}, expected 'train')")
    try:
        cfg: OfflineConfig = config_from_dict(OfflineConfig, record.get("config"), f"{path}: config")
    except ValueError as e:
        raise TrainingError(str(e)) from e
    if cfg.algo not in FINETUNABLE:
        raise TrainingError(
            f"{run}: a {cfg.algo!r} run; fine-tuning needs CQL critics and a SAC actor ({', '.join(FINETUNABLE)})"
        )
    if not (run / "checkpoints" / "latest").is_dir():
        raise TrainingError(f"{run}: no checkpoint (checkpoints/latest) to fine-tune from")
    return cfg


def _datasets(cfg: OfflineConfig) -> tuple[Path | None, Path | None]:
    """The datasets a run trained on, resolved: (task, prior), prior None where its algo does not use it."""
    prior = cfg.prior.resolve() if cfg.prior is not None and cfg.algo in ("cog", "sac") else None
    return (None if cfg.task is None else cfg.task.resolve()), prior


def check_runs(runs: Sequence[Path]) -> list[OfflineConfig]:
    """Every run's config (see `run_config`); TrainingError unless all trained on the same datasets and
    observations."""
    if not runs:
        raise TrainingError("no offline runs given (runs=RUN ...)")
    resolved = [run.resolve() for run in runs]
    repeated = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if repeated:
        raise TrainingError(f"runs given more than once: {repeated}; each member must be a different run")
    configs = [run_config(run) for run in runs]
    first = _datasets(configs[0])
    for run, cfg in zip(runs[1:], configs[1:], strict=True):
        if cfg.observation != configs[0].observation:
            raise TrainingError(
                f"{runs[0]} was trained on {configs[0].observation!r} observations, {run} on {cfg.observation!r}; "
                "an ensemble's members must see the same observations"
            )
        if _datasets(cfg) != first:
            raise TrainingError(
                f"the runs were trained on different datasets: {runs[0]} on (task, prior) = {first}, {run} on "
                f"{_datasets(cfg)}; an ensemble's members must share their offline data"
            )
    return configs


def reward_shaping(cfg: FinetuneConfig, configs: Sequence[OfflineConfig]) -> tuple[float, bool]:
    """(reward_scale, success_terminal) of the fine-tuning: `cfg`'s where set, else the members' (TrainingError if
    they differ, since one TD target cannot serve critics trained on different reward definitions)."""

    def resolve(name: str, given: Any) -> Any:
        if given is not None:
            return given
        values = {getattr(c, name) for c in configs}
        if len(values) > 1:
            raise TrainingError(f"the runs were trained with different {name} ({sorted(values)}); pass {name}= to "
                                "choose the one fine-tuning uses")  # fmt: skip
        return values.pop()

    return float(resolve("reward_scale", cfg.reward_scale)), bool(resolve("success_terminal", cfg.success_terminal))


def load_agents(
    runs: Sequence[Path], configs: Sequence[OfflineConfig], device: torch.device
) -> tuple[list[CQL], TransitionStore]:
    """The runs' latest learners and their offline data (task, plus prior relabelled to 0 where used, pooled).

    `load_learner` sets the global random generators to the runs' saved states; the caller seeds afterwards."""
    from robot_rl.checkpoints import load_learner

    task, prior = offline._load(configs[0])
    offline_data = task if prior is None else concatenate([task, prior])
    agents = []
    for run, cfg in zip(runs, configs, strict=True):
        agent = offline.make_agent(cfg, task, device)
        if not isinstance(agent, CQL):  # unreachable after run_config's check
            raise TrainingError(f"{run}: not a CQL agent")
        load_learner(run / "checkpoints" / "latest", agent)
        agents.append(agent)
    return agents, offline_data


# -- acting ----------------------------------------------------------------------------------------------------------
def policy_state(observation: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
    """The agent's state input of one env observation: proprioception with the privileged state appended (S + P,)."""
    return np.concatenate([observation["state"], observation["privileged"]]).astype(np.float32, copy=False)


class EnsembleActingPolicy:
    """The ensemble's moment-matched policy behind the evaluator's `ActingPolicy` interface (one observation in,
    one action out). Deterministic: tanh of the matched mean; otherwise one sample (torch's global generator).
    `image`: the agents see the camera image and the proprioceptive state; else the state with the privileged part."""

    def __init__(self, agent: PessimisticEnsemble, deterministic: bool = True, image: bool = False) -> None:
        self.agent, self.deterministic, self.image = agent, deterministic, image

    def act(self, observation: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        if self.image:
            state = observation["state"].astype(np.float32, copy=False)[None]  # (1, S)
            action = self.agent.act(state, observation["image"][None], self.deterministic)  # image (1, H, W, 3)
        else:
            action = self.agent.act(policy_state(observation)[None], None, self.deterministic)
        out: NDArray[np.float32] = action[0]
        return out


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of online episode `episode` (0, 1, ...): a function of both, so a resumed run resets as the
    uninterrupted one would. Drawn from a SeedSequence: unrelated to the evaluation seeds (1_000_000 + i)."""
    return int(np.random.SeedSequence([seed, episode, 0x0F1E]).generate_state(1)[0])


# -- batches ---------------------------------------------------------------------------------------------------------
def concat_batches(parts: Sequence[Batch]) -> Batch:
    """One batch of the parts' transitions, in order (the parts hold the same observation keys)."""

    def cat(arrays: Sequence[NDArray[Any] | None]) -> Any:
        return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

    def observations(obs: Sequence[Observation]) -> Observation:
        return Observation(cat([o.image for o in obs]), cat([o.state for o in obs]), cat([o.privileged for o in obs]))

    return Batch(
        obs=observations([p.obs for p in parts]),
        action=cat([p.action for p in parts]),
        reward=cat([p.reward for p in parts]),
        next_obs=observations([p.next_obs for p in parts]),
        terminated=cat([p.terminated for p in parts]),
        truncated=cat([p.truncated for p in parts]),
    )


class RLBatch(NamedTuple):
    batch: Batch
    tree_indices: NDArray[np.int64] | None
    """(B,) sum-tree indices in batch order (balanced replay), for re-prioritising."""
    offline_fraction: float


def draw_rl_batch(
    replay: str,
    rng: np.random.Generator,
    batch_size: int,
    offline_data: TransitionStore,
    online: OnlineStore,
    sampler: DensityRatioSampler | None,
) -> RLBatch:
    """An RL batch of the replay mode; offline transitions first, then online ones."""
    if replay == "online_only":
        return RLBatch(online.sample(rng, batch_size), None, 0.0)
    if replay == "balanced":
        if sampler is None:
            raise ValueError("balanced replay needs a DensityRatioSampler")
        drawn = sampler.sample(rng, batch_size)
        on = drawn.is_online
        batch = concat_batches(
            [offline_data.sample_indices(drawn.store_index[~on]), online.sample_indices(drawn.store_index[on])]
        )
        return RLBatch(batch, np.concatenate([drawn.indices[~on], drawn.indices[on]]), drawn.offline_fraction)
    if replay == "uniform":
        n_off = len(offline_data)
        idx = rng.integers(0, n_off + len(online), size=batch_size)  # (B,) over the pooled data
        off = idx < n_off
        batch = concat_batches([offline_data.sample_indices(idx[off]), online.sample_indices(idx[~off] - n_off)])
        return RLBatch(batch, None, float(off.mean()))
    raise ValueError(f"unknown replay mode {replay!r}")


def _check_batch(batch: Batch, update: int) -> None:
    for name, array in (("action", batch.action), ("reward", batch.reward), ("state", batch.obs.state)):
        if not np.all(np.isfinite(array)):
            raise TrainingError(f"non-finite {name} in the batch of update {update}")


# -- checkpoints -----------------------------------------------------------------------------------------------------
class Restored(NamedTuple):
    """What a checkpoint gives back besides the agent and density ratio it loads into."""

    online: OnlineStore
    priorities: NDArray[np.float64] | None
    """The sum tree's priorities (offline, then online), or None without balanced replay."""
    running_max: float | None
    rng: np.random.Generator
    counters: dict[str, int]


def _modules(agent: PessimisticEnsemble, ratio: DensityRatio) -> dict[str, nn.Module]:
    return {"actor": agent.actor, "q": agent.q, "q_target": agent.q_target, "density_ratio": ratio.network}


def _optimizers(agent: PessimisticEnsemble, ratio: DensityRatio) -> dict[str, torch.optim.Optimizer]:
    return {
        "critic": agent.critic_optimizer,
        "actor": agent.actor_optimizer,
        "alpha": agent.alpha_optimizer,
        "density_ratio": ratio.optimizer,
    }


def save_checkpoint(
    folder: Path,
    agent: PessimisticEnsemble,
    ratio: DensityRatio,
    sampler: DensityRatioSampler | None,
    online: OnlineStore,
    rng: np.random.Generator,
    counters: Mapping[str, int],
) -> Path:
    """Write the whole fine-tuning state to `folder` atomically (a crash mid-save keeps the previous checkpoint)."""
    tensors: dict[str, Tensor] = {}
    for prefix, module in _modules(agent, ratio).items():
        tensors.update({f"{prefix}/{name}": t for name, t in module.state_dict().items()})
    tensors["log_alpha"] = agent.log_alpha.detach()
    optimizers = optimizer_records(_optimizers(agent, ratio), tensors)
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    if agent.device.type == "cuda":
        tensors["rng/torch_cuda"] = torch.cuda.get_rng_state(agent.device)
    priorities, running_max = sampler.state() if sampler is not None else (None, None)  # one copy of the tree
    if priorities is not None:
        tensors["sampler/priorities"] = torch.from_numpy(priorities)  # (offline + online,) float64
    weights = safetensors.torch.save(tensors_for_saving(tensors), metadata={"format": FINETUNE_FORMAT})
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **online.arrays())  # plain numeric arrays, no object arrays
    online_bytes = buffer.getvalue()
    if rng.bit_generator.state.get("bit_generator") != "PCG64":
        raise ValueError("the loop's generator must be numpy's default (PCG64) to be saved")
    record = {
        "format": FINETUNE_FORMAT,
        "format_version": FINETUNE_FORMAT_VERSION,
        "safetensors_sha256": sha256_of(weights),
        "online_sha256": sha256_of(online_bytes),
        "agent": {
            "agents": agent.agents,
            "critics_per_agent": agent.critics_per_agent,
            "steps": agent.steps,
            "config": dataclasses.asdict(agent.cfg),
        },
        "density_ratio_steps": ratio.steps,
        "optimizers": optimizers,
        "sampler": None if sampler is None else {"running_max": running_max},
        "numpy_rng": rng.bit_generator.state,  # PCG64: plain (big) integers, JSON holds them exactly
        "counters": dict(counters),
        "versions": software_versions(),
    }
    text = json.dumps(record, indent=2) + "\n"
    files = {STATE_FILE: weights, RECORD_FILE: text.encode(), ONLINE_FILE: online_bytes}
    return write_folder_atomically(folder, files)


def load_checkpoint(folder: Path, agent: PessimisticEnsemble, ratio: DensityRatio, capacity: int = 0) -> Restored:
    """Restore `agent` and `ratio` (built as the run built them) and torch's generator from `folder`; return the
    online data (in a store with room for `capacity` transitions), sampler state, loop generator and counters.
    Everything is checked before anything is modified."""
    record = read_checked_json(folder, RECORD_FILE, FINETUNE_FORMAT, FINETUNE_FORMAT_VERSION)
    where = folder / RECORD_FILE
    try:
        agent_record, optimizers, counters = record["agent"], record["optimizers"], record["counters"]
        if (agent_record["agents"], agent_record["critics_per_agent"]) != (agent.agents, agent.critics_per_agent):
            raise CheckpointError(
                f"{where}: {agent_record['agents']} agents x {agent_record['critics_per_agent']} critics, the runs "
                f"give {agent.agents} x {agent.critics_per_agent}"
            )
        online_data = (folder / ONLINE_FILE).read_bytes()
        if sha256_of(online_data) != record["online_sha256"]:
            raise CheckpointError(f"{folder / ONLINE_FILE}: sha256 does not match {where}; the file was changed")
        with np.load(io.BytesIO(online_data), allow_pickle=False) as npz:
            online = OnlineStore.from_arrays({name: npz[name] for name in npz.files}, capacity)
        rng = np.random.Generator(np.random.PCG64())
        if record["numpy_rng"].get("bit_generator") != "PCG64":
            raise CheckpointError(f"{where}: the loop's generator is not PCG64")
        rng.bit_generator.state = record["numpy_rng"]
        counters = {str(k): int(v) for k, v in counters.items()}
        sampler_record = record["sampler"]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:
        raise CheckpointError(f"{where}: malformed fine-tuning checkpoint ({e!r})") from e
    tensors = read_checked_tensors(folder / STATE_FILE, record["safetensors_sha256"])

    expected: dict[str, Tensor] = {}
    for prefix, module in _modules(agent, ratio).items():
        expected.update({f"{prefix}/{name}": t for name, t in module.state_dict().items()})
    expected["log_alpha"] = agent.log_alpha.detach()
    expected["rng/torch_cpu"] = torch.get_rng_state()
    for name in ("rng/torch_cuda", "sampler/priorities"):
        if name in tensors:
            expected[name] = tensors[name]
    try:
        states = optimizer_states(_optimizers(agent, ratio), optimizers, tensors, expected, where)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}: malformed optimiser record ({e!r})") from e
    check_tensors(str(folder / STATE_FILE), tensors, expected, require_finite=False)
    priorities = None
    running_max = None
    if sampler_record is not None:
        if "sampler/priorities" not in tensors:
            raise CheckpointError(f"{where}: balanced replay state without sampler/priorities")
        priorities = tensors["sampler/priorities"].numpy().astype(np.float64)
        running_max = None if sampler_record["running_max"] is None else float(sampler_record["running_max"])

    # All checked: now modify.
    for prefix, module in _modules(agent, ratio).items():
        module.load_state_dict({n[len(prefix) + 1 :]: t for n, t in tensors.items() if n.startswith(prefix + "/")})
    with torch.no_grad():
        agent.log_alpha.copy_(tensors["log_alpha"])
    for opt_name, optimizer in _optimizers(agent, ratio).items():
        try:
            optimizer.load_state_dict(states[opt_name])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{where}: optimiser {opt_name!r} does not fit ({e})") from e
    agent.steps = int(agent_record["steps"])
    ratio.steps = int(record["density_ratio_steps"])
    torch.set_rng_state(tensors["rng/torch_cpu"])
    if "rng/torch_cuda" in tensors and agent.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/torch_cuda"], agent.device)
    return Restored(online, priorities, running_max, rng, counters)


def restore_sampler(
    sampler: DensityRatioSampler, priorities: NDArray[np.float64], running_max: float | None, num_online: int
) -> None:
    """Put saved priorities (offline, then the online transitions registered so far) and the running maximum back
    into a fresh sampler. Before the first batch is complete no online transition is registered yet."""
    n_off = sampler.num_offline
    if not n_off <= len(priorities) <= n_off + num_online:
        raise CheckpointError(
            f"the checkpoint holds {len(priorities)} priorities for {n_off} offline + {num_online} online transitions"
        )
    try:
        sampler.restore(priorities, running_max)
    except ValueError as error:
        raise CheckpointError(f"the checkpoint's replay priorities: {error}") from error


# -- the loop --------------------------------------------------------------------------------------------------------
def recorded_config(run: Path) -> FinetuneConfig:
    """The config a fine-tuning run folder was started with (its run.json)."""
    try:
        record = json.loads((run / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{run}: cannot resume, no readable run.json ({e})") from e
    if not isinstance(record, dict) or record.get("command") != "finetune":
        raise TrainingError(f"{run}: not a fine-tuning run (run.json command is not 'finetune')")
    try:
        cfg: FinetuneConfig = config_from_dict(FinetuneConfig, record.get("config"), f"{run}/run.json: config")
    except ValueError as e:
        raise TrainingError(str(e)) from e
    return cfg


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune online as configured (or continue `cfg.resume`); returns the run folder."""
    resume = cfg.resume
    if resume is not None:
        cfg = dataclasses.replace(recorded_config(resume), threads=cfg.threads, progress=cfg.progress)
        if not (resume / "checkpoints" / "latest").is_dir():
            raise TrainingError(f"{resume}: no checkpoint yet; start the run again without resume")
    all_configs = check_runs(cfg.runs)  # every given run is checked, also those ensemble=False leaves out
    runs = cfg.runs if cfg.ensemble else cfg.runs[:1]
    reward_scale, success_terminal = reward_shaping(cfg, all_configs[: len(runs)])
    cfg = dataclasses.replace(cfg, reward_scale=reward_scale, success_terminal=success_terminal)  # recorded resolved
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))  # fmt: skip
    members, offline_data = load_agents(runs, all_configs[: len(runs)], device)
    torch.manual_seed(cfg.seed)
    try:
        agent = PessimisticEnsemble.from_cql_agents(members, cfg.agent)
    except ValueError as e:
        raise TrainingError(f"the runs cannot be joined into one ensemble: {e}") from e
    del members
    cfg = dataclasses.replace(cfg, agent=agent.cfg)  # recorded resolved (the members' discount where not given)
    agent.autocast_dtype = offline.autocast_dtype(cfg.precision, device)
    run = resume if resume is not None else new_run_dir(cfg.out, "finetune")
    write_run_record(run, "finetune", cfg)

    info = offline_data.info
    spec = info.env_spec
    image = all_configs[0].observation == "image"  # else state mode: proprioception + privileged state
    pad = all_configs[0].augment_pad if image else 0  # the members' image augmentation, kept online
    state_dim, action_dim = len(spec["state_names"]), len(spec["action_names"])
    privileged_dim = len(spec["privileged_names"] or ())
    state_mean = agent.actor.encoder.state_mean  # (S + P,): the agents' standardisation, shared by all members
    state_std = agent.actor.encoder.state_std
    ratio_dim = agent.q.encoder.output_dim if image else state_dim + privileged_dim
    ratio = DensityRatio(cfg.density_ratio, ratio_dim, action_dim, device)
    image_shape = None if info.image_shape is None or not image else tuple(info.image_shape)
    online = OnlineStore(state_dim, action_dim, None if image else privileged_dim, image_shape,  # type: ignore[arg-type]
                         capacity=cfg.online_steps)  # fmt: skip
    sampler = None
    if cfg.replay == "balanced":
        sampler = DensityRatioSampler(len(offline_data), cfg.balanced, online_capacity=cfg.online_steps)
    rng = np.random.default_rng(cfg.seed)
    counters = {"online_steps": 0, "updates": 0, "episodes": 0, "last_checkpoint": 0}
    checkpoint = run / "checkpoints" / "latest"
    if resume is not None:
        restored = load_checkpoint(checkpoint, agent, ratio, capacity=cfg.online_steps)
        online = restored.online
        if sampler is not None:
            if restored.priorities is None:
                raise CheckpointError(f"{checkpoint}: saved without balanced replay")
            restore_sampler(sampler, restored.priorities, restored.running_max, len(online))
        rng, counters = restored.rng, {**counters, **restored.counters}
        if counters["online_steps"] != len(online):
            raise CheckpointError(
                f"{checkpoint}: {counters['online_steps']} online steps recorded, {len(online)} transitions saved"
            )

    condition = offline.eval_condition(cfg.initial_condition, info.recipe.get("task"))
    env_kwargs: dict[str, Any] = {**info.env_kwargs, "include_image": image, "privileged_state": not image}
    if cfg.max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = cfg.max_episode_steps
    eval_cfg = EvalConfig(
        env_id=info.env_id, env_kwargs=env_kwargs, initial_condition=condition, episodes=cfg.eval_episodes, videos=0
    )
    env = gym.make(f"{eval_cfg.env_module}:{info.env_id}", **env_kwargs)
    explore = EnsembleActingPolicy(agent, deterministic=False, image=image)

    def features(obs: TorchObs) -> Tensor:
        """The density ratio's input: in state mode the standardised state (B, S + P); in image mode the first
        critic's features of (image, state) (B, F), detached. (The members' feature spaces are not aligned, so
        they are not averaged; one critic's is a fixed-width summary of the image that fine-tuning keeps useful.)"""
        if image:
            with torch.no_grad():
                return agent.q.encode(obs.image, obs.state)[0]  # (B, F) of critic 0
        return (obs.state - state_mean) / state_std

    def numpy_features(batch: Batch) -> tuple[Tensor, Tensor]:
        obs = observation_to_torch(batch.obs, device, use_privileged=not image)  # s only: s' is not needed here
        return features(obs), torch.from_numpy(batch.action).to(device)

    def update_once() -> tuple[dict[str, float], float]:
        metrics: dict[str, float] = {}
        offline_ratios = None
        if sampler is not None:
            on = numpy_features(online.sample(rng, cfg.density_ratio.online_batch_size))
            off = numpy_features(offline_data.sample(rng, cfg.density_ratio.offline_batch_size))
            metrics.update(ratio.update(*on, *off))
            offline_ratios = ratio.ratio(*off).cpu().numpy()  # (B_off,) the normaliser of the priorities
        drawn = draw_rl_batch(cfg.replay, rng, cfg.batch_size, offline_data, online, sampler)
        _check_batch(drawn.batch, counters["updates"])
        shaped = drawn.batch
        if success_terminal or reward_scale != 1.0:
            shaped = offline.shape_rewards(shaped, reward_scale, success_terminal)
        batch = to_torch(shaped, device, pad, None, use_privileged=not image)  # shifts drawn from torch's generator
        metrics.update(agent.update(batch))
        if sampler is not None and drawn.tree_indices is not None and offline_ratios is not None:
            w = ratio.ratio(features(batch.obs), batch.action).cpu().numpy()  # (B,)
            priorities = sampler.update_priorities(drawn.tree_indices, w, offline_ratios)
            metrics["balanced/priority_mean"] = float(priorities.mean())
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(
                f"non-finite {', '.join(bad)} at update {counters['updates']}; training stopped, the last good "
                f"checkpoint is {checkpoint if checkpoint.exists() else 'none yet'}"
            )
        counters["updates"] += 1
        return metrics, drawn.offline_fraction

    def reset_episode() -> dict[str, NDArray[Any]]:
        seed = episode_seed(cfg.seed, counters["episodes"])
        observation: dict[str, NDArray[Any]] = env.reset(seed=seed, options={"initial_condition": condition})[0]
        online.start_episode(observation)
        counters["episodes"] += 1
        return observation

    def evaluate_now() -> dict[str, float]:
        # The deployable policy (all N actors, acting with their moment-matched Gaussian), then its evaluation.
        info_record = {"online_steps": counters["online_steps"], "runs": [str(r) for r in cfg.runs]}
        info_record["env_id"] = info.env_id  # what `robot-rl eval` steps it in by default
        with torch.random.fork_rng(devices=[]):  # exporting builds modules: training's draws stay as they were
            policy = export_policy(agent, spec, use_privileged=not image, info=info_record)
            policy.save(run / "policies" / f"step{counters['online_steps']}")  # one per evaluation, kept
            policy.save(run / "policy")
            result = evaluate(EnsembleActingPolicy(agent, deterministic=True, image=image), eval_cfg)
        return {**result.summary(), "online_steps": float(counters["online_steps"])}

    wandb_mode: Literal["online", "offline"] | None = None if cfg.wandb == "off" else cfg.wandb
    try:
        resume_step = counters["online_steps"] if resume is not None else None
        with Logger(run, dataclasses.asdict(cfg), wandb_mode, resume_step=resume_step) as logger:
            if resume is None and cfg.eval_every:
                logger.log(0, evaluate_now())  # the joined agents before any online step
            bar = tqdm(total=cfg.online_steps, initial=counters["online_steps"], disable=not cfg.progress,
                       desc=f"finetune ({cfg.replay})")  # fmt: skip
            last: dict[str, float] = {}
            fractions: list[float] = []
            returns: list[float] = []
            successes: list[float] = []
            tick, steps_at_tick, updates_at_tick = time.perf_counter(), counters["online_steps"], counters["updates"]
            observation = reset_episode() if counters["online_steps"] < cfg.online_steps else {}
            episode_return = 0.0
            while counters["online_steps"] < cfg.online_steps:
                action = explore.act(observation)
                observation, reward, terminated, truncated, step_info = env.step(action)
                online.add(action, float(reward), terminated, truncated, observation)
                if sampler is not None and len(online) >= cfg.first_batch:
                    # The first batch enters the tree at once, so that it gets `initial_online_fraction` of the mass
                    # (the authors' running max M f / ((1 - f) N), N their first batch); then one step at a time, at
                    # the running maximum. Online store index j is tree index num_offline + j throughout.
                    sampler.add_online(len(online) - sampler.num_online)
                counters["online_steps"] += 1
                steps = counters["online_steps"]
                bar.update(1)
                episode_return += float(reward)
                done = terminated or truncated
                if done:
                    returns.append(episode_return)
                    successes.append(float(bool(step_info.get("success", False))))
                    episode_return = 0.0
                if steps >= cfg.first_batch:
                    for _ in range(cfg.burst_updates if steps == cfg.first_batch else cfg.updates_per_step):
                        last, fraction = update_once()
                        fractions.append(fraction)
                if steps % cfg.log_every == 0 or steps == cfg.online_steps:
                    elapsed = max(time.perf_counter() - tick, 1e-9)
                    row = {**last, "online_steps": float(steps), "train/updates": float(counters["updates"]),
                           "train/episodes": float(counters["episodes"]),
                           "train/online_transitions": float(len(online)),
                           "time/env_steps_per_s": (steps - steps_at_tick) / elapsed,
                           "time/updates_per_s": (counters["updates"] - updates_at_tick) / elapsed}  # fmt: skip
                    if fractions:
                        row["train/offline_fraction"] = float(np.mean(fractions))
                    if returns:
                        row["train/episode_return"] = float(np.mean(returns))
                        row["train/episode_success"] = float(np.mean(successes))
                    logger.log(steps, row)
                    last, fractions, returns, successes = {}, [], [], []
                    tick, steps_at_tick, updates_at_tick = time.perf_counter(), steps, counters["updates"]
                if (cfg.eval_every and steps % cfg.eval_every == 0) or steps == cfg.online_steps:
                    summary = evaluate_now()
                    logger.log(steps, summary)
                    bar.set_postfix_str(f"eval {summary['eval/success']:.2f}")
                # Checkpoints: every `checkpoint_every` steps and also right after the burst (its updates are the
                # costliest stretch of the run), each at an episode end; and at the end of the run.
                after_burst = counters["last_checkpoint"] < cfg.first_batch <= steps and cfg.burst_updates > 0
                due = after_burst or steps - counters["last_checkpoint"] >= cfg.checkpoint_every
                if (done and due) or steps == cfg.online_steps:
                    counters["last_checkpoint"] = steps
                    save_checkpoint(checkpoint, agent, ratio, sampler, online, rng, counters)
                if done and steps < cfg.online_steps:
                    observation = reset_episode()
            bar.close()
    finally:
        env.close()
    offline.plot_curves(run)
    return run

"""Offline training: COG, CQL on task data, BC and SAC-offline from datasets, with evaluation and checkpoints.

The methods share everything but the sampler and the loss:

| algo | data | loss |
|---|---|---|
| cog | task + prior (prior rewards 0), `task_fraction` of each batch from task (or one pooled buffer) | CQL |
| cql | task only | CQL |
| sac | task + prior, as cog | CQL with the conservative weight 0 |
| bc  | task only, or task + prior pooled (`bc_data="all"`) | BC |

A run folder holds the resolved config and versions (run.json), metrics.jsonl, checkpoints/latest (the learner,
for exact resume), policy/ (the deployable policy of the latest evaluation), policies/step{N}/ (the policy exported
at step N, one per evaluation, so a run can be inspected after the fact where it stood along the way; with
`average_exports` the evaluated one is the average, policies/step{N}-avg/), evaluation videos and learning curves.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from robot_rl.algos.batch import to_torch
from robot_rl.algos.bc import BC, BCConfig
from robot_rl.algos.cql import CQL, CQLConfig, check_cql_config
from robot_rl.data.replay import Batch, TransitionStore, concatenate, load_dataset
from robot_rl.data.validate import check_compatible
from robot_rl.networks import set_state_statistics
from robot_rl.replay.mixing import CogMixSampler, Sampler, UniformSampler
from robot_rl.runs import new_run_dir, write_run_record
from robot_rl.train.evaluate import EvalConfig, evaluate_parallel
from robot_rl.train.logger import Logger, read_metrics

EVAL_CONDITION = {
    "closed_drawer": "closed",
    "blocked_drawer": "blocked",
    "blocked_by_object_drawer": "blocked_by_object",
    "pick_place": "on_table",
}
"""Each COG task's hard initial condition, which no task trajectory starts from."""


def eval_condition(configured: str | None, task: object, unknown: str = "closed") -> str:
    """The initial condition a run evaluates from: the configured one, else its task's hard start (`EVAL_CONDITION`,
    keyed by the task data's recipe `task`), else `unknown`."""
    return configured or EVAL_CONDITION.get(str(task), unknown)


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, a diverged loss); the message says where the last good checkpoint is."""


@dataclass(frozen=True)
class OfflineConfig:
    """Offline RL from datasets (COG and its baselines)."""

    task: Path | None = None
    """Task dataset folder (datasets/<name>-v<N>): the sparse task reward. Required unless resuming."""
    prior: Path | None = None
    """Prior dataset folder; its rewards are relabelled to 0. Required by cog and sac, and by bc with all data."""
    algo: Literal["cog", "cql", "bc", "sac"] = "cog"
    """cog: CQL on task + prior; cql: CQL on task only; bc: behaviour cloning; sac: SAC offline on task + prior."""
    bc_data: Literal["task", "all"] = "task"
    """BC's data: the task dataset, or task and prior pooled."""
    mixing: Literal["ratio", "pooled"] = "ratio"
    """cog/sac batches: `task_fraction` from each dataset, or uniform over one pooled buffer (COG's code)."""
    task_fraction: float = 0.5
    """Share of each batch drawn from the task data (mixing="ratio")."""
    observation: Literal["image", "state"] = "image"
    """image: camera image + proprioception; state: proprioception + privileged state, no image."""
    steps: int = 100_000
    """Gradient steps."""
    batch_size: int = 256
    normalize_state: bool = True
    """Standardise the state inputs with the mean and standard deviation of the training data (task + prior),
    the standard deviation floored at `state_std_floor`; stored in checkpoints and exported policies."""
    state_std_floor: float = 0.01
    success_terminal: bool = False
    """Treat every rewarded transition as terminal: the task ends at success, so a success's value is its reward,
    not a bootstrap through the rest of the episode. Q then spans reward_scale * gamma^(steps to success)."""
    n_step: int = 1
    """CQL-based algos: targets from n-step returns of the data, R + gamma^m V(s_{t+m}) with m <= n (fewer at an
    episode's end or a terminal step; `TransitionStore.n_step`). Value then travels n steps back per backup, along
    the data's own actions. 1 is COG's one-step target; BC ignores it."""
    n_step_data: Literal["all", "prior"] = "all"
    """Where n-step returns are used: all data, or the prior data only (task data keeps one-step targets; needs
    mixing="ratio"). The prior's scripted skills are long and loosely aimed, the task's grasps short and precise."""
    reward_scale: float = 1.0
    """Multiply rewards by this in the losses (with `success_terminal`, 1 / (1 - gamma) keeps Q on the scale of the
    continuing task, where holding the success is worth up to 1 / (1 - gamma))."""
    augment_pad: int = 4
    """Random-shift augmentation of images (pad and crop, one shift per image); 0 turns it off."""
    seed: int = 0
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    precision: Literal["auto", "fp32", "bf16", "native"] = "auto"
    """Forward passes in bf16 autocast (parameters and optimisers stay fp32; output layers fp32); auto: bf16 on
    CUDA, fp32 on CPU; native: bf16 on CUDA and on CPUs that compute it natively (AMX or AVX512-BF16, 1.4x the
    state-mode steps/s of fp32 on the development machine), fp32 on others (where bf16 is emulated, and slow)."""
    threads: int = 2
    """torch CPU threads (this machine has 2 cores; set explicitly, as torch's default collapses under load)."""
    eval_every: int = 10_000
    """Steps between evaluations (and at the end); 0 evaluates only at the end."""
    eval_episodes: int = 50
    """Episodes per evaluation; 0 exports the policies on the evaluation schedule and evaluates nothing."""
    eval_condition: str | None = None
    """Initial condition to evaluate from; default: the task's hard one (closed drawer, ... object on table)."""
    eval_workers: int = 2
    eval_videos: int = 2
    binary_actions: tuple[str, ...] = ()
    """Action components the exported policies command at +-1 by the sign of their mean when acting
    deterministically (`PolicySpec.binary_actions`; e.g. gripper). Empty (COG): the tanh of the mean."""
    average_exports: int = 1
    """Checkpoint averaging: at every evaluation the run deploys (policy/, policies/step<k>-avg) and evaluates
    (eval/*) the uniform weight average of its last `average_exports` exports (policies/step<k>, one per evaluation;
    fewer at the first evaluations), and evaluates the latest export alone beside it on the same episodes
    (eval_export/*). 1: the latest export is the policy. Late in training a COG run's success can swing between
    evaluations; the average of a few exports holds the good policy they swing around (cog-state-medium-bbo-awr).
    The learner's checkpoint keeps its own actor: `robot-rl finetune` starts from that, not from this average."""
    checkpoint_every: int = 10_000
    log_every: int = 100
    out: Path | None = None
    """Run folder (default: runs/<algo>-<timestamp>)."""
    progress: bool = True
    wandb: Literal["off", "online", "offline"] = "off"
    """Weights & Biases logging; offline needs no network."""
    cql: CQLConfig = field(default_factory=CQLConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    resume: Path | None = None
    """Continue this run folder from its last checkpoint, with the config recorded in its run.json (other flags
    are ignored but `extend_to`)."""
    extend_to: int | None = None
    """With `resume`: train on to this many gradient steps, more than the run's recorded `steps` (a finished run
    continues; nothing in training depends on the budget, so this is the run that budget would have given). The
    new budget is recorded in run.json."""


def _load(cfg: OfflineConfig) -> tuple[TransitionStore, TransitionStore | None]:
    keys = ("image", "state") if cfg.observation == "image" else ("state", "privileged")
    needs_prior = cfg.algo in ("cog", "sac") or (cfg.algo == "bc" and cfg.bc_data == "all")
    if needs_prior and cfg.prior is None:
        raise TrainingError(f"algo {cfg.algo!r} needs a prior dataset (--prior)")
    if cfg.task is None:
        raise TrainingError("no task dataset given (--task)")
    task = load_dataset(cfg.task, keys=keys)
    prior = load_dataset(cfg.prior, keys=keys, relabel_reward=0.0) if needs_prior and cfg.prior else None
    if prior is not None:
        check_compatible([task.info, prior.info], [cfg.task, cfg.prior or Path()])
    return task, prior


def make_sampler(cfg: OfflineConfig, task: TransitionStore, prior: TransitionStore | None) -> Sampler:
    def returns(store: TransitionStore, n: int = cfg.n_step) -> TransitionStore:
        if cfg.n_step == 1 or cfg.algo == "bc":
            return store
        return store.n_step(n, cfg.cql.discount, terminal_on_reward=cfg.success_terminal)

    match cfg.algo, prior:
        case (("cog" | "sac"), TransitionStore()) if cfg.mixing == "ratio":
            # one-step task transitions still go through n_step(1): the mix needs both stores to carry discounts
            task_n = 1 if cfg.n_step_data == "prior" else cfg.n_step
            return CogMixSampler(returns(task, task_n), returns(prior), cfg.task_fraction)
        case (("cog" | "sac" | "bc"), TransitionStore()):
            return UniformSampler(returns(concatenate([task, prior])))
        case _:
            return UniformSampler(returns(task))


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bf16 matrices in hardware (the amx_bf16 or avx512_bf16 flag); False where that
    cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a `precision` setting (auto, fp32, bf16, native; see `OfflineConfig.precision`) means on
    `device`: torch.bfloat16, or None for fp32."""
    bf16 = (
        precision == "bf16"
        or (precision in ("auto", "native") and device.type == "cuda")
        or (precision == "native" and device.type == "cpu" and cpu_has_native_bf16())
    )
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "precision bf16 on a CPU without bf16 matrix instructions (no amx_bf16 or avx512_bf16 flag): torch "
            "emulates it, ~17x slower than fp32 on an AVX2 machine; precision `native` picks fp32 on such CPUs",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.bfloat16 if bf16 else None


def make_agent(cfg: OfflineConfig, task: TransitionStore, device: torch.device) -> CQL | BC:
    image_shape = task.info.image_shape if cfg.observation == "image" else None
    spec = task.info.env_spec
    state_dim = len(spec["state_names"]) + (len(spec["privileged_names"]) if cfg.observation == "state" else 0)
    action_dim = len(spec["action_names"])
    shape = None if image_shape is None else (image_shape[0], image_shape[1], image_shape[2])
    match cfg.algo:
        case "cog" | "cql":
            return CQL(cfg.cql, shape, state_dim, action_dim, device)
        case "sac":
            return CQL(
                dataclasses.replace(cfg.cql, cql_weight=0.0, lagrange=False), shape, state_dim, action_dim, device
            )
        case "bc":
            return BC(cfg.bc, shape, state_dim, action_dim, device)
    raise AssertionError(cfg.algo)


def state_statistics(
    stores: list[TransitionStore], use_privileged: bool, floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (floored) of the states, with the privileged part in state mode, of `stores`."""
    parts = []
    for store in stores:
        states = store.states
        if use_privileged:
            if store.privileged is None:
                raise TrainingError(f"dataset {store.info.name!r} has no privileged state, needed in state mode")
            states = np.concatenate([states, store.privileged], axis=1)
        parts.append(np.asarray(states, dtype=np.float64))
    states = np.concatenate(parts)
    if not np.all(np.isfinite(states)):
        raise TrainingError("the datasets hold non-finite states")
    mean, std = states.mean(axis=0), np.maximum(states.std(axis=0), floor)
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def shape_rewards(batch: Batch, scale: float, success_terminal: bool) -> Batch:
    """Rewards times `scale`; with `success_terminal`, every rewarded transition also terminates."""
    terminated = batch.terminated | (batch.reward > 0) if success_terminal else batch.terminated
    return batch._replace(reward=batch.reward * np.float32(scale), terminated=terminated)


def _check_batch(batch: Batch, step: int) -> None:
    for name, array in (("action", batch.action), ("reward", batch.reward), ("state", batch.obs.state)):
        if not np.all(np.isfinite(array)):
            raise TrainingError(f"non-finite {name} in the batch of step {step}")


def check_config(cfg: OfflineConfig) -> None:
    """Refuse a config that cannot run, before anything is written, naming the field."""
    if not (math.isfinite(cfg.reward_scale) and cfg.reward_scale > 0):
        raise TrainingError(f"reward_scale must be a finite number > 0, got {cfg.reward_scale}")
    try:
        check_cql_config(cfg.cql)
    except ValueError as error:
        raise TrainingError(f"cql.{error}") from None
    if not 0.0 <= cfg.task_fraction <= 1.0:
        raise TrainingError(f"task_fraction must be in [0, 1], got {cfg.task_fraction}")
    at_least = {"steps": 1, "batch_size": 1, "threads": 1, "checkpoint_every": 1, "log_every": 1, "eval_workers": 1}
    at_least |= {"average_exports": 1}
    at_least |= {"n_step": 1, "eval_every": 0, "eval_episodes": 0, "eval_videos": 0, "augment_pad": 0}
    if cfg.n_step > 1 and cfg.n_step_data == "prior" and (cfg.mixing != "ratio" or cfg.algo not in ("cog", "sac")):
        raise TrainingError("n_step_data='prior' needs algo cog or sac with mixing='ratio' (separate prior data)")
    for name, low in at_least.items():
        value = getattr(cfg, name)
        if value < low:
            raise TrainingError(f"{name} must be >= {low}, got {value}")


def train_offline(cfg: OfflineConfig, resume: Path | None = None, threads: Callable[[], int] | None = None) -> Path:
    """Train, evaluating and checkpointing as configured; returns the run folder. `resume` continues a run.
    `threads`, when given, says how many torch threads the run may use now (in place of `cfg.threads`): it is asked
    at the start and at every log row (an experiment grid's runs share the cores of finished runs this way)."""
    from robot_rl.checkpoints import export_policy, load_learner, save_learner
    from robot_rl.policy import Policy, average_policies

    check_config(cfg)
    torch.set_num_threads(cfg.threads if threads is None else threads())
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))  # fmt: skip
    run = resume if resume is not None else new_run_dir(cfg.out, cfg.algo)
    write_run_record(run, "train", cfg)
    task, prior = _load(cfg)
    sampler = make_sampler(cfg, task, prior)
    torch.manual_seed(cfg.seed)
    agent = make_agent(cfg, task, device)
    agent.autocast_dtype = autocast_dtype(cfg.precision, device)
    use_privileged = cfg.observation == "state"
    if cfg.normalize_state:
        stores = [task] if prior is None or (cfg.algo == "bc" and cfg.bc_data == "task") else [task, prior]
        mean, std = state_statistics(stores, use_privileged, cfg.state_std_floor)
        modules = [agent.actor] if isinstance(agent, BC) else [agent.q, agent.q_target, agent.actor]
        if isinstance(agent, CQL) and agent.actor_average is not None:
            modules.append(agent.actor_average)
        set_state_statistics(modules, mean, std)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    checkpoint = run / "checkpoints" / "latest"
    start = 0
    if resume is not None:
        extra = load_learner(checkpoint, agent)
        rng, generator, start = extra["rng"], extra["augment_generator"], int(extra["step"])
    names = tuple(task.info.env_spec.get("action_names", ()))
    if unknown := [name for name in cfg.binary_actions if name not in names]:
        raise TrainingError(f"binary_actions {unknown} are not action names of the data {names}")
    condition = eval_condition(cfg.eval_condition, task.info.recipe.get("task"))
    eval_cfg = EvalConfig(
        env_id=task.info.env_id,
        env_kwargs=dict(task.info.env_kwargs),
        initial_condition=condition,
        episodes=cfg.eval_episodes,
        workers=cfg.eval_workers,
        videos=cfg.eval_videos,
    )
    pad = cfg.augment_pad if cfg.observation == "image" else 0

    def save(step: int) -> None:
        save_learner(checkpoint, agent, {"rng": rng, "step": step, "augment_generator": generator})

    def evaluate_now(step: int) -> dict[str, float]:
        # Building the exported and loaded policies draws from torch's global generator; forking it keeps training
        # the same whatever the evaluation schedule, and a resume from the checkpoint taken before it exact.
        # With an averaged actor, that one is the run's policy (evaluated as eval/*) and the live one is evaluated
        # beside it, on the same episodes (eval_live/*). With `average_exports`, the average of the last exports is
        # the run's policy and the latest export alone is evaluated beside it (eval_export/*).
        average = isinstance(agent, CQL) and agent.actor_average is not None
        with torch.random.fork_rng(devices=[]):
            deployed = agent.deployed_actor if isinstance(agent, CQL) else None
            trained_in = {"env_id": task.info.env_id}  # what `robot-rl eval` steps it in by default
            binary = cfg.binary_actions
            policy = export_policy(
                agent, task.info.env_spec, use_privileged=use_privileged, info=trained_in, actor=deployed,
                binary_actions=binary,
            )  # fmt: skip
            export = policy.save(run / "policies" / f"step{step}")
            averaged = last_exports(run / "policies", step, cfg.average_exports) if cfg.average_exports > 1 else []
            if averaged:
                policies = [Policy.load(run / "policies" / f"step{k}") for k in averaged]
                policy = average_policies(policies, {"averaged_exports": averaged})
                policy.save(run / "policies" / f"step{step}-avg")
            folder = policy.save(run / "policy")
            if average:
                live = export_policy(
                    agent, task.info.env_spec, use_privileged=use_privileged, info=trained_in, binary_actions=binary
                )
                live_folder = live.save(run / "policies" / f"step{step}-live")
            if cfg.eval_episodes == 0:
                return {}  # the policies are exported, nothing is evaluated
            result = evaluate_parallel(functools.partial(Policy.load, folder), eval_cfg, run / "videos" / f"step{step}")
            summary = result.summary()
            if averaged:
                # the first evaluation's average is its one export: evaluating that again would give the same rows
                alone = summary if len(averaged) == 1 else evaluate_parallel(
                    functools.partial(Policy.load, export), eval_cfg, None
                ).summary()  # fmt: skip
                summary |= {k.replace("eval/", "eval_export/", 1): v for k, v in alone.items()}
            if average:
                live_result = evaluate_parallel(functools.partial(Policy.load, live_folder), eval_cfg, None)
                summary |= {k.replace("eval/", "eval_live/", 1): v for k, v in live_result.summary().items()}
        return summary

    wandb_mode: Literal["online", "offline"] | None = None if cfg.wandb == "off" else cfg.wandb
    with Logger(run, dataclasses.asdict(cfg), wandb_mode, resume_step=start if resume is not None else None) as logger:
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not cfg.progress, desc=cfg.algo)
        tick, last_eval = time.perf_counter(), ""
        for step in bar:
            batch = sampler.sample(rng, cfg.batch_size)
            _check_batch(batch, step)
            if cfg.success_terminal or cfg.reward_scale != 1.0:
                batch = shape_rewards(batch, cfg.reward_scale, cfg.success_terminal)
            metrics = agent.update(to_torch(batch, device, pad, generator, use_privileged))
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(
                    f"non-finite {', '.join(bad)} at step {step}; training stopped, the last good checkpoint is "
                    f"{checkpoint if checkpoint.exists() else 'none yet'}"
                )
            done = step + 1
            if done % cfg.log_every == 0:
                elapsed = time.perf_counter() - tick
                metrics["time/steps_per_s"] = cfg.log_every / elapsed
                metrics["time/threads"] = torch.get_num_threads()
                if threads is not None and (n := threads()) != torch.get_num_threads():
                    torch.set_num_threads(n)  # from the next row on
                if sampler.last_task_fraction is not None:
                    metrics["train/task_fraction"] = sampler.last_task_fraction
                logger.log(done, metrics)
                bar.set_postfix_str(f"{metrics['time/steps_per_s']:.2f} steps/s {last_eval}")
                tick = time.perf_counter()
            # Evaluate, then checkpoint: a run resumed from step `done` has every row up to it (evaluation forks the
            # random generators, so it leaves the checkpoint as it would have been).
            evaluates = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps
            if evaluates and (summary := evaluate_now(done)):
                logger.log(done, summary)
                last_eval = f"eval {summary['eval/success']:.2f}"
                bar.set_postfix_str(last_eval)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
    plot_curves(run)
    return run


def last_exports(policies: Path, step: int, count: int) -> list[int]:
    """The steps of the last `count` exports (folders `policies/step<k>`) up to `step`, oldest first. Exports past
    `step` (an evaluation after the checkpoint a run resumed from) are not the resumed run's, and are left out."""
    steps = [int(m[1]) for p in policies.glob("step*") if (m := re.fullmatch(r"step(\d+)", p.name)) and p.is_dir()]
    return sorted(k for k in steps if k <= step)[-count:]


def plot_curves(run: Path) -> Path | None:
    """learning_curves.png: critic/actor losses and evaluation success over steps."""
    from robot_rl.media import line_plots, write_png

    rows = read_metrics(run / "metrics.jsonl")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key in ("critic/td_loss", "critic/cql_gap", "actor/loss", "eval/success", "eval/ever_success"):
        points = [(float(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            series[key] = ([p[0] for p in points], [p[1] for p in points])
    if not series:
        return None
    return write_png(run / "learning_curves.png", line_plots(series))


def train_result(run: Path) -> dict[str, Any]:
    """The last evaluation of a run."""
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success" in r]
    return evals[-1] if evals else {}
